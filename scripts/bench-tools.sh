#!/usr/bin/env bash
# Installs the system tools the benchmarks drive, from Debian's packages, once.
# Usage: scripts/bench-tools.sh
set -euo pipefail

log() { printf '[bench-tools] %s\n' "$*" >&2; }

if command -v wrk >/dev/null; then
  log "wrk present: $(command -v wrk)"
  exit 0
fi
log "installing wrk"
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq wrk >/dev/null
command -v wrk >/dev/null
