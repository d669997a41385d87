"""A real S3 server with Object Lock, for tests: Versity's S3 gateway on a local folder.

The server is the `versitygw` binary that `scripts/testenv.sh` builds. Its posix
backend keeps each bucket as a folder and each object as a file under
`workdir/data`, and older object versions under `workdir/versions` (Object Lock
needs versioning). State survives `stop`/`start`, so a test can take the server
away and bring the same bucket back. The lock is enforced by the S3 API only:
whoever can write the folders can change anything, as with any local disk.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from privatellm.audit.s3 import S3Client

from .cluster import Toolchain, free_port, spawn_logged, stop_process_group, wait_until_ready

VERSITYGW_BINARY = "versitygw"


def _log(message: str) -> None:
    print(f"[s3] {message}", file=sys.stderr, flush=True)


@dataclass
class DevS3:
    """One `versitygw posix` child process on a free loopback port, single account."""

    workdir: Path
    tools: Toolchain
    access_key: str = field(default_factory=lambda: "dev" + secrets.token_hex(8))
    secret_key: str = field(default_factory=lambda: secrets.token_hex(20))
    region: str = "us-east-1"
    port: int = field(default_factory=free_port)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        """The server's URL, for AWS_ENDPOINT_URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        """The server's output, kept across restarts."""
        return self.workdir / "versitygw.log"

    def binary(self) -> str:
        """The server binary; ToolchainMissingError when the test environment lacks it."""
        return self.tools.required(VERSITYGW_BINARY)

    def client(self, *, timeout: float = 10.0, max_attempts: int = 3) -> S3Client:
        """A client holding the root account's keys."""
        return S3Client(
            self.endpoint,
            region=self.region,
            access_key=self.access_key,
            secret_key=self.secret_key,
            timeout=timeout,
            max_attempts=max_attempts,
        )

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it answers S3 requests."""
        if self.running():
            raise RuntimeError(f"versitygw already running at {self.endpoint}")
        data, versions = self.workdir / "data", self.workdir / "versions"
        data.mkdir(parents=True, exist_ok=True)
        versions.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary(),
            "--port",
            f"127.0.0.1:{self.port}",
            "--region",
            self.region,
            "posix",
            "--versioning-dir",
            str(versions),
            str(data),
        ]
        # Keys through the environment, not the command line that `ps` shows.
        env = {
            **os.environ,
            "ROOT_ACCESS_KEY_ID": self.access_key,
            "ROOT_SECRET_ACCESS_KEY": self.secret_key,
        }
        self._process = spawn_logged(args, self.log_file, env)
        try:
            wait_until_ready(
                "versitygw", self._answers, self.running, self.log_file, timeout, 0.05, _log
            )
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint, timeout=1).close()
        except urllib.error.HTTPError:
            return True  # an anonymous request is refused: the server is up
        except OSError:
            return False
        return True

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `grace` seconds). Its files stay."""
        process, self._process = self._process, None
        if process is None:
            return
        stop_process_group(process, grace)
        _log(f"stopped {self.endpoint}")

    def restart(self) -> None:
        """Stop and start again on the same port, keys and folders."""
        self.stop()
        self.start()
