"""The request and response shapes the gateway accepts, and the texts it finds in them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from privatellm.gateway.errors import GatewayError
from privatellm.gateway.openai import (
    MAX_DEPTH,
    check_lengths,
    chunk_texts,
    map_chunk_other_texts,
    map_request_texts,
    map_response_texts,
    tail_chunk,
    validate_request,
)


def marked(text: str) -> str:
    return f"<{text}>"


def test_request_texts_are_found_in_every_shape() -> None:
    chat = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello"}]},
            {"role": "assistant", "content": None, "tool_calls": []},
        ],
    }
    assert validate_request("chat", chat) == ("m", False)
    map_request_texts("chat", chat, str.upper)
    assert chat["messages"][0]["content"] == "BE BRIEF"
    assert chat["messages"][1]["content"][0]["text"] == "HELLO"
    completion = {"model": "m", "prompt": ["a", "b"], "stream": True}
    assert validate_request("completions", completion) == ("m", True)
    map_request_texts("completions", completion, str.upper)
    assert completion["prompt"] == ["A", "B"]


TOOLED_CHAT: dict[str, Any] = {
    "model": "m",
    "temperature": 0.2,
    "max_tokens": 64,
    "stream": False,
    "user": "u",
    "stop": ["s1", "s2"],
    "messages": [
        {"role": "user", "name": "n", "content": "c"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "a"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "r"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "f",
                "description": "d",
                "parameters": {"type": "object", "properties": {"p": {"description": "pd"}}},
            },
        }
    ],
    "response_format": {"type": "json_schema", "json_schema": {"name": "j", "schema": {}}},
    "chat_template_kwargs": {"k": "v"},
}


def test_every_string_is_text_but_the_settings_ids_and_roles() -> None:
    body = copy.deepcopy(TOOLED_CHAT)
    validate_request("chat", body)
    map_request_texts("chat", body, marked)
    assert body["model"] == "m" and body["temperature"] == 0.2
    user, assistant, tool = body["messages"]
    assert user == {"role": "user", "name": "<n>", "content": "<c>"}
    call = assistant["tool_calls"][0]
    assert call["id"] == "call_1"
    assert call["type"] == "<function>"
    assert call["function"] == {"<name>": "<f>", "<arguments>": "<a>"}
    assert tool == {"role": "tool", "tool_call_id": "call_1", "content": "<r>"}
    assert body["user"] == "<u>"
    assert body["stop"] == ["<s1>", "<s2>"]
    function = body["tools"][0]["<function>"]
    assert function["<description>"] == "<d>"
    assert function["<parameters>"]["<properties>"]["<p>"] == {"<description>": "<pd>"}
    assert body["chat_template_kwargs"] == {"<k>": "<v>"}


def test_top_level_keys_are_kept_and_nested_keys_filtered() -> None:
    body = {"model": "m", "prompt": "p", "metadata": {"alice@example.com": "x"}}
    map_request_texts("completions", body, lambda t: t.replace("alice@example.com", "[EMAIL]"))
    assert body["metadata"] == {"[EMAIL]": "x"}


def test_keys_that_collide_once_filtered_are_refused() -> None:
    body = {"model": "m", "prompt": "p", "metadata": {"a@x.io": 1, "b@x.io": 2}}
    with pytest.raises(GatewayError) as raised:
        map_request_texts("completions", body, lambda t: "[EMAIL]" if "@" in t else t)
    assert raised.value.status == 400 and raised.value.param == "metadata"


def test_a_block_names_the_field_it_came_from() -> None:
    body = copy.deepcopy(TOOLED_CHAT)

    def refuse_a(text: str) -> str:
        if text == "pd":
            raise GatewayError(400, "pii_blocked:email", "blocked")
        return text

    with pytest.raises(GatewayError) as raised:
        map_request_texts("chat", body, refuse_a)
    assert raised.value.param == "tools[0].function.parameters.properties.p.description"


def test_values_nested_too_deep_are_refused() -> None:
    deep: Any = "x"
    for _ in range(MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(GatewayError) as raised:
        validate_request("completions", {"model": "m", "prompt": "p", "extra": deep})
    assert raised.value.status == 400 and "nest" in raised.value.message


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        ("chat", {"model": "m", "messages": []}, "messages"),
        ("chat", {"model": "m", "messages": [{"content": "x"}]}, "messages[0]"),
        ("chat", {"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0]"),
        (
            "chat",
            {"model": "m", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
        ),
        ("chat", {"model": "", "messages": [{"role": "user", "content": "x"}]}, "model"),
        ("chat", {"model": "m", "stream": "yes", "messages": []}, "stream"),
        ("completions", {"model": "m", "prompt": [1, 2]}, "prompt"),
        ("embeddings", {"model": "m", "input": []}, "input"),
        ("completions", {"model": "m", "prompt": "p", "max_tokens": 0}, "max_tokens"),
        ("completions", {"model": "m", "prompt": "p", "max_tokens": -5}, "max_tokens"),
        ("completions", {"model": "m", "prompt": "p", "max_tokens": True}, "max_tokens"),
        ("completions", {"model": "m", "prompt": "p", "max_tokens": 1.5}, "max_tokens"),
        (
            "chat",
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**9},
            "max_tokens",
        ),
        ("completions", {"model": "m", "prompt": "p", "temperature": 2.5}, "temperature"),
        ("completions", {"model": "m", "prompt": "p", "temperature": "hot"}, "temperature"),
        ("completions", {"model": "m", "prompt": "p", "top_p": 0}, "top_p"),
        ("completions", {"model": "m", "prompt": "p", "n": 0}, "n"),
        ("completions", {"model": "m", "prompt": "p", "presence_penalty": -3}, "presence_penalty"),
        ("completions", {"model": "m", "prompt": "p", "logprobs": 5}, "logprobs"),
        ("completions", {"model": "m", "prompt": "p", "top_logprobs": 2}, "top_logprobs"),
        ("completions", {"model": "m", "prompt": "p", "logit_bias": {"x": 1}}, "logit_bias"),
        ("completions", {"model": "m", "prompt": "p", "stream_options": "x"}, "stream_options"),
        (
            "chat",
            {
                "model": "m",
                "messages": [{"role": "tool", "tool_call_id": "a b", "content": "r"}],
            },
            "messages[0].tool_call_id",
        ),
        (
            "chat",
            {
                "model": "m",
                "messages": [{"role": "assistant", "tool_calls": [{"id": "x" * 65}]}],
            },
            "messages[0].tool_calls[0].id",
        ),
    ],
)
def test_bad_requests_name_the_parameter(endpoint: Any, body: Any, param: str) -> None:
    with pytest.raises(GatewayError) as raised:
        validate_request(endpoint, body)
    assert raised.value.status == 400 and raised.value.param == param


def test_settings_in_range_pass() -> None:
    body = {
        "model": "m",
        "prompt": "p",
        "max_tokens": 16,
        "temperature": 0,
        "top_p": 1,
        "top_k": -1,
        "n": 2,
        "seed": -7,
        "logprobs": None,
        "logit_bias": {"50256": -100},
        "stream_options": {"include_usage": True},
    }
    assert validate_request("completions", body) == ("m", False)


def test_max_tokens_is_bounded_by_the_models_context() -> None:
    check_lengths({"max_tokens": 4096}, 4096)
    with pytest.raises(GatewayError) as raised:
        check_lengths({"max_completion_tokens": 4097}, 4096)
    assert raised.value.param == "max_completion_tokens" and "4096" in raised.value.message


def test_response_texts_include_tool_calls_and_refusals() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = {
        "id": "chatcmpl-1",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
            },
            {"index": 1, "message": {"role": "assistant", "refusal": "no"}},
        ],
    }
    map_response_texts("chat", body, marked)
    first, second = body["choices"]
    assert first["finish_reason"] == "tool_calls"
    assert first["message"]["tool_calls"][0] == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "<f>", "arguments": "<{}>"},
    }
    assert second["message"] == {"role": "assistant", "refusal": "<no>"}


def test_streamed_texts_are_found_per_field_and_tool_call() -> None:
    chunk = {
        "choices": [
            {
                "index": 1,
                "delta": {
                    "content": "x",
                    "refusal": "r",
                    "tool_calls": [
                        {"index": 2, "id": "call_1", "function": {"name": "f", "arguments": "{"}}
                    ],
                },
            },
            {"index": 0, "delta": {}},
        ]
    }
    found = {key: holder[name] for key, holder, name in chunk_texts("chat", chunk)}
    assert found == {
        (1, "content"): "x",
        (1, "refusal"): "r",
        (1, "tool_calls", 2, "arguments"): "{",
    }
    map_chunk_other_texts("chat", chunk, marked)
    delta = chunk["choices"][0]["delta"]  # type: ignore[index]
    assert delta["content"] == "x" and delta["tool_calls"][0]["function"] == {
        "name": "<f>",
        "arguments": "{",
    }
    assert delta["tool_calls"][0]["id"] == "call_1"


def test_completion_chunks_stream_their_text() -> None:
    chunk = {"choices": [{"index": 0, "text": "t", "logprobs": None}]}
    assert [key for key, _, _ in chunk_texts("completions", chunk)] == [(0, "text")]
    map_chunk_other_texts("completions", chunk, marked)
    assert chunk["choices"][0]["text"] == "t"


def test_tail_chunk_puts_held_text_back_where_it_came_from() -> None:
    tails = {(0, "content"): "end", (0, "tool_calls", 1, "arguments"): "}"}
    chunk = tail_chunk("chat", "m", tails)
    assert chunk["choices"] == [
        {
            "index": 0,
            "finish_reason": None,
            "delta": {
                "content": "end",
                "tool_calls": [{"index": 1, "function": {"arguments": "}"}}],
            },
        }
    ]
    text = tail_chunk("completions", "m", {(0, "text"): "t"})
    assert text["choices"] == [{"index": 0, "finish_reason": None, "text": "t"}]
