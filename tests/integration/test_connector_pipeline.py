"""A DataConnector's items end to end, every part a real process or server.

The webhook connector and the filter sidecar run as `privatellm connector run` and
`privatellm sidecar`; the sidecar sends what passes to a `privatellm gateway` process in
front of a local OpenAI-compatible server, and pushes the results to a local HTTPS-less
destination that records what it receives. Quarantined items are sealed by the real
Vault-API server of the test environment. The sidecar authenticates to the gateway
with the bearer credential in its token file: here an API key the gateway's policy
names, where a cluster projects the connector's ServiceAccount token (reviewed by the
API server, tests/integration/test_gateway_connectors.py).
"""

from __future__ import annotations

import datetime
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from privatellm.audit import Signer, verify_log
from privatellm.audit.query import AuditQuery, query_log
from privatellm.connectors.quarantine import read_entries
from privatellm.devcluster import Toolchain
from privatellm.devcluster.cluster import default_cache
from privatellm.devcluster.s3 import DevS3
from privatellm.keys import TransitClient
from privatellm.keys.tenancy import gateway_policy, namespace_key_name
from privatellm.keys.tls import issue_ca, issue_leaf
from tests.gateway.conftest import ALICE_KEY, base_config
from tests.support import corpus
from tests.support.fake_openai import FakeOpenAI

from .conftest import VaultServer, wait_until

SUMMARY = "Summary: the customer asks for a copy of the invoice."
ANOTHER_CUSTOMER = "Globex Corporation"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Destination:
    """An HTTP destination that records every delivery with its Idempotency-Key."""

    port: int = field(default_factory=free_port)
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/results"

    @contextmanager
    def serve(self) -> Iterator[Destination]:
        import asyncio

        loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def take(request: web.Request) -> web.Response:
            self.received.append((request.headers.get("Idempotency-Key", ""), await request.json()))
            return web.json_response({"ok": True})

        async def start() -> web.AppRunner:
            app = web.Application()
            app.router.add_post("/results", take)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            return runner

        runner = loop.run_until_complete(start())
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        ready.set()
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.run_until_complete(runner.cleanup())


class Process:
    """A `privatellm` command as a child process, its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        import os

        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "privatellm.cli.main", *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
            )
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@dataclass
class Pipeline:
    sidecar_url: str
    webhook_url: str
    webhook_tls: ssl.SSLContext
    model: FakeOpenAI
    destination: Destination
    gateway: Process
    state: Path
    namespace: str
    gateway_port: int
    signer: Signer
    root: Path
    vault_token: str
    # The webhook connector's configuration, a base for others.
    connector: dict[str, Any]

    def push(self, data: bytes, key: str, *, deliver_to: str | None = None) -> tuple[int, Any]:
        """An item sent to the sidecar, as the connector does; its status and answer."""
        headers = {"X-Item-Key": key}
        if deliver_to:
            headers["X-Deliver-To"] = deliver_to
        return _post(f"{self.sidecar_url}/items", data, headers)

    def audit(self) -> list[dict[str, Any]]:
        """The sidecar's item records, from its log once the log verifies."""
        directory = self.state / "audit"
        assert not verify_log(directory, self.signer.public_key).problems
        records = query_log(directory, self.signer.public_key, AuditQuery()).records
        return [r for r in records if r.get("kind") == "connector.item"]

    def record_of(self, item: str) -> dict[str, Any]:
        [record] = [r for r in self.audit() if r["item"] == item]
        return record


def _post(
    url: str, data: bytes, headers: dict[str, str], context: ssl.SSLContext | None = None
) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body or b"null")
        except ValueError:  # the HTTP layer's own refusals are plain text
            return error.code, body.decode(errors="replace")


def _up(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2, context=context)
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def start_connector(root: Path, connector: dict[str, Any], vault_token: str) -> list[Process]:
    """The sidecar and the built-in connector of `connector`, as a Pod would run them."""
    config = root / "connector.json"
    config.write_text(json.dumps(connector))
    sidecar = Process(
        ["sidecar", "--config", str(config), "--host", "127.0.0.1"],
        root / "sidecar.log",
        env={"BAO_TOKEN": vault_token, "VAULT_TOKEN": vault_token},
    ).start()
    run = ["connector", "run", "--config", str(config), "--host", "127.0.0.1"]
    metrics = f"http://127.0.0.1:{connector['metricsPort']}/healthz"
    wait_until(lambda: _up(metrics), what="the sidecar")
    return [Process(run, root / "connector.log").start(), sidecar]


