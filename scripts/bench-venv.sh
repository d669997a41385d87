#!/usr/bin/env bash
# Creates the virtual environment of a third-party product a benchmark compares
# against, in .bench/<name>, apart from the project's own .venv so its
# dependencies never mix with ours. Idempotent: a stamp file records what was
# installed, and a second run with the same packages does nothing.
# Usage: scripts/bench-venv.sh <name>
#   litellm  LiteLLM's proxy server (bench_gateway)
#   presidio Presidio's analyzer (bench_filters)
set -euo pipefail

PYTHON="${PYTHON:-python3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '[bench-venv] %s\n' "$*" >&2; }

# venv NAME PACKAGE...: install PACKAGE... into .bench/NAME unless already stamped.
venv() {
  local name="$1"; shift
  local dir="$ROOT/.bench/$name" stamp="$ROOT/.bench/$name/.installed"
  if [[ -x "$dir/bin/python" && "$(cat "$stamp" 2>/dev/null)" == "$*" ]]; then
    log "$name present: $dir"
    return
  fi
  log "$name: installing $* into $dir"
  "$PYTHON" -m venv "$dir"
  "$dir/bin/pip" install --quiet --upgrade pip
  "$dir/bin/pip" install --quiet "$@"
  echo "$*" >"$stamp"
}

case "${1:-}" in
  litellm)
    # A fixed release: the proxy's behaviour and speed change between releases.
    # 1.108.7 is the newest whose [proxy] extra resolves from the package index
    # we use; later ones pin litellm-proxy / litellm-proxy-extras releases it
    # does not serve.
    venv litellm 'litellm[proxy]==1.108.7'
    ;;
  presidio)
    # A fixed release, for the same reason. spaCy comes with it; the benchmark
    # runs a blank pipeline, so no spaCy model is downloaded.
    venv presidio 'presidio-analyzer==2.2.366'
    ;;
  *)
    echo "usage: $0 <litellm|presidio>" >&2
    exit 2
    ;;
esac
