"""A DataConnector's Pods call the gateway as its ServiceAccount, checked by the real API server.

Their items carry the connector's data classes whatever the request declares, so
the AccessPolicy must allow those classes, and they reach only the connector's
models. Another account calling the same gateway declares for itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from privatellm.gateway.config import GatewayConfig
from privatellm.render.gateway import connector_service_account
from tests.gateway.conftest import base_config, gateway_stack
from tests.support.fake_openai import FakeOpenAI

from .conftest import Cluster
from .test_gateway_tokenreview import GATEWAY_AUDIENCE, create_token, token_reviewer

CRM = connector_service_account("crm")


@pytest.fixture
def review(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The gateway's account, allowed to review tokens: its tokenReview settings."""
    with token_reviewer(cluster, namespace, tmp_path) as config:
        yield {
            "apiServer": config.api_server,
            "tokenFile": config.token_file,
            "caFile": config.ca_file,
            "audiences": list(config.audiences),
        }


def account_policy(name: str, account: str, namespace: str, classes: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "spec": {
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
            "models": ["*"],
            "dataClasses": [{"name": c, "action": "allow"} for c in classes],
        },
    }


def test_a_connectors_calls_carry_its_classes_and_reach_only_its_models(
    cluster: Cluster, namespace: str, review: dict[str, Any]
) -> None:
    for account in (CRM, "plain"):
        cluster.kubectl("create", "serviceaccount", account, "-n", namespace)
    crm_token = create_token(cluster, namespace, CRM, GATEWAY_AUDIENCE)
    plain_token = create_token(cluster, namespace, "plain", GATEWAY_AUDIENCE)

    async def scenario() -> None:
        async with FakeOpenAI(model="fake-model") as model:
            config = base_config({"llama": [model.url], "other": [model.url]})
            config["namespace"] = namespace
            config["auth"]["tokenReview"] = review
            config["policies"] = [
                account_policy("crm", CRM, namespace, ["public", "customer"]),
                account_policy("plain", "plain", namespace, ["public"]),
            ]
            config["connectors"] = [
                {
                    "name": "crm",
                    "serviceAccount": CRM,
                    "models": ["llama"],
                    "dataClasses": ["customer"],
                }
            ]
            async with gateway_stack(config) as stack:

                async def chat(token: str, model_name: str) -> tuple[int, Any]:
                    headers = {"Authorization": f"Bearer {token}"}
                    return await stack.chat("hello", model=model_name, key=None, **headers)

                status, body = await chat(crm_token, "llama")
                assert status == 200, body
                assert stack.events[-1].subject == CRM
                assert stack.events[-1].data_classes == ["customer"]

                status, body = await chat(crm_token, "other")
                assert (status, body["error"]["code"]) == (403, "connector_model_not_allowed")
                assert stack.events[-1].reason == "connector_model_not_allowed"
                assert len(model.requests) == 1

                # Not a connector: it declares its own classes (none here).
                status, _ = await chat(plain_token, "other")
                assert status == 200
                assert stack.events[-1].data_classes == []

                # A policy that does not allow the connector's class turns it away.
                config["policies"][0] = account_policy("crm", CRM, namespace, ["public"])
                stack.gateway.reload(GatewayConfig.model_validate(config))
                status, body = await chat(crm_token, "llama")
                assert (status, body["error"]["code"]) == (403, "data_class_not_allowed:customer")

    asyncio.run(scenario())
