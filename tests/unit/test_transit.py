"""The Vault client's wire behaviour: which failures are answers and which mean no Vault.

A loopback HTTP server plays the answers a real server gives only in situations a
test cannot arrange cheaply (sealed, a proxy's 504, a stalled answer, a certificate
nobody trusts). tests/integration/test_vault.py runs the client against a real
Vault-API server.
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from privatellm.keys.tls import issue_ca, issue_leaf
from privatellm.keys.transit import (
    KubernetesAuthVaultClient,
    TransitClient,
    VaultClient,
    VaultError,
    VaultUnavailableError,
)


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeVault:
    """Answers every request with the next scripted Answer (the last one repeats)."""

    answers: list[Answer] = field(default_factory=lambda: [Answer()])
    seen: list[Seen] = field(default_factory=list)
    addr: str = ""

    def answer(self, *answers: Answer) -> None:
        self.answers = list(answers)

    def next_answer(self) -> Answer:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def json_answer(status: int, payload: object) -> Answer:
    return Answer(status, json.dumps(payload).encode())


def _handler(vault: FakeVault) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            vault.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
            answer = vault.next_answer()
            time.sleep(answer.delay)
            self.send_response(answer.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def do_PUT(self) -> None:
            self._serve()

        def do_DELETE(self) -> None:
            self._serve()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Refused handshakes and clients that gave up are what these tests provoke.
        pass


def _serve(vault: FakeVault, tls: ssl.SSLContext | None = None) -> Iterator[FakeVault]:
    server = QuietServer(("127.0.0.1", 0), _handler(vault))
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls else "http"
    vault.addr = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield vault
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def vault() -> Iterator[FakeVault]:
    yield from _serve(FakeVault())


def test_a_request_carries_token_and_json_and_returns_the_answer(vault: FakeVault) -> None:
    vault.answer(json_answer(200, {"data": {"ok": True}}))
    answer = VaultClient(vault.addr, "s.token").request("POST", "sys/mounts/x", {"type": "t"})
    assert answer == {"data": {"ok": True}}
    (seen,) = vault.seen
    assert (seen.method, seen.path, json.loads(seen.body)) == (
        "POST",
        "/v1/sys/mounts/x",
        {"type": "t"},
    )
    assert seen.headers["X-Vault-Token"] == "s.token"
    assert seen.headers["Content-Type"] == "application/json"


def test_an_empty_answer_is_an_empty_dict(vault: FakeVault) -> None:
    vault.answer(Answer(204))
    assert VaultClient(vault.addr, "t").request("DELETE", "sys/policies/acl/p") == {}
    assert vault.seen[0].body == b""


@pytest.mark.parametrize(
    ("status", "errors"),
    [(503, ["Vault is sealed"]), (502, ["bad gateway"]), (504, ["upstream timed out"])],
)
def test_sealed_or_proxied_failures_mean_vault_is_unavailable(
    vault: FakeVault, status: int, errors: list[str]
) -> None:
    vault.answer(json_answer(status, {"errors": errors}))
    with pytest.raises(VaultUnavailableError) as caught:
        VaultClient(vault.addr, "t").request("POST", "transit/datakey/plaintext/k", {})
    assert (caught.value.status, caught.value.message) == (status, errors[0])
    assert caught.value.path == "transit/datakey/plaintext/k"
    assert len(vault.seen) == 1, "a failed request is not retried"


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (400, {"errors": ["invalid  ciphertext:\n bad"]}, "invalid ciphertext: bad"),
        (
            403,
            {"errors": ["1 error occurred:", "permission denied"]},
            "1 error occurred:; permission denied",
        ),
        (404, {"errors": []}, "Not Found"),
        (500, {"errors": ["internal error"]}, "internal error"),
    ],
)
def test_other_answers_are_vault_errors(
    vault: FakeVault, status: int, body: object, message: str
) -> None:
    vault.answer(json_answer(status, body))
    with pytest.raises(VaultError) as caught:
        VaultClient(vault.addr, "t").request("GET", "transit/keys/k")
    assert not isinstance(caught.value, VaultUnavailableError)
    assert (caught.value.status, caught.value.message) == (status, message)
    assert str(caught.value) == f"Vault HTTP {status} (transit/keys/k): {message}"


def test_an_error_body_that_is_not_vaults_json_is_the_message(vault: FakeVault) -> None:
    vault.answer(Answer(418, b"<html>teapot</html>"))
    with pytest.raises(VaultError, match="teapot") as caught:
        VaultClient(vault.addr, "t").request("GET", "sys/health")
    assert caught.value.status == 418


def test_a_success_that_is_not_json_is_no_usable_answer(vault: FakeVault) -> None:
    vault.answer(Answer(200, b"<html>sign in to the proxy</html>"))
    with pytest.raises(VaultUnavailableError, match="not JSON"):
        VaultClient(vault.addr, "t").request("GET", "sys/health")


def test_a_stalled_answer_times_out_as_unavailable(vault: FakeVault) -> None:
    vault.answer(Answer(200, b"{}", delay=1.0))
    started = time.monotonic()
    with pytest.raises(VaultUnavailableError, match=rf"cannot reach {vault.addr}: .*timed out"):
        VaultClient(vault.addr, "t", timeout=0.2).request("GET", "sys/health")
    assert time.monotonic() - started < 0.9
    assert len(vault.seen) == 1


def test_a_closed_port_is_unavailable_without_retries() -> None:
    # A bound port that does not listen refuses connections, and no one else can take it.
    with socket.socket() as idle, pytest.raises(VaultUnavailableError) as caught:
        idle.bind(("127.0.0.1", 0))
        addr = f"http://127.0.0.1:{idle.getsockname()[1]}"
        VaultClient(addr, "t").request("GET", "sys/health")
    assert caught.value.status is None
    assert caught.value.message.startswith(f"cannot reach {addr}: ")
    assert "refused" in caught.value.message and "Max retries" not in caught.value.message


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("../sys/policies/acl/root", "/v1/transit/keys/..%2Fsys%2Fpolicies%2Facl%2Froot"),
        # Sent as the literal segment, not resolved into the mount's root on the way.
        ("..", "/v1/transit/keys/.."),
        (".", "/v1/transit/keys/."),
        ("claims.v2", "/v1/transit/keys/claims.v2"),
    ],
)
def test_a_key_name_stays_one_path_segment_under_the_mount(
    vault: FakeVault, name: str, path: str
) -> None:
    vault.answer(Answer(204))
    TransitClient(VaultClient(vault.addr, "t")).rotate(name)
    assert vault.seen[-1].path == f"{path}/rotate"


def _login_answer(token: str, lease: int) -> Answer:
    return json_answer(200, {"auth": {"client_token": token, "lease_duration": lease}})


def test_kubernetes_auth_logs_in_without_a_token_and_again_at_half_lease(
    vault: FakeVault, tmp_path: Path
) -> None:
    jwt = tmp_path / "token"
    jwt.write_text("jwt-1\n")
    now = [1000.0]
    client = KubernetesAuthVaultClient(
        vault.addr, "gateway", jwt, mount="k8s", clock=lambda: now[0]
    )
    vault.answer(_login_answer("s.first", 600), json_answer(200, {"data": {}}))
    client.request("GET", "auth/token/lookup-self")
    login, lookup = vault.seen
    assert (login.path, json.loads(login.body)) == (
        "/v1/auth/k8s/login",
        {"role": "gateway", "jwt": "jwt-1"},
    )
    assert "X-Vault-Token" not in login.headers
    assert lookup.headers["X-Vault-Token"] == "s.first"

    # Before half the lease the token is reused; at half, the rotated JWT logs in again.
    now[0] += 299
    vault.answer(json_answer(200, {"data": {}}))
    client.request("GET", "auth/token/lookup-self")
    assert len(vault.seen) == 3
    now[0] += 1
    jwt.write_text("jwt-2")
    vault.answer(_login_answer("s.second", 600), json_answer(200, {"data": {}}))
    client.request("GET", "auth/token/lookup-self")
    relogin, again = vault.seen[3:]
    assert json.loads(relogin.body)["jwt"] == "jwt-2"
    assert "X-Vault-Token" not in relogin.headers
    assert again.headers["X-Vault-Token"] == "s.second"


def test_a_refused_login_is_a_vault_error(vault: FakeVault, tmp_path: Path) -> None:
    jwt = tmp_path / "token"
    jwt.write_text("jwt")
    vault.answer(json_answer(403, {"errors": ["permission denied"]}))
    with pytest.raises(VaultError) as caught:
        KubernetesAuthVaultClient(vault.addr, "gateway", jwt).request("GET", "sys/health")
    assert (caught.value.status, caught.value.path) == (403, "auth/kubernetes/login")
    assert len(vault.seen) == 1


@dataclass
class TLSFiles:
    ca: Path
    server: ssl.SSLContext


@pytest.fixture
def tls(tmp_path: Path) -> TLSFiles:
    now = datetime.datetime.now(datetime.UTC)
    ca = issue_ca("vault", now)
    leaf = issue_leaf(ca, "vault", ["vault"], now)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "vault.pem").write_bytes(leaf.cert_pem)
    (tmp_path / "vault.key").write_bytes(leaf.key_pem)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "vault.pem", tmp_path / "vault.key")
    return TLSFiles(tmp_path / "ca.pem", server)


@pytest.fixture
def tls_vault(tls: TLSFiles) -> Iterator[FakeVault]:
    fake = FakeVault([json_answer(200, {"data": {}})])
    yield from _serve(fake, tls.server)


def test_an_untrusted_certificate_is_unavailable(
    tls_vault: FakeVault, tls: TLSFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    # requests' own CA-bundle setting does not widen what the client trusts.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca))
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(VaultUnavailableError, match="certificate verify failed"):
        VaultClient(tls_vault.addr, "t").request("GET", "sys/health")
    assert tls_vault.seen == []


def test_the_default_trust_is_the_systems_store(
    tls_vault: FakeVault, tls: TLSFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca))
    assert VaultClient(tls_vault.addr, "t").request("GET", "sys/health") == {"data": {}}


def test_a_given_ssl_context_decides_what_is_trusted(tls_vault: FakeVault, tls: TLSFiles) -> None:
    context = ssl.create_default_context(cafile=str(tls.ca))
    client = VaultClient(tls_vault.addr, "t", ssl_context=context)
    assert client.request("GET", "sys/health") == {"data": {}}
    assert tls_vault.seen[0].headers["X-Vault-Token"] == "t"
