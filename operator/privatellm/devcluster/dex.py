"""A real OpenID provider for tests: Dex, with users and groups of its own, over TLS.

The server is the `dex` binary that `scripts/testenv.sh` builds. Users live in Dex's
local password database, each with its groups, and tokens come from the OAuth2 password
grant: a test gets a user's ID token with one request, no browser. Dex keeps its signing
keys in an etcd of its own under `workdir` (the control plane's etcd binary), so they
survive `stop` and `start`: a token issued before an outage still verifies after it, as
with a provider that restarts in production. The serving certificate is issued by a CA
made here; clients trust `ca_file`.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import secrets
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from privatellm.keys.tls import issue_certificate, self_signed_ca

from .cluster import Toolchain, free_port, spawn_logged, stop_process_group, wait_until_ready

DEX_BINARY = "dex"
ETCD_BINARY = "etcd"
# Every user signs in with this password. Dex takes passwords only as bcrypt hashes;
# this is the hash of PASSWORD at cost 10.
PASSWORD = "correct-horse-battery-staple"
PASSWORD_BCRYPT = "$2a$10$PdfJY4gmyxngmrRH3PpHtehXotypkqfe3GD4UaLTTtsmienCpQXPS"
# The scopes a token is asked for: `groups` puts the user's groups into the token.
SCOPES = "openid email profile groups"
# The connector id of Dex's local password database.
PASSWORD_CONNECTOR = "local"
VALIDITY = datetime.timedelta(days=30)


def _log(message: str) -> None:
    print(f"[dex] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class DexUser:
    """A user of Dex's password database: signs in with `email` and PASSWORD."""

    email: str
    groups: tuple[str, ...] = ()


class TokenRequestError(RuntimeError):
    """Dex refused to issue a token; the message is Dex's own description."""


@dataclass
class DevDex:
    """One `dex serve` child process on a free loopback port, with its etcd beside it."""

    workdir: Path
    tools: Toolchain
    users: tuple[DexUser, ...] = ()
    # OAuth2 clients; a token's audience is the client it was issued to.
    clients: tuple[str, ...] = ("privatellm-gateway",)
    # How long an ID token is valid, as a Go duration ("1h", "2s").
    id_token_lifetime: str = "1h"
    port: int = field(default_factory=free_port)
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    _client_secrets: dict[str, str] = field(init=False, repr=False)
    _dex: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _etcd: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._client_secrets = {client: secrets.token_urlsafe(24) for client in self.clients}

    @property
    def issuer(self) -> str:
        """The issuer URL, as tokens name it in `iss`."""
        return f"https://127.0.0.1:{self.port}/dex"

    @property
    def ca_file(self) -> Path:
        """The CA that issued the serving certificate (PEM)."""
        return self.workdir / "ca.crt"

    @property
    def log_file(self) -> Path:
        """Dex's output, kept across restarts."""
        return self.workdir / "dex.log"

    @property
    def etcd_log_file(self) -> Path:
        """The storage's output, kept across restarts."""
        return self.workdir / "etcd.log"

    def running(self) -> bool:
        """Whether the Dex process is alive."""
        return self._dex is not None and self._dex.poll() is None

    def _etcd_running(self) -> bool:
        return self._etcd is not None and self._etcd.poll() is None

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's CA only."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def start(self, timeout: float = 30.0) -> None:
        """Start etcd and Dex, and wait until Dex serves its discovery document."""
        if self.running():
            raise RuntimeError(f"dex already running at {self.issuer}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.ca_file.exists():
            self._write_tls()
        try:
            if not self._etcd_running():
                self._start_etcd(timeout)
            config = self.workdir / "config.json"
            config.write_text(json.dumps(self._config(), indent=2))
            # It holds the client secrets.
            config.chmod(0o600)
            self._dex = spawn_logged(
                [self.tools.required(DEX_BINARY), "serve", str(config)], self.log_file
            )
            wait_until_ready(
                "dex", self._serves_discovery, self.running, self.log_file, timeout, 0.1, _log
            )
        except BaseException:
            self.stop()
            raise

    def _start_etcd(self, timeout: float) -> None:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        args = [
            self.tools.required(ETCD_BINARY),
            "--name=dex",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=dex={peer}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]
        self._etcd = spawn_logged(args, self.etcd_log_file)
        wait_until_ready(
            "dex's etcd",
            lambda: _answers(f"{client}/health", None),
            self._etcd_running,
            self.etcd_log_file,
            timeout,
            0.1,
            _log,
        )

    def _write_tls(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        ca = self_signed_ca(_name("privatellm-test-oidc-ca"), now, VALIDITY)
        serving = issue_certificate(
            ca,
            _name("dex"),
            [ExtendedKeyUsageOID.SERVER_AUTH],
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
            now,
            VALIDITY,
        )
        self.ca_file.write_bytes(ca.cert_pem)
        (self.workdir / "tls.crt").write_bytes(serving.cert_pem)
        key = self.workdir / "tls.key"
        key.write_bytes(serving.key_pem)
        key.chmod(0o600)

    def _config(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "storage": {
                "type": "etcd",
                "config": {"endpoints": [f"http://127.0.0.1:{self.etcd_port}"]},
            },
            "web": {
                "https": f"127.0.0.1:{self.port}",
                "tlsCert": str(self.workdir / "tls.crt"),
                "tlsKey": str(self.workdir / "tls.key"),
            },
            "expiry": {"idTokens": self.id_token_lifetime},
            "oauth2": {"passwordConnector": PASSWORD_CONNECTOR, "skipApprovalScreen": True},
            "enablePasswordDB": True,
            "staticPasswords": [
                {
                    "email": user.email,
                    "username": user.email.partition("@")[0],
                    "userID": user.email,
                    "hash": PASSWORD_BCRYPT,
                    "groups": list(user.groups),
                }
                for user in self.users
            ],
            "staticClients": [
                {"id": client, "name": client, "secret": secret, "redirectURIs": []}
                for client, secret in self._client_secrets.items()
            ],
        }

    def _serves_discovery(self) -> bool:
        return _answers(f"{self.issuer}/.well-known/openid-configuration", self.ssl_context())

    def token(self, email: str, client: str | None = None, password: str = PASSWORD) -> str:
        """An ID token for the user, issued to `client` (the first client by default)."""
        client = client or self.clients[0]
        form = urllib.parse.urlencode(
            {"grant_type": "password", "username": email, "password": password, "scope": SCOPES}
        ).encode()
        basic = base64.b64encode(f"{client}:{self._client_secrets[client]}".encode()).decode()
        request = urllib.request.Request(
            f"{self.issuer}/token",
            data=form,
            headers={
                "Authorization": f"Basic {basic}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.ssl_context()) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise TokenRequestError(
                f"dex refused a token for {email}: HTTP {error.code} {detail}"
            ) from None
        id_token: str = body["id_token"]
        return id_token

    def stop(self, grace: float = 10.0) -> None:
        """Stop Dex, then its etcd. The keys and the CA stay in `workdir` for `start`."""
        dex, self._dex = self._dex, None
        if dex is not None:
            stop_process_group(dex, grace)
            _log(f"stopped {self.issuer}")
        etcd, self._etcd = self._etcd, None
        if etcd is not None:
            stop_process_group(etcd, grace)

    def restart(self) -> None:
        """Stop and start again on the same ports, keys, users and clients."""
        self.stop()
        self.start()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _answers(url: str, context: ssl.SSLContext | None) -> bool:
    """Whether `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=1, context=context) as answer:
            return bool(answer.status == 200)
    except (OSError, ValueError):
        return False