@pytest.fixture(scope="module")
def pipeline(vault: VaultServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    root = tmp_path_factory.mktemp("connector")
    namespace = f"c-{uuid.uuid4().hex[:8]}"
    key = namespace_key_name(namespace)
    TransitClient(vault.client).create_key(key)
    vault.client.request(
        "PUT", f"sys/policies/acl/sidecar-{namespace}", {"policy": gateway_policy([key])}
    )
    token = vault.client.request(
        "POST", "auth/token/create", {"policies": [f"sidecar-{namespace}"], "ttl": "1h"}
    )["auth"]["client_token"]
    destination = Destination()
    with FakeOpenAI(model="fake-model", reply=SUMMARY) as model, destination.serve() as dest:
        gateway_port = free_port()
        config = root / "gateway.yaml"
        config.write_text(yaml.safe_dump(base_config({"llama": [model.url]})))
        gateway = Process(
            [
                "gateway",
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(gateway_port),
            ],
            root / "gateway.log",
        ).start()
        state = root / "state"
        (root / "token").write_text(ALICE_KEY)
        (root / "terms.json").write_text(
            json.dumps({"protectedEntities": [ANOTHER_CUSTOMER], "internalTerms": []})
        )
        now = datetime.datetime.now(datetime.UTC)
        ca = issue_ca(namespace, now)
        leaf = issue_leaf(ca, "webhook", ["localhost"], now)
        credentials = root / "credentials"
        credentials.mkdir()
        (credentials / "tls.crt").write_bytes(leaf.cert_pem)
        (credentials / "tls.key").write_bytes(leaf.key_pem)
        (credentials / "token").write_text("webhook-caller-token")
        sidecar_port, metrics_port, webhook_port = free_port(), free_port(), free_port()
        signer = Signer.generate()
        (root / "signing.pem").write_bytes(signer.private_pem())
        connector = {
            "name": "helpdesk",
            "namespace": namespace,
            "type": "webhook",
            "direction": "both",
            "endpoint": dest.url,
            "models": ["llama"],
            "filters": {
                "allowedFileTypes": ["text/plain", "message/rfc822", "application/zip"],
                "maxItemBytes": 8 * 1024 * 1024,
                "pii": [{"entity": "iban", "action": "redact"}],
                "injection": "block",
                "dlpAction": "block",
            },
            "egress": [{"cidr": "127.0.0.1/32", "ports": [dest.port]}],
            "gateway": f"http://127.0.0.1:{gateway_port}",
            "tokenFile": str(root / "token"),
            "termsFile": str(root / "terms.json"),
            "credentialsDir": str(credentials),
            "sidecar": f"http://127.0.0.1:{sidecar_port}",
            "metricsPort": metrics_port,
            "webhookPort": webhook_port,
            "stateDir": str(state),
            "auditSigningKeyFile": str(root / "signing.pem"),
            "encryption": {"vaultAddr": vault.addr},
        }
        processes = start_connector(root, connector, token)
        webhook_tls = ssl.create_default_context(cadata=ca.cert_pem.decode())
        webhook_url = f"https://localhost:{webhook_port}/items"
        try:
            wait_until(lambda: _up(f"http://127.0.0.1:{gateway_port}/healthz"), what="gateway")
            wait_until(lambda: _up(webhook_url, webhook_tls), what="webhook")
            yield Pipeline(
                f"http://127.0.0.1:{sidecar_port}",
                webhook_url,
                webhook_tls,
                model,
                dest,
                gateway,
                state,
                namespace,
                gateway_port,
                signer,
                root,
                token,
                connector,
            )
        finally:
            for process in [*processes, gateway]:
                process.stop()


def delivered(pipeline: Pipeline, item: str) -> list[dict[str, Any]]:
    return [body for key, body in pipeline.destination.received if key == f"{item}.result"]


def test_a_clean_document_pushed_to_the_webhook_comes_out_summarised_at_the_destination(
    pipeline: Pipeline,
) -> None:
    document = corpus.text("Please send me a copy of invoice 2026-114, thanks.")
    headers = {"Authorization": "Bearer webhook-caller-token", "X-Item-Key": "ticket-1"}
    status, answer = _post(pipeline.webhook_url, document, headers, pipeline.webhook_tls)
    assert (status, answer["outcome"]) == (202, "accepted")
    item = answer["id"]
    [result] = wait_until(lambda: delivered(pipeline, item), what="the delivered summary")
    assert result == {
        "id": f"{item}.result",
        "connector": "helpdesk",
        "sourceKey": "ticket-1",
        "result": SUMMARY,
    }
    record = pipeline.record_of(item)
    assert (record["outcome"], record["connector"]) == ("passed", "helpdesk")
    assert (
        record["subject"]
        == f"system:serviceaccount:{pipeline.namespace}:privatellm-connector-helpdesk"
    )
    assert record["details"]["contentType"] == "text/plain"
    assert pipeline.record_of(f"{item}.result")["outcome"] == "passed"


def test_the_webhook_refuses_callers_without_its_token(pipeline: Pipeline) -> None:
    status, answer = _post(pipeline.webhook_url, b"hello", {}, pipeline.webhook_tls)
    assert (status, answer["error"]["code"]) == (401, "unauthenticated")


def test_an_iban_reaches_the_model_redacted(pipeline: Pipeline) -> None:
    status, answer = pipeline.push(corpus.iban_text(), "mail-iban")
    assert status == 202
    wait_until(lambda: delivered(pipeline, answer["id"]), what="the result")
    prompts = [r.json()["messages"][0]["content"] for r in pipeline.model.requests]
    [prompt] = [p for p in prompts if "invoice to IBAN" in p]
    assert "DE89370400440532013000" not in prompt and "DE89 3704" not in prompt
    changes = pipeline.record_of(answer["id"])["details"]["changes"]
    assert {"entity": "iban", "action": "redact", "count": 1} in changes


@pytest.mark.parametrize(
    ("item", "reason", "outcome"),
    [
        (corpus.pdf(["quarterly figures"]), "file_type_not_allowed:application/pdf", "blocked"),
        (corpus.injection_text(), "prompt_injection", "blocked"),
        (corpus.zip_bomb(), "archive_bomb", "quarantined"),
    ],
    ids=["pdf-named-txt", "injection", "zip-bomb"],
)
def test_refused_items_are_sealed_in_quarantine_and_audited(
    pipeline: Pipeline, item: bytes, reason: str, outcome: str
) -> None:
    before = len(pipeline.model.requests)
    status, answer = pipeline.push(item, f"refused-{uuid.uuid4().hex[:6]}.txt")
    assert status == 422, answer
    assert answer["outcome"] == outcome
    assert answer["error"]["code"].startswith(reason)
    record = pipeline.record_of(answer["id"])
    assert (record["outcome"], record["details"]["quarantined"]) == (outcome, True)
    entries = {e.item_id: e for e in read_entries(pipeline.state / "quarantine")}
    assert entries[answer["id"]].reason == answer["error"]["code"]
    sealed = (pipeline.state / "quarantine" / f"{answer['id']}.rec").read_bytes()
    assert item[:64] not in sealed
    assert len(pipeline.model.requests) == before  # nothing reached the model


def test_an_answer_naming_another_customer_is_held_back(pipeline: Pipeline) -> None:
    pipeline.model.reply = f"This concerns {ANOTHER_CUSTOMER}, whose contract ends soon."
    try:
        status, answer = pipeline.push(corpus.text("What about our contract?"), "contract")
        assert status == 202
        result = f"{answer['id']}.result"
        record = wait_until(
            lambda: [r for r in pipeline.audit() if r["item"] == result], what="the result's record"
        )[0]
    finally:
        pipeline.model.reply = SUMMARY
    assert (record["outcome"], record["reason"]) == ("blocked", "protected_entity")
    assert delivered(pipeline, answer["id"]) == []
    assert result in {e.item_id for e in read_entries(pipeline.state / "quarantine")}


def test_a_destination_not_in_egress_is_refused(pipeline: Pipeline) -> None:
    status, answer = pipeline.push(
        corpus.text("hello"), "elsewhere", deliver_to="https://attacker.example:443/drop"
    )
    assert (status, answer["error"]["code"]) == (403, "egress:destination_not_listed")


def test_items_wait_while_the_gateway_is_down_and_arrive_once(pipeline: Pipeline) -> None:
    pipeline.gateway.stop()
    try:
        taken = [
            pipeline.push(corpus.text(f"item {n} during the outage"), f"outage-{n}")
            for n in range(3)
        ]
        assert [status for status, _ in taken] == [202] * 3
        time.sleep(30)
        assert all(delivered(pipeline, a["id"]) == [] for _, a in taken)
    finally:
        pipeline.gateway.start()
    for _, answer in taken:
        wait_until(lambda a=answer: delivered(pipeline, a["id"]), timeout=120, what="delivery")
    assert all(len(delivered(pipeline, a["id"])) == 1 for _, a in taken)


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[DevS3]:
    server = DevS3(tmp_path / "s3", Toolchain(default_cache()))
    server.workdir.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_new_objects_in_a_bucket_pass_the_filters_once_and_results_are_written_back(
    pipeline: Pipeline, s3: DevS3, tmp_path: Path
) -> None:
    store = s3.client()
    store.create_bucket("docs", object_lock=False)
    inbox = {
        "clean.txt": corpus.text("Summarise the attached complaint about delivery times."),
        "iban.txt": corpus.iban_text(),
        "report.txt": corpus.pdf(["a PDF named .txt"]),
    }
    for name, data in inbox.items():
        store.raw.put_object(Bucket="docs", Key=f"team-a/inbox/{name}", Body=data)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "accessKeyId").write_text(s3.access_key)
    (credentials / "secretAccessKey").write_text(s3.secret_key)
    connector = {
        **pipeline.connector,
        "name": "documents",
        "type": "objectStore",
        "direction": "inbound",
        "endpoint": f"{s3.endpoint}/docs/team-a",
        "egress": [],
        "credentialsDir": str(credentials),
        "sidecar": f"http://127.0.0.1:{free_port()}",
        "metricsPort": free_port(),
        "stateDir": str(tmp_path / "state"),
    }
    prompts_before = len(pipeline.model.requests)

    def objects(folder: str) -> dict[str, bytes]:
        listed = store.raw.list_objects_v2(Bucket="docs", Prefix=f"team-a/{folder}/")
        keys = [o["Key"] for o in listed.get("Contents") or ()]
        return {k.rsplit("/", 1)[1]: store.get("docs", k) for k in keys}

    processes = start_connector(tmp_path, connector, pipeline.vault_token)
    try:
        results = wait_until(
            lambda: len(found := objects("results")) == 2 and found, what="two results"
        )
        assert results == {"clean.txt": SUMMARY.encode(), "iban.txt": SUMMARY.encode()}
        done = wait_until(lambda: len(found := objects("done")) == 3 and found, what="all done")
        assert done == {"clean.txt": b"202", "iban.txt": b"202", "report.txt": b"422"}
        # Restarted, the connector sends nothing again: the done markers say so.
        processes[0].stop()
        processes[0].start()
        time.sleep(6)  # past one listing of the bucket
    finally:
        for process in processes:
            process.stop()
    assert len(pipeline.model.requests) - prompts_before == 2
    prompts = [r.json()["messages"][0]["content"] for r in pipeline.model.requests]
    assert not any("DE89370400440532013000" in p for p in prompts)


