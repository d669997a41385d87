"""The shape of OpenAI-style requests and responses: validation and the texts in them.

Pure functions over parsed JSON. The rule is turned around from "find the prompt":
every string a body carries is text for the filters, dictionary keys included
(a JSON schema's property names reach the model too), except the parameters on
an explicit list of settings that carry no text (the model name, numeric,
boolean and enumerated settings, opaque identifiers), and each of those is
checked here. Filtered text is written back in place, so everything else in a
body passes through unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# The longest completion asked for when the model's context length is not known.
MAX_TOKENS_CEILING = 10_000_000
# Deeper values are refused: far beyond any real schema, well within Python's stack.
MAX_DEPTH = 64
# Tool-call ids are opaque: their random letters read as secrets to the filters, and
# this alphabet and length cannot carry a sentence, an address or an instruction.
_OPAQUE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Token log-probabilities repeat the response token by token, past the outbound filters.
_TOKEN_TEXTS = ("logprobs", "top_logprobs", "prompt_logprobs")


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(400, "invalid_request", message, param)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _number_in(low: float, high: float, *, open_low: bool = False) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not _is_number(value):
            return False
        number = float(value)
        return (low < number if open_low else low <= number) and number <= high

    return check


def _int_in(low: int, high: int) -> Callable[[Any], bool]:
    return lambda value: _is_int(value) and low <= value <= high


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _one_of(*choices: str) -> Callable[[Any], bool]:
    return lambda value: value in choices


def _no_token_texts(value: Any) -> bool:
    return value is None or value is False or value == 0


def _bool_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, bool) for v in value.values())


def _token_bias(value: Any) -> bool:
    return isinstance(value, dict) and all(
        k.isdigit() and _number_in(-100, 100)(v) for k, v in value.items()
    )


@dataclass(frozen=True)
class Setting:
    """A request parameter that carries no text: what it must be, in words."""

    check: Callable[[Any], bool]
    must_be: str


_SAMPLING: dict[str, Setting] = {
    "stream": Setting(_is_bool, "true or false"),
    "stream_options": Setting(_bool_map, "an object of true/false options"),
    "n": Setting(_int_in(1, 128), "an integer from 1 to 128"),
    "best_of": Setting(_int_in(1, 128), "an integer from 1 to 128"),
    "temperature": Setting(_number_in(0, 2), "a number from 0 to 2"),
    "top_p": Setting(_number_in(0, 1, open_low=True), "a number above 0 and at most 1"),
    "top_k": Setting(_int_in(-1, 1_000_000), "-1 (off) or a positive integer"),
    "min_p": Setting(_number_in(0, 1), "a number from 0 to 1"),
    "presence_penalty": Setting(_number_in(-2, 2), "a number from -2 to 2"),
    "frequency_penalty": Setting(_number_in(-2, 2), "a number from -2 to 2"),
    "repetition_penalty": Setting(_number_in(0, 2, open_low=True), "a number above 0, at most 2"),
    "length_penalty": Setting(_number_in(-10, 10), "a number from -10 to 10"),
    "seed": Setting(_int_in(-(2**63), 2**63 - 1), "a 64-bit integer"),
    "min_tokens": Setting(_int_in(0, MAX_TOKENS_CEILING), "a non-negative integer"),
    "logit_bias": Setting(_token_bias, "token ids mapped to numbers from -100 to 100"),
    "echo": Setting(_is_bool, "true or false"),
    "ignore_eos": Setting(_is_bool, "true or false"),
    "skip_special_tokens": Setting(_is_bool, "true or false"),
    "include_stop_str_in_output": Setting(_is_bool, "true or false"),
    "parallel_tool_calls": Setting(_is_bool, "true or false"),
    "add_generation_prompt": Setting(_is_bool, "true or false"),
    "continue_final_message": Setting(_is_bool, "true or false"),
    "add_special_tokens": Setting(_is_bool, "true or false"),
    "priority": Setting(_int_in(-(2**31), 2**31 - 1), "an integer"),
    "reasoning_effort": Setting(_one_of("minimal", "low", "medium", "high"), "low/medium/high"),
    "encoding_format": Setting(_one_of("float", "base64"), "float or base64"),
    "dimensions": Setting(_int_in(1, 65536), "an integer from 1 to 65536"),
    **{
        name: Setting(_no_token_texts, "absent, false or 0: token texts bypass the filters")
        for name in _TOKEN_TEXTS
    },
}
# The request's own structure: read by the walkers below, never passed as free text.
_STRUCTURE = frozenset({"model", "messages", "prompt", "input"})
_LENGTHS = ("max_tokens", "max_completion_tokens")
NON_TEXT_PARAMETERS = frozenset({*_SAMPLING, *_LENGTHS, "model"})


def validate_request(endpoint: Endpoint, body: Any) -> tuple[str, bool]:
    """Check the body's structure and every non-text setting; return (model, stream)."""
    if not isinstance(body, dict):
        raise _invalid("the request body must be a JSON object", "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model must be a non-empty string", "model")
    for name, setting in _SAMPLING.items():
        if name in body and not setting.check(body[name]):
            raise _invalid(f"{name} must be {setting.must_be}", name)
    check_lengths(body, None)
    stream = body.get("stream", False)
    if endpoint == "embeddings" and stream:
        raise _invalid("embeddings cannot be streamed", "stream")
    # Walk the texts once with the identity map: it raises on every shape error.
    map_request_texts(endpoint, body, _identity)
    return model, stream


