"""The usage ledgers on the real control plane: gateway tallies collected into a ConfigMap
per month, and a month's GPU spend shared out per subject to the cent by
`privatellm cost report`.

The first test serves the `GET /usage` contract from two small HTTP servers on loopback
(one per tally, with answers the test chooses: a stale one, a malformed one, a gone
replica); the second starts two real gateway processes with TLS on their peer ports and
collects what they counted, with the peer token and CA read from the namespace's Secrets.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from kubernetes import client

from privatellm.api import GROUP, VERSION
from privatellm.cli.main import main
from privatellm.controllers import budget, ledger
from privatellm.controllers.demand import PeerAccess, access_from_secrets
from privatellm.controllers.usage import UsageCollector, collect_once, store_usage
from privatellm.cost.ledger import timestamp
from privatellm.cost.usage import load, load_busy, parse_answer, usage_configmap
from privatellm.devcluster.cluster import free_port
from privatellm.gateway.quotas import peer_token
from privatellm.keys.tls import issue_ca, issue_leaf, service_names
from privatellm.kube.client import KINDS, Kube, Obj
from privatellm.render.gateway import CONFIG_SECRET, GATEWAY_NAME, HASH_KEY_KEY
from privatellm.render.tls import CA_CERT_KEY, NAMESPACE_CA_SECRET
from tests.gateway.conftest import ALICE_KEY, BOB_KEY, base_config
from tests.support.fake_openai import FakeOpenAI
from tests.support.usage import usage_row

from .conftest import Cluster, wait_until
from .test_cost_ledger import NODES, cost_budget, run_pod, serving_pod, status_of
from .test_inference_operator import model

API = GROUP, VERSION
CONFIG_MAP = KINDS["ConfigMap"]
HASH_KEY = b"k" * 32
TOKEN = peer_token(HASH_KEY)
TALLY_A = "a1" * 16
TALLY_B = "b2" * 16


@pytest.fixture
def gpu_node(crds: Cluster) -> Iterator[dict[str, dict[str, str]]]:
    """The on-demand H100 node of test_cost_ledger, which nothing manages."""
    name = "gpu-on-demand"
    crds.core.create_node(
        client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=NODES[name]))
    )
    try:
        yield {name: NODES[name]}
    finally:
        crds.core.delete_node(name)


USAGE_STATUS = (
    "requestsThisMonth",
    "tokensThisMonth",
    "activeUsers",
    "costPerActiveUser",
    "costPerMillionTokens",
    "idleGpuShare",
)


def usage_item(
    subject: str,
    policy: str,
    requests: int,
    prompt: int,
    completion: int,
    month: str = "2026-12",
) -> Obj:
    return usage_row("UTC", month, subject, policy, "llama", requests, prompt, completion)


class StandIn:
    """One replica's peer port: `GET /usage` behind the peer token, answering `answer`."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.url = ""

    async def usage(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "invalid_peer_token"}, status=401)
        return web.json_response(self.answer)


@asynccontextmanager
async def stand_ins(*answers: Any) -> AsyncIterator[list[StandIn]]:
    replicas = [StandIn(answer) for answer in answers]
    runners = []
    try:
        for replica in replicas:
            app = web.Application()
            app.router.add_get("/usage", replica.usage)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            replica.url = f"http://127.0.0.1:{port}"
        yield replicas
    finally:
        for runner in runners:
            await runner.cleanup()


def ledger_data(
    kube: Kube, namespace: str, month: str = "2026-12"
) -> tuple[str, dict[str, str]] | None:
    """The resourceVersion and data of the usage ledger of `month`; None while it does not
    exist."""
    live = kube.get(CONFIG_MAP, namespace, usage_configmap(month))
    if live is None:
        return None
    return live["metadata"]["resourceVersion"], live.get("data") or {}


