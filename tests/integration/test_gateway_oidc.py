"""OIDC end to end: a `privatellm gateway` process verifies tokens that Dex, a real OpenID
provider, issued to its users.

Dex (built by `scripts/testenv.sh`, run by `privatellm.devcluster.dex`) serves over TLS
with a CA of the test's own, keeps users with groups in its password database and hands
out ID tokens through the password grant. The gateway knows Dex only as its issuer URL,
audience, groups claim and CA file, as it would in a cluster; it finds the signing keys
through Dex's discovery document. AccessPolicies name a User and a Group.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from privatellm.devcluster import Toolchain
from privatellm.devcluster.cluster import free_port
from privatellm.devcluster.dex import DevDex, DexUser
from tests.support.fake_openai import FakeOpenAI

from .conftest import wait_until

AUDIENCE = "privatellm-gateway"
OTHER_CLIENT = "reporting-app"
ALICE = DexUser("alice@example.com", ("ml-team",))
BOB = DexUser("bob@example.com", ("finance",))
# One model per way of being authorised, so that each answer says which policy let it through.
USER_MODEL = "llama-alice"
GROUP_MODEL = "llama-ml-team"


def gateway_config(
    issuer: str, ca_file: Path, upstream: str, leeway_seconds: int = 60
) -> dict[str, Any]:
    """Two models; a policy naming alice as a User, one naming ml-team as a Group."""

    def policy(name: str, subject: dict[str, str], model: str) -> dict[str, Any]:
        spec = {
            "subjects": [subject],
            "models": [model],
            "dataClasses": [{"name": "public", "action": "allow"}],
        }
        return {"name": name, "spec": spec}

    return {
        "namespace": "team-a",
        "models": [
            {"name": name, "servedName": "fake-model", "endpoints": [upstream]}
            for name in (USER_MODEL, GROUP_MODEL)
        ],
        "policies": [
            policy("alice", {"kind": "User", "name": ALICE.email}, USER_MODEL),
            policy("ml-team", {"kind": "Group", "name": "ml-team"}, GROUP_MODEL),
        ],
        "auth": {
            "oidc": {
                "issuer": issuer,
                "audience": AUDIENCE,
                "usernameClaim": "email",
                "groupsClaim": "groups",
                "caFile": str(ca_file),
                "leewaySeconds": leeway_seconds,
            }
        },
    }


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    request_id: str

    @property
    def code(self) -> str | None:
        """The refusal's machine-readable reason."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error.get("code") if isinstance(error, dict) else None


