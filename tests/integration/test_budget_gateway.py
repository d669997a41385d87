"""A CostBudget's throttle and block, from its spend on the real API server to a real
gateway process: the operator renders the gateway's configuration, a gateway process
started on the routes the operator wrote refuses or serves real requests.

The gateway runs on loopback, not in the cluster (no kubelet runs Pods here), so its
configuration is the test's own with the llama route's budget settings taken from the
Secret the operator wrote. Subjects sign in through an OpenID provider on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from privatellm.api import GROUP, VERSION
from privatellm.controllers import budget, ledger
from privatellm.controllers.gateway import reconcile_gateway
from privatellm.kube.client import KINDS, Kube
from privatellm.render.gateway import CONFIG_KEY, CONFIG_SECRET
from tests.gateway.conftest import base_config
from tests.gateway.test_gateway_budget import token
from tests.gateway.test_gateway_oidc_backoff import AUDIENCE, Provider
from tests.support.fake_openai import FakeOpenAI

from .conftest import Cluster
from .test_cost_ledger import at, cost_budget, gpu_nodes, run_llama_a  # noqa: F401
from .test_cost_usage import gateway_files, gateway_process
from .test_inference_operator import model

MOMENT = "2026-12-01T12:00:00Z"  # llama-a has run 10 h on 2 H100s: 82.00 EUR


@contextmanager
def provider() -> Iterator[Provider]:
    """An OpenID provider on loopback, served from a thread of its own."""
    found = Provider()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(found.start(), loop).result(timeout=10)
    try:
        yield found
    finally:
        asyncio.run_coroutine_threadsafe(found.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def operator_route(kube: Kube, namespace: str) -> dict[str, Any]:
    """The llama route of the gateway configuration the operator wrote."""
    reconcile_gateway(kube, namespace)
    secret = kube.get(KINDS["Secret"], namespace, CONFIG_SECRET)
    assert secret is not None
    config = yaml.safe_load(base64.b64decode(secret["data"][CONFIG_KEY]))
    [route] = [m for m in config["models"] if m["name"] == "llama"]
    return dict(route)


def ask(port: int, bearer: str, trust: Any) -> tuple[int, str | None]:
    """(status, error code) of one chat request."""
    body = json.dumps({"model": "llama", "messages": [{"role": "user", "content": "hi"}]})
    request = urllib.request.Request(
        f"https://127.0.0.1:{port}/v1/chat/completions",
        data=body.encode(),
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=trust) as response:
            return response.status, None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())["error"]["code"]


def test_a_throttle_then_a_block_reach_a_real_gateway_process(
    crds: Cluster,
    namespace: str,
    gpu_nodes: dict[str, dict[str, str]],  # noqa: F811
    tmp_path: Path,
) -> None:
    kube = Kube(crds.api)
    crds.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "inferencedeployments", model("llama")
    )
    thresholds = [{"percent": 50, "action": "throttle"}, {"percent": 100, "action": "block"}]
    body = cost_budget(
        "team",
        thresholds=thresholds,
        breakGlassGroups=["oncall"],
        throttle={"requestsPerMinute": 1, "priorityGroups": ["oncall"]},
    )
    body["spec"]["monthlyLimit"] = 100
    crds.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "costbudgets", body)
    run_llama_a(crds, namespace)
    ledger.reconcile(kube, namespace, gpu_nodes, at(MOMENT))
    budget.reconcile(kube, namespace, "team", at(MOMENT))  # 82 %: throttle
    throttled_route = operator_route(kube, namespace)
    assert throttled_route["budgetThrottle"]["budget"] == "team"
    crds.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "costbudgets", "team", {"spec": {"monthlyLimit": 80}}
    )
    budget.reconcile(kube, namespace, "team", at(MOMENT))  # 102.5 %: block
    blocked_route = operator_route(kube, namespace)
    assert blocked_route["budgetBlock"] == {"budget": "team", "breakGlassGroups": ["oncall"]}

    ca, signing_key = gateway_files(tmp_path, namespace)
    trust = ssl.create_default_context(cadata=ca.cert_pem.decode())

    answers: dict[str, list[tuple[int, str | None]]] = {}
    with provider() as oidc, FakeOpenAI(model="fake-model") as upstream:
        ann = token(oidc.issuer, "ann@example.com", ["staff"])
        bea = token(oidc.issuer, "bea@example.com", ["staff", "oncall"])
        for phase, route in (("throttled", throttled_route), ("blocked", blocked_route)):
            settings = base_config({"llama": [upstream.url]})
            settings["policies"][0]["spec"]["subjects"] = [{"kind": "Group", "name": "staff"}]
            settings["auth"]["oidc"] = {"issuer": oidc.issuer, "audience": AUDIENCE}
            for key in ("budgetThrottle", "budgetBlock"):
                if key in route:
                    settings["models"][0][key] = route[key]
            config = tmp_path / f"{phase}.yaml"
            config.write_text(yaml.safe_dump(settings))
            with gateway_process(tmp_path, phase, config, signing_key) as (port, _):
                wait_for(lambda port=port: ask(port, bea, trust)[0] == 200)
                answers[phase] = [ask(port, ann, trust), ask(port, ann, trust)]
                answers[phase] += [ask(port, bea, trust) for _ in range(2)]

    # Throttled to 1 request a minute, ann gets one; bea, on call, keeps her quota.
    assert answers["throttled"] == [
        (200, None),
        (429, "budget_throttled"),
        (200, None),
        (200, None),
    ]
    # Blocked: nobody but the break-glass group is served.
    assert answers["blocked"] == [(429, "budget_exhausted")] * 2 + [(200, None)] * 2


def wait_for(ready: Any, seconds: float = 30) -> None:
    """Until `ready()` holds, the gateway refusing connections meanwhile."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if ready():
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.2)
