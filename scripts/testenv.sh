#!/usr/bin/env bash
# Builds the binaries of the local test control plane from the Go module proxy,
# once, into a cache outside the repository keyed by component and version.
# Usage: scripts/testenv.sh [build|path]
#   build  build whatever is missing (default)
#   path   print the bin directory holding every binary
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# The Vault-API server for Transit keys. OpenBao is not served by the module proxy
# here (neither github.com/openbao/openbao/v2@v2.7.1 nor a pre-/v2 release
# pseudo-version), so this is HashiCorp Vault, whose dev mode, Transit and
# Kubernetes auth speak the same API. Vault >= 1.15 is BUSL-1.1: it is built here
# only to test against and is never shipped. A .0 release on purpose: its api and
# sdk submodules were tagged with it, while later patch releases carry backports
# in their own tree that no published sdk version has (v1.21.4 does not compile
# against sdk v0.21.0).
VAULT_VERSION="${VAULT_VERSION:-v1.21.0}"
# The S3 server for the audit log's WORM copy: Versity's gateway (Apache-2.0) speaks
# the real S3 API, Object Lock in compliance mode included, keeps objects as plain
# files, and builds from the module proxy with a plain `go install` (no replaces).
VERSITYGW_VERSION="${VERSITYGW_VERSION:-v1.8.0}"
# The OpenID provider of the OIDC tests: Dex (Apache-2.0), whose local user database
# holds users with groups and answers the password grant, so tests get tokens without
# a browser. Dex's module path lacks the /v2 its tags would need, so the module proxy
# has its releases only as pseudo-versions: this one is the commit tagged v2.45.1.
DEX_VERSION="${DEX_VERSION:-v0.0.0-20260303133905-11d2eeb52b42}"
# The NetworkPolicy analyzer of the policy tests: cyclonus (MIT), whose
# `analyze --mode query-traffic` judges connections against policies offline, with no
# cluster and no CNI. It builds from the module proxy with a plain `go install`.
CYCLONUS_VERSION="${CYCLONUS_VERSION:-v0.5.6}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${PRIVATELLM_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/privatellm/testenv}"
BIN="$CACHE/bin"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0

log() { printf '[testenv] %s\n' "$*" >&2; }

# stamp NAME VERSION: true when NAME was already built at VERSION
stamped() { [[ -x "$BIN/$1" && "$(cat "$BIN/.$1.version" 2>/dev/null)" == "$2" ]]; }
stamp() { echo "$2" >"$BIN/.$1.version"; }