@dataclass
class GatewayProcess:
    """`privatellm gateway` on a free loopback port, its audit events in a file."""

    process: subprocess.Popen[bytes]
    url: str
    audit: Path
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def chat(self, token: str, model: str = USER_MODEL) -> Answer:
        request_id = uuid.uuid4().hex
        body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
        request = urllib.request.Request(
            self.url + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "X-Request-Id": request_id,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Answer(response.status, json.load(response), request_id)
        except urllib.error.HTTPError as error:
            return Answer(error.code, json.loads(error.read()), request_id)

    def event(self, request_id: str) -> dict[str, Any]:
        """The audit event of one request, once the gateway has written it."""

        def written() -> dict[str, Any] | None:
            lines = self.audit.read_text().splitlines() if self.audit.exists() else []
            events = [json.loads(line) for line in lines if line]
            return next((e for e in events if e.get("request_id") == request_id), None)

        found: dict[str, Any] = wait_until(written, timeout=15, what=f"audit event {request_id}")
        return found


@pytest.fixture(scope="module")
def tools() -> Toolchain:
    return Toolchain.locate()


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with FakeOpenAI(model="fake-model") as model:
        yield model.url


def start_gateway(workdir: Path, config: dict[str, Any]) -> GatewayProcess:
    """Start the gateway and wait for its health check; it does not ask the issuer first."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config))
    port, audit, log = free_port(), workdir / "audit.jsonl", workdir / "gateway.log"
    command = [sys.executable, "-m", "privatellm.cli.main", "gateway", "--config", str(config_file)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--audit-log", str(audit)]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    gateway = GatewayProcess(process, f"http://127.0.0.1:{port}", audit, log)
    try:
        wait_until(lambda: _healthy(gateway), timeout=60, interval=0.2, what="the gateway")
    except BaseException:
        stop_gateway(gateway)
        raise
    return gateway


def _healthy(gateway: GatewayProcess) -> bool:
    assert gateway.alive(), f"the gateway exited: {gateway.log.read_text()}"
    try:
        with urllib.request.urlopen(gateway.url + "/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def stop_gateway(gateway: GatewayProcess) -> None:
    if gateway.alive():
        gateway.process.send_signal(signal.SIGTERM)
    try:
        gateway.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        gateway.process.kill()
        gateway.process.wait()


@pytest.fixture(scope="module")
def dex(tools: Toolchain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevDex]:
    provider = DevDex(
        tmp_path_factory.mktemp("dex"),
        tools,
        users=(ALICE, BOB),
        clients=(AUDIENCE, OTHER_CLIENT),
    )
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture(scope="module")
def gateway(
    dex: DevDex, upstream: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = gateway_config(dex.issuer, dex.ca_file, upstream)
    running = start_gateway(tmp_path_factory.mktemp("gateway"), config)
    try:
        yield running
    finally:
        stop_gateway(running)


def assert_refused(answer: Answer, status: int, code: str) -> None:
    assert (answer.status, answer.code) == (status, code), answer.body
    assert answer.body["error"]["message"], "a refusal says why in words too"


# Authenticated and authorised


def test_a_user_named_by_a_policy_is_authorised(dex: DevDex, gateway: GatewayProcess) -> None:
    answer = gateway.chat(dex.token(ALICE.email), USER_MODEL)
    assert answer.status == 200, answer.body
    event = gateway.event(answer.request_id)
    assert (event["subject_kind"], event["subject"]) == ("User", ALICE.email)
    assert (event["auth_method"], event["policy"]) == ("oidc", "alice")


def test_a_member_of_a_group_named_by_a_policy_is_authorised(
    dex: DevDex, gateway: GatewayProcess
) -> None:
    answer = gateway.chat(dex.token(ALICE.email), GROUP_MODEL)
    assert answer.status == 200, answer.body
    event = gateway.event(answer.request_id)
    assert (event["subject"], event["groups"]) == (ALICE.email, ["ml-team"])
    assert event["policy"] == "ml-team"


def test_a_user_neither_named_nor_in_the_group_is_authenticated_but_not_authorised(
    dex: DevDex, gateway: GatewayProcess
) -> None:
    token = dex.token(BOB.email)
    for model in (USER_MODEL, GROUP_MODEL):
        answer = gateway.chat(token, model)
        assert_refused(answer, 403, "no_policy_for_subject")
        event = gateway.event(answer.request_id)
        assert (event["subject"], event["groups"]) == (BOB.email, ["finance"])


# Refused tokens


def test_a_token_issued_for_another_audience_is_refused(
    dex: DevDex, gateway: GatewayProcess
) -> None:
    token = dex.token(ALICE.email, client=OTHER_CLIENT)
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == OTHER_CLIENT
    assert_refused(gateway.chat(token), 401, "wrong_audience")


def forged(token: str, kid: str) -> str:
    """The token's header and claims, signed with a key the provider never had."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def test_a_token_signed_by_another_key_is_refused(dex: DevDex, gateway: GatewayProcess) -> None:
    genuine = dex.token(ALICE.email)
    kid = jwt.get_unverified_header(genuine)["kid"]
    assert_refused(gateway.chat(forged(genuine, kid)), 401, "invalid_signature")
    assert_refused(gateway.chat(forged(genuine, "not-" + kid)), 401, "unknown_signing_key")
    assert gateway.chat(genuine).status == 200


def test_an_expired_token_is_refused(tools: Toolchain, upstream: str, tmp_path: Path) -> None:
    # A provider of its own whose tokens live two seconds, and a gateway without leeway.
    provider = DevDex(tmp_path / "dex", tools, users=(ALICE,), id_token_lifetime="2s")
    provider.start()
    try:
        config = gateway_config(provider.issuer, provider.ca_file, upstream, leeway_seconds=0)
        gateway = start_gateway(tmp_path / "gateway", config)
        try:
            token = provider.token(ALICE.email)
            expires = jwt.decode(token, options={"verify_signature": False})["exp"]
            time.sleep(max(0.0, expires - time.time()) + 0.5)
            # The lifetime is checked after signature, issuer and audience.
            assert_refused(gateway.chat(token), 401, "expired_token")
        finally:
            stop_gateway(gateway)
    finally:
        provider.stop()


# The provider is away when the gateway starts


def test_tokens_get_503_while_the_issuer_is_away_and_pass_once_it_is_back(
    tools: Toolchain, upstream: str, tmp_path: Path
) -> None:
    provider = DevDex(tmp_path / "dex", tools, users=(ALICE,))
    provider.start()
    try:
        token = provider.token(ALICE.email)
        provider.stop()
        config = gateway_config(provider.issuer, provider.ca_file, upstream)
        gateway = start_gateway(tmp_path / "gateway", config)
        try:
            for _ in range(3):
                answer = gateway.chat(token)
                assert_refused(answer, 503, "auth_backend_unavailable")
                assert answer.body["error"]["type"] == "service_unavailable"
            assert gateway.alive()

            provider.start()
            refusals: list[tuple[int, str | None]] = []

            def accepted() -> bool:
                answer = gateway.chat(token)
                if answer.status != 200:
                    refusals.append((answer.status, answer.code))
                return answer.status == 200

            # The gateway retries after at most 10 s (its backoff's ceiling).
            wait_until(accepted, timeout=60, interval=0.5, what="the token to be accepted")
            assert set(refusals) <= {(503, "auth_backend_unavailable")}
            assert gateway.alive()
        finally:
            stop_gateway(gateway)
        assert gateway.process.returncode == 0, gateway.log.read_text()
    finally:
        provider.stop()
