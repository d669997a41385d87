"""A CostBudget's block threshold at the gateway: new requests for the models in its scope
get 429 budget_exhausted, audited, while members of its break-glass groups are served."""

from __future__ import annotations

import asyncio
import time

import jwt

from tests.gateway.conftest import base_config, gateway_stack, upstream
from tests.gateway.test_gateway_oidc_backoff import AUDIENCE, KEY, KID, Provider


def token(issuer: str, email: str, groups: list[str]) -> str:
    claims = {
        "iss": issuer,
        "aud": AUDIENCE,
        "email": email,
        "groups": groups,
        "exp": int(time.time()) + 600,
    }
    return jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": KID})


def test_a_blocked_model_refuses_all_but_break_glass_and_audits_each_refusal() -> None:
    async def scenario() -> None:
        provider = Provider()
        await provider.start()
        try:
            async with upstream() as model:
                config = base_config({"llama": [model.url], "small": [model.url]})
                config["policies"][0]["spec"]["subjects"] = [{"kind": "Group", "name": "staff"}]
                config["auth"]["oidc"] = {"issuer": provider.issuer, "audience": AUDIENCE}
                block = {"budget": "support", "breakGlassGroups": ["oncall"]}
                config["models"][0]["budgetBlock"] = block
                async with gateway_stack(config) as stack:
                    ann = token(provider.issuer, "ann@example.com", ["staff"])
                    bea = token(provider.issuer, "bea@example.com", ["staff", "oncall"])
                    answers = [
                        await stack.chat("hi", key=ann),
                        await stack.chat("hi", key=bea),
                        await stack.chat("hi", model="small", key=ann),
                    ]
                    served = len(model.requests)
        finally:
            await provider.stop()
        (refused, body), (by_oncall, _), (other_model, _) = answers
        assert (refused, body["error"]["code"]) == (429, "budget_exhausted")
        assert "'support'" in body["error"]["message"]
        assert (by_oncall, other_model) == (200, 200)
        assert served == 2, "the refused request never reached the model"
        first = stack.events[0]
        assert (first.subject, first.reason, first.decision) == (
            "ann@example.com",
            "budget_exhausted",
            "deny",
        )
        assert [e.decision for e in stack.events[1:]] == ["allow", "allow"]

    asyncio.run(scenario())
