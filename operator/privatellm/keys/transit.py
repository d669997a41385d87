"""A small synchronous client for the Vault HTTP API and its Transit secrets engine.

It works against HashiCorp Vault and OpenBao alike (same API). Two kinds of failure
are kept apart because callers treat them differently: `VaultError` is an answer
from the server (bad request, permission denied, a ciphertext it refuses), and
`VaultUnavailableError` means no usable answer came at all (connection refused,
timeout, sealed server): the gateway fails closed on it instead of serving
plaintext or writing unencrypted records.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        self._token = token
        self.timeout = timeout
        self._ssl_context = ssl_context

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
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.addr}/v1/{path}",
            data=data,
            method=method,
            headers={"X-Vault-Token": self._token, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout, context=self._ssl_context
            ) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            message = _error_message(error.read(), fallback=error.reason)
            error_class = (
                VaultUnavailableError if error.code in UNAVAILABLE_STATUSES else VaultError
            )
            raise error_class(error.code, message, path) from error
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            reason = getattr(error, "reason", error)
            raise VaultUnavailableError(
                None, f"cannot reach {self.addr}: {reason}", path
            ) from error
        if not raw:
            return {}
        decoded: dict[str, Any] = json.loads(raw)
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

    def login(self) -> None:
        """Exchange the ServiceAccount token for a Vault token."""
        anonymous = VaultClient(self.addr, "", timeout=self.timeout, ssl_context=self._ssl_context)
        body = {"role": self.role, "jwt": self.jwt_file.read_text().strip()}
        auth = anonymous.request("POST", f"auth/{self.mount}/login", body)["auth"]
        self._token = str(auth["client_token"])
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
        return "/".join([self.mount, *(urllib.parse.quote(p, safe="") for p in parts)])

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


def _context(context: bytes | None) -> dict[str, str]:
    return {} if context is None else {"context": base64.b64encode(context).decode()}