def test_an_item_for_a_model_the_connector_does_not_list_is_refused(pipeline: Pipeline) -> None:
    status, answer = _post(
        f"{pipeline.sidecar_url}/items", b"hello", {"X-Model": "another-teams-model"}
    )
    assert (status, answer["error"]["code"]) == (400, "model_not_listed")


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (corpus.truncated_zip(), "archive_truncated"),
        ("Grüße aus Köln".encode("latin-1"), "undecodable_text"),
        (bytes(range(256)) * 64, "file_type_not_allowed:application/octet-stream"),
        (b"x" * (8 * 1024 * 1024 + 1), "too_large"),
    ],
    ids=["truncated-zip", "latin-1-text", "unknown-binary", "over-the-limit"],
)
def test_bad_items_get_a_reason_in_the_answer_and_the_record_and_the_sidecar_serves_on(
    pipeline: Pipeline, item: bytes, reason: str
) -> None:
    key = f"bad-{uuid.uuid4().hex[:6]}"
    status, answer = pipeline.push(item, key)
    assert status in (413, 422), answer
    assert answer["error"]["code"] == reason
    records = [r for r in pipeline.audit() if r["reason"] == reason]
    assert records, f"no record with reason {reason}"
    # A header larger than the server takes is refused by the HTTP layer; still serving.
    big = _post(f"{pipeline.sidecar_url}/items", b"x", {"X-Item-Key": "k" * 20_000})
    assert big[0] == 400
    assert pipeline.push(corpus.text("still here"), f"{key}-after")[0] == 202
