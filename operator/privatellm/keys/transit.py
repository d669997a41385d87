"""A small synchronous client for the Vault HTTP API and its Transit secrets engine.

It works against HashiCorp Vault and OpenBao alike (same API). Requests go through
hvac's raw adapter (a requests session: connection reuse, the token header); this
module keeps its own error kinds and the Transit paths. Two kinds of failure are
kept apart because callers treat them differently: `VaultError` is an answer from
the server (bad request, permission denied, a ciphertext it refuses), and
`VaultUnavailableError` means no usable answer came at all (connection refused,
timeout, sealed server): the gateway fails closed on it instead of serving
plaintext or writing unencrypted records.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac.adapters
import requests
import requests.adapters

# 502/503/504 come from a sealed server, a standby without an active node, or a
# proxy in front of it: Vault is not usable, the request was not judged.
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})
DATA_KEY_BITS = 256


class VaultError(Exception):
    """The Vault server answered with an error."""

    def __init__(self, status: int | None, message: str, path: str = "") -> None:
        self.status = status
        self.message = message
        self.path = path
        where = f" ({path})" if path else ""
        code = f" HTTP {status}" if status is not None else ""
        super().__init__(f"Vault{code}{where}: {message}")


class VaultUnavailableError(VaultError):
    """Vault could not be reached or cannot serve requests (sealed, no leader, timeout)."""


class _ContextTLSAdapter(requests.adapters.HTTPAdapter):
    """Verifies Vault's certificate with one SSLContext and nothing else.

    Without it requests would trust its bundled CA file instead of the system's
    store (and SSL_CERT_FILE), which is what the default context holds.
    """

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._ssl_context = ssl_context
        super().__init__()

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        pool_kwargs["ssl_context"] = self._ssl_context
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        proxy_kwargs["ssl_context"] = self._ssl_context
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)
        # requests names its own CA bundle here, which would be added to the context.
        conn.ca_certs = conn.ca_cert_dir = None


class VaultClient:
    """An authenticated connection to one Vault server: JSON requests under /v1/."""

    def __init__(
        self,
        addr: str,
        token: str,
        *,
        timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.addr = addr.rstrip("/")
        self.timeout = timeout
        # requests' adapters make one attempt per request (no retries): a caller waits
        # at most `timeout` per connect or read before it fails closed.
        self._session = requests.Session()
        if ssl_context is not None or self.addr.lower().startswith("https://"):
            context = ssl_context or ssl.create_default_context()
            self._session.mount("https://", _ContextTLSAdapter(context))
        self._adapter = self._raw_adapter(token)

    def _raw_adapter(self, token: str) -> hvac.adapters.RawAdapter:
        """hvac's adapter on this client's session; an empty token sends none."""
        return hvac.adapters.RawAdapter(
            base_uri=self.addr, token=token, timeout=self.timeout, session=self._session
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> VaultClient:
        """Address and token from BAO_ADDR/BAO_TOKEN, else VAULT_ADDR/VAULT_TOKEN."""
        env = os.environ if environ is None else environ
        addr = env.get("BAO_ADDR") or env.get("VAULT_ADDR")
        token = env.get("BAO_TOKEN") or env.get("VAULT_TOKEN")
        if not addr or not token:
            raise ValueError("set BAO_ADDR and BAO_TOKEN (or VAULT_ADDR and VAULT_TOKEN)")
        return cls(addr, token)

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Send one request to /v1/<path>; return the decoded JSON body ({} when empty)."""
        return self._send(self._adapter, method, path, body)

    def _send(
        self,
        adapter: hvac.adapters.RawAdapter,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        try:
            # The status is judged here: hvac's exceptions do not carry it, and 504
            # would arrive as an "unexpected" error indistinguishable from a 405.
            response: requests.Response = adapter.request(
                method,
                f"v1/{path}",
                json=None if body is None else dict(body),
                raise_exception=False,
            )
        except OSError as error:  # requests' exceptions are OSErrors too
            raise VaultUnavailableError(
                None, f"cannot reach {self.addr}: {_failure_reason(error)}", path
            ) from error
        status, raw = response.status_code, response.content
        if not 200 <= status < 300:
            message = _error_message(raw, fallback=response.reason or f"HTTP {status}")
            error_class = VaultUnavailableError if status in UNAVAILABLE_STATUSES else VaultError
            raise error_class(status, message, path)
        if not raw:
            return {}
        try:
            decoded: dict[str, Any] = json.loads(raw)
        except ValueError as error:
            # A proxy's page, not Vault's answer: nothing usable came back.
            raise VaultUnavailableError(status, "the answer is not JSON", path) from error
        return decoded

    def lookup_self(self) -> dict[str, Any]:
        """Who this token is: display name, policies, entity id (Vault's token lookup)."""
        data: dict[str, Any] = self.request("GET", "auth/token/lookup-self")["data"]
        return data


# Where Kubernetes mounts a Pod's ServiceAccount token.
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class KubernetesAuthVaultClient(VaultClient):
    """A Vault client that logs in as a Kubernetes ServiceAccount, and again before expiry.

    The token file is read at every login, so a projected token that the kubelet
    rotates is picked up. The Vault token is replaced at half its lease.
    """

    def __init__(
        self,
        addr: str,
        role: str,
        jwt_file: Path,
        *,
        mount: str = "kubernetes",
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(addr, "", timeout=timeout, ssl_context=ssl_context)
        self.role = role
        self.jwt_file = jwt_file
        self.mount = mount
        self._clock = clock
        self._renew_at = 0.0
        # Logins go out without the expired token; the session is shared.
        self._login_adapter = self._raw_adapter("")

    def login(self) -> None:
        """Exchange the ServiceAccount token for a Vault token."""
        body = {"role": self.role, "jwt": self.jwt_file.read_text().strip()}
        path = f"auth/{self.mount}/login"
        auth = self._send(self._login_adapter, "POST", path, body)["auth"]
        self._adapter.token = str(auth["client_token"])
        self._renew_at = self._clock() + float(auth.get("lease_duration") or 0) / 2

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        if self._clock() >= self._renew_at:
            self.login()
        return super().request(method, path, body)


def vault_client_from_env(environ: Mapping[str, str] | None = None) -> VaultClient | None:
    """The operator's Vault client, or None when no Vault is configured.

    With PRIVATELLM_VAULT_ROLE it logs in through Kubernetes auth with the ServiceAccount
    token (PRIVATELLM_VAULT_JWT_FILE, default the Pod's own); else it uses BAO_TOKEN or
    VAULT_TOKEN.
    """
    env = os.environ if environ is None else environ
    addr = env.get("BAO_ADDR") or env.get("VAULT_ADDR")
    role = env.get("PRIVATELLM_VAULT_ROLE")
    if addr and role:
        jwt_file = Path(env.get("PRIVATELLM_VAULT_JWT_FILE") or SERVICE_ACCOUNT_TOKEN)
        return KubernetesAuthVaultClient(addr, role, jwt_file)
    try:
        return VaultClient.from_env(env)
    except ValueError:
        return None


def _failure_reason(error: OSError) -> object:
    """What went wrong on the wire: refused, timed out, certificate not trusted."""
    # requests wraps urllib3's MaxRetryError ("Max retries exceeded", though none
    # are made) around the actual cause.
    wrapped = error.args[0] if error.args else None
    return getattr(wrapped, "reason", None) or error


def _error_message(raw: bytes, fallback: str) -> str:
    """Vault's `errors` list as one line; the raw body when it is not Vault's JSON."""
    try:
        errors = json.loads(raw).get("errors") or []
    except (ValueError, AttributeError):
        return raw.decode(errors="replace").strip() or fallback
    lines = [" ".join(str(e).split()) for e in errors]
    return "; ".join(line for line in lines if line) or fallback


@dataclass(frozen=True)
class TransitKey:
    """What Transit reports about one named key."""

    name: str
    type: str
    latest_version: int
    min_decryption_version: int
    min_encryption_version: int
    auto_rotate_period_seconds: int
    derived: bool
    versions: tuple[int, ...]


class TransitClient:
    """Transit operations on a secrets engine mounted at `mount` (default `transit/`)."""

    def __init__(self, vault: VaultClient, mount: str = "transit") -> None:
        self.vault = vault
        self.mount = mount.strip("/")

    def _path(self, *parts: str) -> str:
        # Key names come from resource names; quoting keeps a name like "../sys"
        # from addressing anything outside this mount.
        return "/".join([self.mount, *(_segment(p) for p in parts)])

    def create_key(
        self, name: str, auto_rotate_period: int | None = None, *, derived: bool = False
    ) -> None:
        """Create an aes256-gcm96 key; with `auto_rotate_period` (seconds) Vault rotates it.

        With `derived`, every data key operation must name the same derivation context.
        Creating a key that exists changes nothing.
        """
        body: dict[str, Any] = {"type": "aes256-gcm96", "derived": derived}
        if auto_rotate_period is not None:
            body["auto_rotate_period"] = f"{auto_rotate_period}s"
        self.vault.request("POST", self._path("keys", name), body)

    def read_key(self, name: str) -> TransitKey:
        """The key's versions and policy."""
        data = self.vault.request("GET", self._path("keys", name))["data"]
        return TransitKey(
            name=data["name"],
            type=data["type"],
            latest_version=int(data["latest_version"]),
            min_decryption_version=int(data["min_decryption_version"]),
            min_encryption_version=int(data["min_encryption_version"]),
            auto_rotate_period_seconds=int(data.get("auto_rotate_period") or 0),
            derived=bool(data.get("derived")),
            versions=tuple(sorted(int(v) for v in data["keys"])),
        )

    def rotate(self, name: str) -> None:
        """Add a new key version; new data keys are wrapped with it from now on."""
        self.vault.request("POST", self._path("keys", name, "rotate"), {})

    def datakey(self, name: str, context: bytes | None = None) -> tuple[bytes, str]:
        """A fresh 256-bit data key: (plaintext bytes, wrapped ciphertext like `vault:v3:...`)."""
        body: dict[str, Any] = {"bits": DATA_KEY_BITS, **_context(context)}
        data = self.vault.request("POST", self._path("datakey", "plaintext", name), body)["data"]
        return base64.b64decode(data["plaintext"]), str(data["ciphertext"])

    def decrypt_datakey(self, name: str, wrapped: str, context: bytes | None = None) -> bytes:
        """Unwrap a data key that `datakey` (or `rewrap`) returned."""
        body = {"ciphertext": wrapped, **_context(context)}
        data = self.vault.request("POST", self._path("decrypt", name), body)["data"]
        return base64.b64decode(data["plaintext"])

    def rewrap(self, name: str, wrapped: str, context: bytes | None = None) -> str:
        """The same data key wrapped with the key's latest version; Vault never reveals it."""
        body = {"ciphertext": wrapped, **_context(context)}
        data = self.vault.request("POST", self._path("rewrap", name), body)["data"]
        return str(data["ciphertext"])

    def set_auto_rotate_period(self, name: str, seconds: int) -> None:
        """Let Vault rotate the key every `seconds` (0: never)."""
        body = {"auto_rotate_period": f"{seconds}s"}
        self.vault.request("POST", self._path("keys", name, "config"), body)

    def delete_key(self, name: str) -> None:
        """Delete the key and every version of it: what it wrapped can never be unwrapped."""
        self.vault.request("POST", self._path("keys", name, "config"), {"deletion_allowed": True})
        self.vault.request("DELETE", self._path("keys", name))

    def set_min_decryption_version(self, name: str, version: int) -> None:
        """Refuse to unwrap anything wrapped with a version below `version`."""
        body = {"min_decryption_version": version}
        self.vault.request("POST", self._path("keys", name, "config"), body)


def _segment(part: str) -> str:
    """One path segment, escaped so that it stays one segment."""
    quoted = urllib.parse.quote(part, safe="")
    # requests resolves a bare "." or ".." into the parent path before it sends; escaped,
    # the segment reaches the server as written.
    return quoted.replace(".", "%2E") if quoted in {".", ".."} else quoted


def _context(context: bytes | None) -> dict[str, str]:
    return {} if context is None else {"context": base64.b64encode(context).decode()}