def check_lengths(body: dict[str, Any], max_model_len: int | None) -> None:
    """max_tokens and max_completion_tokens within the model's context length, if known."""
    ceiling = max_model_len or MAX_TOKENS_CEILING
    for name in _LENGTHS:
        value = body.get(name)
        if value is not None and not (_is_int(value) and 1 <= value <= ceiling):
            limit = f"the model's context length ({ceiling})" if max_model_len else str(ceiling)
            raise _invalid(f"{name} must be an integer from 1 to {limit}", name)


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
    for key in list(body):
        if key not in _STRUCTURE and key not in NON_TEXT_PARAMETERS:
            _map_free(body, key, key, fn)


def _map_message(message: Any, param: str, fn: TextMap) -> None:
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise _invalid(f"each message must be an object with a role of {sorted(ROLES)}", param)
    for key in list(message):
        where = f"{param}.{key}"
        if key == "role":
            continue
        if key == "content":
            _map_content(message, where, fn)
        elif key == "tool_call_id":
            _check_opaque_id(message[key], where)
        elif key == "tool_calls":
            _map_tool_calls(message[key], where, fn)
        else:
            _map_free(message, key, where, fn)


def _map_content(message: dict[str, Any], param: str, fn: TextMap) -> None:
    content = message["content"]
    if content is None and message["role"] == "assistant":
        return
    if isinstance(content, str):
        message["content"] = _apply(fn, content, param)
        return
    if not isinstance(content, list):
        raise _invalid("content must be a string or a list of parts", param)
    for j, part in enumerate(content):
        part_param = f"{param}[{j}]"
        if not isinstance(part, dict) or part.get("type") != "text":
            # Images, audio and files cannot be filtered as text, so they do not pass.
            raise _invalid("only text content parts are accepted", part_param)
        if not isinstance(part.get("text"), str):
            raise _invalid("a text part needs a string text", part_param)
        for key in list(part):
            if key != "type":
                _map_free(part, key, f"{part_param}.{key}", fn)


def _map_tool_calls(calls: Any, param: str, fn: TextMap) -> None:
    if not isinstance(calls, list):
        raise _invalid("tool_calls must be a list", param)
    for j, call in enumerate(calls):
        call_param = f"{param}[{j}]"
        if not isinstance(call, dict):
            raise _invalid("each tool call must be an object", call_param)
        for key in list(call):
            if key == "id":
                _check_opaque_id(call[key], f"{call_param}.id")
            else:
                _map_free(call, key, f"{call_param}.{key}", fn)


def _check_opaque_id(value: Any, param: str) -> None:
    if not isinstance(value, str) or not _OPAQUE_ID.match(value):
        raise _invalid("an id must be 1 to 64 letters, digits, '_' or '-'", param)


def _map_free(
    holder: dict[str, Any] | list[Any], key: Any, param: str, fn: TextMap, depth: int = 0
) -> None:
    """Filter every string under holder[key], dictionary keys included, in place."""
    value = holder[key]
    if depth > MAX_DEPTH:
        raise _invalid(f"values may nest at most {MAX_DEPTH} levels deep", param)
    if isinstance(value, str):
        holder[key] = _apply(fn, value, param)
    elif isinstance(value, list):
        for i in range(len(value)):
            _map_free(value, i, f"{param}[{i}]", fn, depth + 1)
    elif isinstance(value, dict):
        renamed: dict[str, Any] = {}
        for name in value:
            new_name = _apply(fn, name, param)
            if new_name in renamed:
                raise _invalid("two keys are the same once filtered", param)
            renamed[new_name] = value[name]
            _map_free(renamed, new_name, f"{param}.{new_name}", fn, depth + 1)
        holder[key] = renamed


def _apply(fn: TextMap, text: str, param: str) -> str:
    """fn(text), with the parameter named on a refusal that does not name one."""
    try:
        return fn(text)
    except GatewayError as error:
        error.param = error.param or param
        raise


def _map_text_or_list(value: Any, param: str, fn: TextMap) -> str | list[str]:
    if isinstance(value, str):
        return _apply(fn, value, param)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [_apply(fn, v, f"{param}[{i}]") for i, v in enumerate(value)]
    # Token-id prompts cannot be filtered, so only text is accepted.
    raise _invalid(f"{param} must be a string or a non-empty list of strings", param)


# --- responses --------------------------------------------------------------

