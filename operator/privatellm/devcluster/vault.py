"""A real Vault-API server in dev mode, for tests: Transit keys and Kubernetes auth.

The server is the `vault` binary that `scripts/testenv.sh` builds (HashiCorp Vault;
OpenBao speaks the same API but its module is not served by the module proxy
here). Dev mode keeps everything in memory, unsealed, with a root token we choose:
a restart loses every mount, key and policy, which is what a test wants when it
simulates "Vault comes back empty", and why `start` mounts Transit again.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from privatellm.keys.transit import VaultClient, VaultError

from .cluster import Toolchain, free_port, spawn_logged, stop_process_group, wait_until_ready

VAULT_BINARY = "vault"


def _log(message: str) -> None:
    print(f"[vault] {message}", file=sys.stderr, flush=True)


def enable_transit(client: VaultClient, mount: str = "transit") -> None:
    """Mount the Transit secrets engine at `mount/` unless something is mounted there."""
    mounts = client.request("GET", "sys/mounts")
    if f"{mount}/" not in mounts.get("data", {}):
        client.request("POST", f"sys/mounts/{mount}", {"type": "transit"})


@dataclass
class DevVault:
    """One `vault server -dev` child process on a free loopback port."""

    workdir: Path
    tools: Toolchain
    root_token: str = field(default_factory=lambda: secrets.token_hex(16))
    port: int = field(default_factory=free_port)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def addr(self) -> str:
        """The server's URL, for VAULT_ADDR."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        """The server's output, kept across restarts."""
        return self.workdir / "vault.log"

    def binary(self) -> str:
        """The server binary; ToolchainMissingError when the test environment lacks it."""
        return self.tools.required(VAULT_BINARY)

    def client(self) -> VaultClient:
        """A client holding the root token."""
        return VaultClient(self.addr, self.root_token)

    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server, wait until it is unsealed and active, and mount Transit."""
        if self.running():
            raise RuntimeError(f"vault already running at {self.addr}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary(),
            "server",
            "-dev",
            f"-dev-root-token-id={self.root_token}",
            f"-dev-listen-address=127.0.0.1:{self.port}",
            # Dev mode would otherwise write the root token to ~/.vault-token.
            "-dev-no-store-token",
        ]
        self._process = spawn_logged(args, self.log_file)
        try:
            wait_until_ready("vault", self._active, self.running, self.log_file, timeout, 0.1, _log)
            enable_transit(self.client())
        except BaseException:
            self.stop()
            raise

    def _active(self) -> bool:
        try:
            self.client().request("GET", "sys/health")
        except VaultError:
            return False
        return True

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `grace` seconds). All state is lost."""
        process, self._process = self._process, None
        if process is None:
            return
        stop_process_group(process, grace)
        _log(f"stopped {self.addr}")

    def restart(self) -> None:
        """Stop and start again on the same port and token: an empty server with Transit."""
        self.stop()
        self.start()

    def enable_kubernetes_auth(
        self,
        kubernetes_host: str,
        kubernetes_ca_cert: str,
        token_reviewer_jwt: str | None = None,
    ) -> None:
        """Mount Kubernetes auth at `auth/kubernetes/`, validating tokens against that API server.

        With `token_reviewer_jwt`, Vault calls the TokenReview API with that token;
        without it, with the token being checked, whose ServiceAccount then needs
        `system:auth-delegator`. The local-pod token and CA are never used: this
        server runs outside the cluster.
        """
        client = self.client()
        if "kubernetes/" not in client.request("GET", "sys/auth").get("data", {}):
            client.request("POST", "sys/auth/kubernetes", {"type": "kubernetes"})
        config = {
            "kubernetes_host": kubernetes_host,
            "kubernetes_ca_cert": kubernetes_ca_cert,
            "disable_local_ca_jwt": True,
        }
        if token_reviewer_jwt is not None:
            config["token_reviewer_jwt"] = token_reviewer_jwt
        client.request("POST", "auth/kubernetes/config", config)