build_kubernetes() {
  local wanted=(kube-apiserver kube-controller-manager kube-scheduler kubectl) missing=() b
  for b in "${wanted[@]}"; do stamped "$b" "$K8S_VERSION" || missing+=("$b"); done
  [[ ${#missing[@]} -eq 0 ]] && { log "kubernetes $K8S_VERSION cached"; return; }
  log "kubernetes $K8S_VERSION: building ${missing[*]} (cold build takes a while)"
  local src="$CACHE/src/kubernetes-$K8S_VERSION" minor="${K8S_VERSION#v1.}"
  minor="${minor%%.*}"
  mkdir -p "$src"
  local modfile
  modfile="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  # k8s.io/kubernetes replaces its staging modules with local folders; a wrapper
  # module points each of them at the matching published v0.<minor>.<patch>.
  {
    echo "module privatellm.local/testenv/kubernetes"
    echo
    echo "go 1.26"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/.*#\1#p' "$modfile" |
      while read -r mod; do echo "	$mod => $mod v0.${K8S_VERSION#v1.}"; done
    echo ")"
  } >"$src/go.mod"
  local ts
  ts="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local ldflags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$ts"
  done
  local pkgs=()
  for b in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  (cd "$src" && go build -trimpath -ldflags "-s -w $ldflags" -o "$BIN/" "${pkgs[@]}")
  for b in "${missing[@]}"; do stamp "$b" "$K8S_VERSION"; done
}

build_etcd() {
  stamped etcd "$ETCD_VERSION" && { log "etcd $ETCD_VERSION cached"; return; }
  log "etcd $ETCD_VERSION: building"
  local src="$CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$src"
  printf 'module privatellm.local/testenv/etcd\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
    "$ETCD_VERSION" >"$src/go.mod"
  (cd "$src" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
  stamp etcd "$ETCD_VERSION"
}

build_kwok() {
  if ! stamped kwok "$KWOK_VERSION"; then
    log "kwok $KWOK_VERSION: building"
    GOFLAGS=-buildvcs=false GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
    stamp kwok "$KWOK_VERSION"
  else
    log "kwok $KWOK_VERSION cached"
  fi
  # kwok ships no default stages any more; keep the upstream ones beside the binary.
  local stages="$CACHE/kwok-stages-$KWOK_VERSION"
  if [[ ! -d "$stages" ]]; then
    local dir
    dir="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
    mkdir -p "$stages"
    cp -r "$dir/kustomize/stage/." "$stages/"
    chmod -R u+w "$stages"
  fi
}

build_helm() {
  stamped helm "$HELM_VERSION" && { log "helm $HELM_VERSION cached"; return; }
  log "helm $HELM_VERSION: building"
  GOFLAGS=-buildvcs=false GOBIN="$BIN" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  stamp helm "$HELM_VERSION"
}

build_vault() {
  stamped vault "$VAULT_VERSION" && { log "vault $VAULT_VERSION cached"; return; }
  log "vault $VAULT_VERSION: building (cold build takes a while)"
  local src="$CACHE/src/vault-$VAULT_VERSION"
  mkdir -p "$src"
  local modfile
  modfile="$(go mod download -json "github.com/hashicorp/vault@$VAULT_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  # Replace directives of a dependency are ignored, so the wrapper restates them:
  # the api/sdk submodules that Vault takes from its own tree are pinned to the
  # versions its go.mod requires (the module proxy serves no commit-pinned
  # versions of them); replacements by other modules are copied as they are.
  {
    echo "module privatellm.local/testenv/vault"
    echo
    echo "go 1.26"
    echo
    echo "require github.com/hashicorp/vault $VAULT_VERSION"
    echo
    echo "replace ("
    go mod edit -json "$modfile" | python3 -c '
import json, sys
mod = json.load(sys.stdin)
required = {r["Path"]: r["Version"] for r in mod["Require"]}
for r in mod.get("Replace") or []:
    old, new = r["Old"], r["New"]
    lhs = " ".join(filter(None, (old["Path"], old.get("Version"))))
    if new["Path"].startswith("./"):
        new = {"Path": old["Path"], "Version": required[old["Path"]]}
    print("\t" + lhs + " => " + new["Path"] + " " + new["Version"])
'
    echo ")"
  } >"$src/go.mod"
  # Without the `ui` build tag Vault leaves its web UI out; the tests need only the API.
  (cd "$src" && go build -trimpath -ldflags "-s -w" -o "$BIN/vault" github.com/hashicorp/vault)
  stamp vault "$VAULT_VERSION"
}

build_versitygw() {
  stamped versitygw "$VERSITYGW_VERSION" && { log "versitygw $VERSITYGW_VERSION cached"; return; }
  log "versitygw $VERSITYGW_VERSION: building"
  GOFLAGS=-buildvcs=false GOBIN="$BIN" go install -trimpath \
    -ldflags "-s -w -X main.Version=$VERSITYGW_VERSION" \
    "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
  stamp versitygw "$VERSITYGW_VERSION"
}

# The project's own kstatus command (tools/kstatus): the health verdict Flux computes, for
# the GitOps tests. Its go.sum pins every module, so the build only reads it; the stamp is
# a digest of the sources, so an edit or a new cli-utils version rebuilds it.
build_kstatus() {
  local src="$ROOT/tools/kstatus" digest
  digest="$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go | sha256sum | cut -c1-16)"
  stamped kstatus "$digest" && { log "kstatus $digest cached"; return; }
  log "kstatus $digest: building"
  (cd "$src" && GOFLAGS="-mod=readonly -buildvcs=false" go build -trimpath -ldflags "-s -w" -o "$BIN/kstatus" .)
  stamp kstatus "$digest"
}

build_dex() {
  stamped dex "$DEX_VERSION" && { log "dex $DEX_VERSION cached"; return; }
  log "dex $DEX_VERSION: building"
  local src="$CACHE/src/dex-$DEX_VERSION"
  mkdir -p "$src"
  # Dex replaces its api/v2 module with its own folder, which `go install` refuses; in a
  # wrapper module that replacement is ignored and the api/v2 release Dex requires is used
  # (v2.45.1's folder holds the same code as that release).
  printf 'module privatellm.local/testenv/dex\n\ngo 1.26\n\nrequire github.com/dexidp/dex %s\n' \
    "$DEX_VERSION" >"$src/go.mod"
  (cd "$src" && go build -trimpath -ldflags "-s -w -X main.version=$DEX_VERSION" -o "$BIN/dex" \
    github.com/dexidp/dex/cmd/dex)
  stamp dex "$DEX_VERSION"
}

build_cyclonus() {
  stamped cyclonus "$CYCLONUS_VERSION" && { log "cyclonus $CYCLONUS_VERSION cached"; return; }
  log "cyclonus $CYCLONUS_VERSION: building"
  GOFLAGS=-buildvcs=false GOBIN="$BIN" go install -trimpath \
    -ldflags "-s -w -X github.com/mattfenwick/cyclonus/pkg/cli.version=$CYCLONUS_VERSION" \
    "github.com/mattfenwick/cyclonus/cmd/cyclonus@$CYCLONUS_VERSION"
  stamp cyclonus "$CYCLONUS_VERSION"
}

main() {
  mkdir -p "$BIN"
  case "${1:-build}" in
    path) echo "$BIN" ;;
    build)
      local start=$SECONDS
      build_etcd
      build_kwok
      build_helm
      build_kubernetes
      build_vault
      build_versitygw
      build_kstatus
      build_dex
      build_cyclonus
      log "ready in $((SECONDS - start))s: $BIN"
      ;;
    *) echo "usage: $0 [build|path]" >&2; exit 2 ;;
  esac
}

main "$@"
