"""A CostBudget's throttle threshold at the gateway: subjects other than its priority ones
get lowered quotas on the models in its scope and then 429 budget_throttled, audited."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from privatellm.gateway.config import GatewayConfig
from tests.gateway.conftest import ALICE_KEY, BOB_KEY, Stack, base_config, gateway_stack, upstream
from tests.gateway.test_gateway_budget import token
from tests.gateway.test_gateway_oidc_backoff import AUDIENCE, Provider

# One minute for the whole test: the quota windows do not turn under it.
NOW = time.time() // 60 * 60 + 1
THROTTLE = {
    "budget": "team",
    "quotaPercent": 50,
    "requestsPerMinute": 2,
    "priorityGroups": ["oncall"],
    "priorityPolicies": ["vip"],
}


def policy(subject: dict[str, str], **quotas: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "subjects": [subject],
        "models": ["*"],
        "dataClasses": [{"name": "public", "action": "allow"}],
    }
    if quotas:
        spec["quotas"] = quotas
    return spec


def throttle_config(model_url: str, issuer: str) -> dict[str, Any]:
    """llama is throttled, small is not. staff may send 4 requests a minute; alice is in the
    priority policy "vip"; bob's policy "batch" sets no request rate."""
    config = base_config({"llama": [model_url], "small": [model_url]})
    config["policies"] = [
        {"name": "staff", "spec": policy({"kind": "Group", "name": "staff"}, requestsPerMinute=4)},
        {"name": "vip", "spec": policy({"kind": "APIKey", "name": "alice", "secretName": "a"})},
        {"name": "batch", "spec": policy({"kind": "APIKey", "name": "bob", "secretName": "b"})},
    ]
    config["auth"]["oidc"] = {"issuer": issuer, "audience": AUDIENCE}
    config["models"][0]["budgetThrottle"] = THROTTLE
    return config


async def statuses(stack: Stack, times: int, **options: Any) -> list[int]:
    return [(await stack.chat("hi", **options))[0] for _ in range(times)]


def test_a_throttle_lowers_the_quotas_of_all_but_priority_subjects() -> None:
    answers: dict[str, Any] = {}

    async def scenario() -> None:
        provider = Provider()
        await provider.start()
        try:
            async with upstream() as model:
                config = throttle_config(model.url, provider.issuer)
                async with gateway_stack(config, clock=lambda: NOW) as stack:
                    ann = token(provider.issuer, "ann@example.com", ["staff"])
                    bea = token(provider.issuer, "bea@example.com", ["staff", "oncall"])
                    answers["ann"] = await statuses(stack, 2, key=ann)
                    answers["ann refused"] = await stack.chat("hi", key=ann)
                    # The model outside the budget's scope keeps her policy's quota (4).
                    answers["ann small"] = await statuses(stack, 3, model="small", key=ann)
                    answers["bea"] = await statuses(stack, 4, key=bea)
                    answers["bea refused"] = await stack.chat("hi", key=bea)
                    answers["alice"] = await statuses(stack, 6, key=ALICE_KEY)
                    answers["bob"] = await statuses(stack, 2, key=BOB_KEY)
                    answers["bob refused"] = await stack.chat("hi", key=BOB_KEY)
                    answers["served"] = len(model.requests)
                    answers["events"] = list(stack.events)
        finally:
            await provider.stop()

    asyncio.run(scenario())
    # Half of staff's 4 requests a minute: ann gets 2.
    assert answers["ann"] == [200, 200]
    status, body = answers["ann refused"]
    assert (status, body["error"]["code"]) == (429, "budget_throttled")
    assert body["error"]["message"] == (
        "the CostBudget 'team' is at its throttle threshold: requests_per_minute lowered to 2"
    )
    assert answers["ann small"] == [200, 200, 429]
    # A priority group keeps the policy's quota, and only that.
    assert answers["bea"] == [200] * 4
    status, body = answers["bea refused"]
    assert (status, body["error"]["code"]) == (429, "rate_limited:requests_per_minute")
    # A priority policy's subject is not throttled at all (vip sets no quota).
    assert answers["alice"] == [200] * 6
    # A policy without a request rate gets the throttle's.
    assert answers["bob"] == [200, 200]
    status, body = answers["bob refused"]
    assert (status, body["error"]["code"]) == (429, "budget_throttled")
    assert "requests_per_minute lowered to 2" in body["error"]["message"]
    assert answers["served"] == 2 + 2 + 4 + 6 + 2
    refusals = [
        (e.subject, e.policy, e.model, e.status, e.decision, e.reason)
        for e in answers["events"]
        if e.status == 429
    ]
    assert refusals == [
        ("ann@example.com", "staff", "llama", 429, "deny", "budget_throttled:requests_per_minute"),
        ("ann@example.com", "staff", "small", 429, "deny", "rate_limited:requests_per_minute"),
        ("bea@example.com", "staff", "llama", 429, "deny", "rate_limited:requests_per_minute"),
        ("bob", "batch", "llama", 429, "deny", "budget_throttled:requests_per_minute"),
    ]


def test_a_throttle_lowers_token_quotas_and_ends_with_a_reload() -> None:
    async def scenario() -> None:
        # Each chat costs 5 tokens: "one two three" and the reply "fine thanks".
        async with upstream(reply="fine thanks") as model:
            config = base_config({"llama": [model.url]}, quotas={"tokensPerMinute": 20})
            config["models"][0]["budgetThrottle"] = {**THROTTLE, "requestsPerMinute": 100}
            async with gateway_stack(config, clock=lambda: NOW) as stack:
                chats = [(await stack.chat("one two three"))[0] for _ in range(2)]
                status, body = await stack.chat("one two three")
                assert chats == [200, 200]
                assert (status, body["error"]["code"]) == (429, "budget_throttled")
                assert body["error"]["message"].endswith("tokens_per_minute lowered to 10")
                assert stack.events[-1].reason == "budget_throttled:tokens_per_minute"
                # The budget's month turned or its limit was raised: the policy's quota again.
                del config["models"][0]["budgetThrottle"]
                stack.gateway.reload(GatewayConfig.model_validate(config))
                chats = [(await stack.chat("one two three"))[0] for _ in range(3)]
                assert chats == [200, 200, 429]
                assert stack.events[-1].reason == "quota_exceeded:tokens_per_minute"
                assert len(model.requests) == 4

    asyncio.run(scenario())