def urllib_fetch(url: str) -> Any:
    """A replica's `GET /usage` over a plain HTTP client of the standard library."""
    request = urllib.request.Request(f"{url}/usage", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


class RivalWriter(Kube):
    """Another operator (an old leader) writes its copy between this one's read and write."""

    def __init__(self, api: client.ApiClient, namespace: str, answers: list[Any]) -> None:
        super().__init__(api)
        self.namespace = namespace
        self.answers: list[Any] | None = answers

    def write_if_unchanged(self, manifest: Obj, live: Obj | None) -> None:
        if self.answers is not None:
            answers, self.answers = self.answers, None
            assert store_usage(Kube(self.api), self.namespace, answers)
        super().write_if_unchanged(manifest, live)


def test_two_tallies_are_collected_and_share_the_month_to_the_cent(
    crds: Cluster,
    namespace: str,
    gpu_node: dict[str, dict[str, str]],
    report: Any,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    kube = Kube(crds.api)
    # Tally A (alice, bob) and tally B (carol, and alice once more without token counts):
    # 160 tokens each for alice, bob and carol in December. B counted erin in November.
    answer_a = {
        "tally": TALLY_A,
        "usage": [
            usage_item("alice", "analysts", 2, 120, 40),
            usage_item("bob", "support", 1, 100, 60),
        ],
        # llama's replicas had requests in flight 2.5 h between them.
        "busy": [
            {"zone": "UTC", "month": "2026-12", "model": "llama", "replicaMilliseconds": 9_000_000}
        ],
    }
    answer_b = {
        "tally": TALLY_B,
        "usage": [
            usage_item("carol", "analysts", 1, 150, 10),
            usage_item("alice", "analysts", 1, 0, 0),
            usage_item("erin", "support", 7, 700, 70, month="2026-11"),
        ],
    }
    stale_a = {"tally": TALLY_A, "usage": [usage_item("alice", "analysts", 1, 60, 20)]}
    malformed = {"tally": TALLY_A, "usage": [usage_item("alice", "analysts", -1, 0, 0)]}

    async def collect() -> None:
        async with stand_ins(answer_a, answer_b) as (a, b), aiohttp.ClientSession() as session:
            urls = [a.url, b.url]
            collector = UsageCollector(
                kube,
                lambda: [namespace],
                lambda _namespace: urls,
                lambda _namespace: PeerAccess(TOKEN, False),
            )
            assert await collector.collect(session, namespace)
            written = await asyncio.to_thread(ledger_data, kube, namespace)
            assert written is not None and sorted(written[1]) == sorted([TALLY_A, TALLY_B])
            # Each month in a ConfigMap of its own: November holds B's rows of November.
            november = await asyncio.to_thread(ledger_data, kube, namespace, "2026-11")
            assert november is not None and list(november[1]) == [TALLY_B]
            assert [(r.subject, r.month) for r in load(november[1])] == [("erin", "2026-11")]
            assert {r.month for r in load(written[1])} == {"2026-12"}
            # Replica B is gone, A's answer is stale: nothing is written.
            urls.remove(b.url)
            a.answer = stale_a
            assert not await collector.collect(session, namespace)
            # A malformed answer is refused, named, and not written.
            a.answer = malformed
            caplog.clear()
            assert not await collector.collect(session, namespace)
            assert f"usage of the gateway at {a.url} refused" in caplog.text
            assert "usage[0].requests is negative" in caplog.text
            assert await asyncio.to_thread(ledger_data, kube, namespace) == written
            # The same, read by the synchronous path with another HTTP client.
            a.answer = answer_a
            gone = f"http://127.0.0.1:{free_port()}"
            # Off the event loop, which serves the stand-ins.
            replicas = [a.url, gone]
            assert not await asyncio.to_thread(
                collect_once, kube, namespace, replicas, urllib_fetch
            )
            assert f"usage of the gateway at {gone}: " in caplog.text

    asyncio.run(collect())

    # Two writers at once: the loser re-reads and merges, never overwrites.
    more_b = {
        "tally": TALLY_B,
        "usage": [
            usage_item("carol", "analysts", 2, 300, 20),
            usage_item("alice", "analysts", 1, 0, 0),
        ],
    }
    racing = RivalWriter(crds.api, namespace, [parse_answer(more_b)])
    newer_a = {
        "tally": TALLY_A,
        "usage": [*answer_a["usage"], usage_item("dave", "support", 1, 0, 0)],
    }
    assert store_usage(racing, namespace, [parse_answer(newer_a)])
    # Carol's 2 requests are the rival's, dave the retry's: neither write was lost.
    stored = ledger_data(kube, namespace)
    assert stored is not None
    counted = {(r.subject, r.requests, r.tokens) for r in load(stored[1])}
    assert counted == {("alice", 3, 160), ("bob", 1, 160), ("carol", 2, 320), ("dave", 1, 0)}
    # Start again from the two tallies the report below shares out.
    crds.core.delete_namespaced_config_map(usage_configmap("2026-12"), namespace)
    assert store_usage(kube, namespace, [parse_answer(answer_a), parse_answer(answer_b)])

    # llama: 2 on-demand H100s for 10 h on 1 December: 82.00 EUR.
    for plural, body in (
        ("inferencedeployments", model("llama")),
        ("costbudgets", cost_budget("team")),
    ):
        crds.custom.create_namespaced_custom_object(*API, namespace, plural, body)
    pod = serving_pod("llama-a", "llama", "gpu-on-demand", 2)
    run_pod(crds, namespace, pod, "2026-12-01T01:00:00Z", "2026-12-01T11:00:00Z")
    ledger.reconcile(kube, namespace, gpu_node, at("2026-12-01T12:00:00Z"))

    common = ["-n", namespace, "--month", "2026-12"]
    by_model = json.loads(report(capsys, *common, "--format", "json"))
    assert [(r["model"], r["amount"]) for r in by_model] == [("llama", "82.00"), (None, "82.00")]
    records = json.loads(report(capsys, *common, "--by", "subject", "--format", "json"))
    shares = [(r["subject"], r["requests"], r["amount"]) for r in records if r["row"] == "subject"]
    # 82.00 / 3 = 27.333...: the cent left over goes to the first of the tie, alice.
    assert shares == [("alice", 3, "27.34"), ("bob", 1, "27.33"), ("carol", 1, "27.33")]
    assert sum(Decimal(amount) for _, _, amount in shares) == Decimal("82.00")
    model_total = [r for r in records if r["row"] == "model"]
    assert [(r["model"], r["requests"], r["amount"]) for r in model_total] == [
        ("llama", 5, "82.00")
    ]
    by_policy = json.loads(report(capsys, *common, "--by", "policy", "--format", "json"))
    # analysts 320 tokens, support 160: 54.666... and 27.333...
    assert [(r["policy"], r["amount"]) for r in by_policy if r["row"] == "policy"] == [
        ("analysts", "54.67"),
        ("support", "27.33"),
    ]
    # The budget's own figures: 3 active users, 480 tokens, 82.00 spent.
    budget.reconcile(kube, namespace, "team", at("2026-12-01T12:00:00Z"))
    status = status_of(crds, namespace, "team")
    assert {key: status[key] for key in USAGE_STATUS} == {
        "requestsThisMonth": 5,
        "tokensThisMonth": 480,
        "activeUsers": 3,
        "costPerActiveUser": 27.33,
        "costPerMillionTokens": 170833.33,
        # 2.5 replica-hours of 2 GPUs busy, of 20 GPU-hours.
        "idleGpuShare": 0.75,
    }
    table = report(capsys, *common, "--by", "subject")
    assert table.splitlines() == [
        f"NAMESPACE{' ' * (len(namespace) - 7)}BUDGET  MODEL    SUBJECT  MONTH    REQUESTS"
        "  PROMPT-TOKENS  COMPLETION-TOKENS  AMOUNT  CURRENCY  NOTE",
        f"{namespace}  team    llama    alice    2026-12         3            120"
        "                 40   27.34  EUR",
        f"{namespace}  team    llama    bob      2026-12         1            100"
        "                 60   27.33  EUR",
        f"{namespace}  team    llama    carol    2026-12         1            150"
        "                 10   27.33  EUR",
        f"{namespace}  team    llama    (total)  2026-12         5            370"
        "                110   82.00  EUR",
        f"{namespace}  team    (total)           2026-12         5            370"
        "                110   82.00  EUR",
    ]


def at(text: str) -> int:
    moment = timestamp(text)
    assert moment is not None
    return moment


def gateway_files(tmp_path: Path, namespace: str) -> tuple[Any, Path]:
    """What `gateway_process` runs with, in `tmp_path`: the namespace's gateway certificate
    and hash key, and an audit signing key; the CA and the signing key's path."""
    now = datetime.datetime.now(datetime.UTC)
    ca = issue_ca(namespace, now)
    leaf = issue_leaf(ca, GATEWAY_NAME, service_names(GATEWAY_NAME, namespace), now)
    (tmp_path / "gateway.crt").write_bytes(leaf.cert_pem)
    (tmp_path / "gateway.key").write_bytes(leaf.key_pem)
    (tmp_path / "hash.key").write_bytes(HASH_KEY)
    signing_key = tmp_path / "audit.pem"
    assert main(["audit", "keygen", "--out", str(signing_key)]) == 0
    return ca, signing_key


@contextmanager
def gateway_process(
    tmp_path: Path, name: str, config: Path, signing_key: Path
) -> Iterator[tuple[int, int]]:
    """A gateway process serving HTTPS with the namespace's certificate on both its ports,
    its tally in an audit directory of its own (as on its own volume); its two ports."""
    port, peer_port = free_port(), free_port()
    command = [sys.executable, "-m", "privatellm.cli.main", "gateway", "--config", str(config)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--peer-port", str(peer_port)]
    command += ["--hash-key-file", str(tmp_path / "hash.key")]
    command += [
        "--tls-cert",
        str(tmp_path / "gateway.crt"),
        "--tls-key",
        str(tmp_path / "gateway.key"),
    ]
    command += ["--audit-dir", str(tmp_path / name), "--audit-signing-key", str(signing_key)]
    with (tmp_path / f"{name}.log").open("a") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield port, peer_port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def chat(port: int, key: str, trust: ssl.SSLContext) -> int:
    body = json.dumps({"model": "llama", "messages": [{"role": "user", "content": "hi there"}]})
    request = urllib.request.Request(
        f"https://127.0.0.1:{port}/v1/chat/completions",
        data=body.encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10, context=trust) as response:
                status: int = response.status
                return status
        except urllib.error.HTTPError:
            raise
        except OSError:
            # Still starting.
            assert time.monotonic() < deadline, f"the gateway on {port} did not start"
            time.sleep(0.2)


def this_month() -> tuple[str, str]:
    """The current UTC month and its first instant, as the API server writes times."""
    now = datetime.datetime.now(datetime.UTC)
    return f"{now:%Y-%m}", f"{now:%Y-%m}-01T00:00:00Z"


def test_real_gateway_processes_tallies_reach_the_report(
    crds: Cluster,
    namespace: str,
    gpu_node: dict[str, dict[str, str]],
    report: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kube = Kube(crds.api)
    ca, signing_key = gateway_files(tmp_path, namespace)
    # What the operator reads to call the replicas: the hash key and the namespace CA.
    for name, key, value in (
        (CONFIG_SECRET, HASH_KEY_KEY, HASH_KEY),
        (NAMESPACE_CA_SECRET, CA_CERT_KEY, ca.cert_pem),
    ):
        secret = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            data={key: base64.b64encode(value).decode()},
        )
        crds.core.create_namespaced_secret(namespace, secret)
    trust = ssl.create_default_context(cadata=ca.cert_pem.decode())

    month, first_instant = this_month()
    with FakeOpenAI(model="fake-model") as upstream:
        config = tmp_path / "gateway.yaml"
        settings = base_config({"llama": [upstream.url]})
        bob = {"kind": "APIKey", "name": "bob", "secretName": "bob-key"}
        settings["policies"].append(
            {"name": "analysts", "spec": {**settings["policies"][0]["spec"], "subjects": [bob]}}
        )
        config.write_text(yaml.safe_dump(settings))
        with (
            gateway_process(tmp_path, "gw-0", config, signing_key) as (port_0, peers_0),
            gateway_process(tmp_path, "gw-1", config, signing_key) as (port_1, peers_1),
        ):
            assert [chat(port_0, ALICE_KEY, trust) for _ in range(3)] == [200] * 3
            assert [chat(port_1, BOB_KEY, trust) for _ in range(1)] == [200]
            urls = [f"https://127.0.0.1:{peers_0}", f"https://127.0.0.1:{peers_1}"]

            async def collect() -> None:
                collector = UsageCollector(
                    kube,
                    lambda: [namespace],
                    lambda _namespace: urls,
                    lambda ns: access_from_secrets(kube, ns),
                    poll_seconds=0.2,
                )
                running = asyncio.create_task(collector.run())
                try:
                    await asyncio.to_thread(
                        wait_until,
                        lambda: len((ledger_data(kube, namespace, month) or ("", {}))[1]) == 2,
                        what="both tallies in the usage ledger",
                    )
                finally:
                    running.cancel()

            asyncio.run(collect())

    stored = ledger_data(kube, namespace, month)
    assert stored is not None
    rows = load(stored[1])
    assert [(r.zone, r.month, r.subject, r.policy, r.model, r.requests) for r in rows] == [
        ("UTC", month, "alice", "alice", "llama", 3),
        ("UTC", month, "bob", "analysts", "llama", 1),
    ]
    assert all(r.tokens > 0 for r in rows)
    # Both gateways had llama's replica busy for a while, and said so.
    assert load_busy(stored[1])[("UTC", month, "llama")] > 0

    # One hour of 2 on-demand H100s at the start of this month: 8.20 EUR.
    crds.custom.create_namespaced_custom_object(*API, namespace, "costbudgets", cost_budget("team"))
    pod = serving_pod("llama-a", "llama", "gpu-on-demand", 2)
    ended = at(first_instant) + 3600
    run_pod(
        crds,
        namespace,
        pod,
        first_instant,
        datetime.datetime.fromtimestamp(ended, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    ledger.reconcile(kube, namespace, gpu_node, ended)
    records = json.loads(
        report(capsys, "-n", namespace, "--month", month, "--by", "subject", "--format", "json")
    )
    shares = {r["subject"]: r for r in records if r["row"] == "subject"}
    assert sorted(shares) == ["alice", "bob"]
    tokens = {name: r["prompt_tokens"] + r["completion_tokens"] for name, r in shares.items()}
    amounts = {name: Decimal(r["amount"]) for name, r in shares.items()}
    # Shared by tokens, to the cent, adding up to the model's 8.20.
    assert amounts["alice"] + amounts["bob"] == Decimal("8.20")
    exact = Decimal("8.20") * tokens["alice"] / sum(tokens.values())
    assert abs(amounts["alice"] - exact) < Decimal("0.01")