# Strings in a choice the server sets from a fixed vocabulary, or an opaque id: not text.
RESPONSE_NON_TEXT = frozenset({"index", "role", "type", "id", "finish_reason", "object"})
# Fields a model streams piece by piece: each gets an outbound stream of its own.
STREAMED_FIELDS = ("content", "refusal", "reasoning_content", "reasoning")

# Where a streamed text lives: (choice index, field) or (choice, "tool_calls", call, field).
StreamKey = tuple[int | str, ...]


def map_response_texts(endpoint: Endpoint, body: Any, fn: TextMap) -> None:
    """Replace every generated text of a (non-streamed) response, in place."""
    if endpoint == "embeddings" or not isinstance(body, dict):
        return
    choices = body.get("choices")
    if isinstance(choices, list):
        for i in range(len(choices)):
            _map_generated(choices, i, fn)


def _map_generated(
    holder: dict[str, Any] | list[Any], key: Any, fn: TextMap, depth: int = 0
) -> None:
    """Filter every string under holder[key] except the response's non-text fields."""
    value = holder[key]
    if depth > MAX_DEPTH:
        raise GatewayError(502, "upstream_invalid_response", "the model's answer nests too deep")
    if isinstance(value, str):
        holder[key] = fn(value)
    elif isinstance(value, list):
        for i in range(len(value)):
            _map_generated(value, i, fn, depth + 1)
    elif isinstance(value, dict):
        for name in value:
            if name not in RESPONSE_NON_TEXT:
                _map_generated(value, name, fn, depth + 1)


def chunk_texts(endpoint: Endpoint, chunk: Any) -> list[tuple[StreamKey, dict[str, Any], str]]:
    """The (stream key, holder, field) of each streamed text delta in a chunk."""
    found: list[tuple[StreamKey, dict[str, Any], str]] = []
    for index, choice in _choices(chunk):
        if endpoint != "chat":
            if isinstance(choice.get("text"), str):
                found.append(((index, "text"), choice, "text"))
            continue
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            continue
        found += [((index, f), delta, f) for f in STREAMED_FIELDS if isinstance(delta.get(f), str)]
        for call_index, function in _streamed_calls(delta):
            key: StreamKey = (index, "tool_calls", call_index, "arguments")
            found.append((key, function, "arguments"))
    return found


def map_chunk_other_texts(endpoint: Endpoint, chunk: Any, fn: TextMap) -> None:
    """Filter, chunk by chunk, the strings of a chunk's choices that are not streamed
    piece by piece (a tool's name, anything a server adds); in place."""
    for _, choice in _choices(chunk):
        for name in choice:
            if name == "delta" and endpoint == "chat" and isinstance(choice[name], dict):
                _map_delta_rest(choice[name], fn)
            elif name not in RESPONSE_NON_TEXT and not (name == "text" and endpoint != "chat"):
                _map_generated(choice, name, fn)


def _map_delta_rest(delta: dict[str, Any], fn: TextMap) -> None:
    for name in delta:
        if name in STREAMED_FIELDS and isinstance(delta[name], str):
            continue
        if name == "tool_calls" and isinstance(delta[name], list):
            for call in delta[name]:
                _map_call_rest(call, fn)
        elif name not in RESPONSE_NON_TEXT:
            _map_generated(delta, name, fn)


def _map_call_rest(call: Any, fn: TextMap) -> None:
    if not isinstance(call, dict):
        return
    for name in call:
        function = call[name]
        if name == "function" and isinstance(function, dict):
            for field in function:
                if not (field == "arguments" and isinstance(function[field], str)):
                    _map_generated(function, field, fn)
        elif name not in RESPONSE_NON_TEXT:
            _map_generated(call, name, fn)


def _choices(chunk: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    if not isinstance(chunk, dict):
        return
    for choice in chunk.get("choices") or []:
        if isinstance(choice, dict):
            index = choice.get("index", 0)
            yield (index if _is_int(index) else 0), choice


def _streamed_calls(delta: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    calls = delta.get("tool_calls")
    for position, call in enumerate(calls if isinstance(calls, list) else []):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            index = call.get("index", position)
            yield (index if _is_int(index) else position), function


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


def tail_chunk(endpoint: Endpoint, model: str, tails: dict[StreamKey, str]) -> dict[str, Any]:
    """A last chunk carrying text the outbound filter held back until the end."""
    choices: dict[int | str, dict[str, Any]] = {}
    for key, text in tails.items():
        index = key[0]
        choice = choices.setdefault(index, {"index": index, "finish_reason": None})
        if endpoint != "chat":
            choice["text"] = text
            continue
        delta = choice.setdefault("delta", {})
        if key[1] == "tool_calls":
            call = {"index": key[2], "function": {"arguments": text}}
            delta.setdefault("tool_calls", []).append(call)
        else:
            delta[key[1]] = text
    kind = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
    return {"object": kind, "model": model, "choices": list(choices.values())}
