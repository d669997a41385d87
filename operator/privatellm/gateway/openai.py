"""The shape of OpenAI-style requests and responses: validation and the texts in them.

Pure functions over parsed JSON. Filters need every piece of text a client sends
or a model returns; these functions find them and write filtered text back in
place, so that everything else in a body passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import orjson

from .errors import GatewayError

Endpoint = Literal["chat", "completions", "embeddings"]

ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}

TextMap = Callable[[str], str]


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(400, "invalid_request", message, param)


def validate_request(endpoint: Endpoint, body: Any) -> tuple[str, bool]:
    """Check the fields the gateway relies on; return (model, stream)."""
    if not isinstance(body, dict):
        raise _invalid("the request body must be a JSON object", "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model must be a non-empty string", "model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid("stream must be true or false", "stream")
    if endpoint == "embeddings" and stream:
        raise _invalid("embeddings cannot be streamed", "stream")
    # Walk the texts once with the identity map: it raises on every shape error.
    map_request_texts(endpoint, body, _identity)
    return model, stream


def _identity(text: str) -> str:
    return text


def map_request_texts(endpoint: Endpoint, body: dict[str, Any], fn: TextMap) -> None:
    """Replace every text of a request with fn(text), in place."""
    if endpoint == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _invalid("messages must be a non-empty list", "messages")
        for i, message in enumerate(messages):
            _map_message(message, f"messages[{i}]", fn)
    elif endpoint == "completions":
        body["prompt"] = _map_text_or_list(body.get("prompt"), "prompt", fn)
    else:
        body["input"] = _map_text_or_list(body.get("input"), "input", fn)


def _map_message(message: Any, param: str, fn: TextMap) -> None:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise _invalid("each message must be an object with a role", param)
    content = message.get("content")
    if content is None and message["role"] == "assistant":
        return
    if isinstance(content, str):
        message["content"] = fn(content)
        return
    if not isinstance(content, list):
        raise _invalid("content must be a string or a list of parts", f"{param}.content")
    for j, part in enumerate(content):
        part_param = f"{param}.content[{j}]"
        if not isinstance(part, dict) or part.get("type") != "text":
            # Images, audio and files cannot be filtered as text, so they do not pass.
            raise _invalid("only text content parts are accepted", part_param)
        if not isinstance(part.get("text"), str):
            raise _invalid("a text part needs a string text", part_param)
        part["text"] = fn(part["text"])


def _map_text_or_list(value: Any, param: str, fn: TextMap) -> str | list[str]:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [fn(v) for v in value]
    # Token-id prompts cannot be filtered, so only text is accepted.
    raise _invalid(f"{param} must be a string or a non-empty list of strings", param)


def map_response_texts(endpoint: Endpoint, body: Any, fn: TextMap) -> None:
    """Replace every generated text of a (non-streamed) response, in place."""
    if endpoint == "embeddings" or not isinstance(body, dict):
        return
    for choice in body.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        if endpoint == "chat":
            message = choice.get("message")
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                message["content"] = fn(message["content"])
        elif isinstance(choice.get("text"), str):
            choice["text"] = fn(choice["text"])


def chunk_texts(endpoint: Endpoint, chunk: Any) -> list[tuple[int, dict[str, Any], str]]:
    """The (choice index, holder, key) of each text delta in a streamed chunk."""
    found: list[tuple[int, dict[str, Any], str]] = []
    if not isinstance(chunk, dict):
        return found
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", 0)
        index = index if isinstance(index, int) else 0
        if endpoint == "chat":
            delta = choice.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                found.append((index, delta, "content"))
        elif isinstance(choice.get("text"), str):
            found.append((index, choice, "text"))
    return found


def usage_of(body: Any) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) from a body's usage, 0 when absent."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return (
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
    )


def sse(payload: Any) -> bytes:
    """One server-sent event carrying `payload` as JSON."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def stream_error(reason: str) -> dict[str, Any]:
    """The error object that ends a stream whose response was withheld."""
    return {
        "message": f"the response was withheld: {reason}",
        "type": "permission_error",
        "param": "response",
        "code": reason,
    }


def tail_chunk(endpoint: Endpoint, model: str, tails: dict[int, str]) -> dict[str, Any]:
    """A last chunk carrying text the outbound filter held back until the end."""
    choices: list[dict[str, Any]] = []
    for index, text in tails.items():
        choice: dict[str, Any] = {"index": index, "finish_reason": None}
        if endpoint == "chat":
            choice["delta"] = {"content": text}
        else:
            choice["text"] = text
        choices.append(choice)
    kind = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
    return {"object": kind, "model": model, "choices": choices}
