#!/usr/bin/env bash
# Builds the privatellm image from the Containerfile on a machine without a Docker
# daemon and without a registry, and writes it as an OCI layout with a CycloneDX SBOM.
# Usage: scripts/image.sh [build|tools|clean]
#   build  (default) build the image, write build/image/, print its size and build time
#   tools  install what the image tests need to run the image (runc, umoci)
#   clean  remove the cached bases, the build storage and build/image
#
# The Containerfile's bases (debian:bookworm-slim and distroless python3-debian12) come
# from a registry; here they are made from Debian's packages with mmdebstrap instead
# and kept in ~/.cache/privatellm/image (PRIVATELLM_IMAGE_CACHE moves it), remade when
# older than BASE_MAX_AGE_DAYS so that security updates arrive. Debian's buildah,
# mmdebstrap, runc and umoci are installed with apt-get when missing; syft, which
# writes the SBOM, is built once from the Go module proxy.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/image.sh"
CACHE="${PRIVATELLM_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/privatellm/image}"
OUT="${PRIVATELLM_IMAGE_OUT:-$ROOT/build/image}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org}"
BASE_MAX_AGE_DAYS="${BASE_MAX_AGE_DAYS:-7}"
SYFT_VERSION="${SYFT_VERSION:-v1.57.2}"
SOURCES=(
  "deb $MIRROR/debian $SUITE main"
  "deb $MIRROR/debian $SUITE-updates main"
  "deb $MIRROR/debian-security $SUITE-security main"
)
# What distroless python3-debian12 holds: Python 3.11 and what it links to, time zones,
# CA certificates, /etc/services. apt adds the dependencies.
RUNTIME_PACKAGES="base-files,netbase,tzdata,ca-certificates,python3.11"
# Dependencies that only install or configure packages, which the runtime never does.
INSTALL_ONLY_PACKAGES="dpkg debconf tar mawk"
BUILD_BASE="localhost/privatellm-base/debian-build:$SUITE"
RUNTIME_BASE="localhost/privatellm-base/python3.11:$SUITE"
BUILD_CACHE="localhost/privatellm-build:cache"
# Private storage: the layer cache that makes warm builds fast, apart from anyone else's.
RUNROOT="/run/privatellm-image"
STORAGE_DRIVER="${PRIVATELLM_IMAGE_STORAGE_DRIVER:-$(
  grep -qw overlay /proc/filesystems && echo overlay || echo vfs
)}"

log() { printf '[image] %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

# TMPDIR holds the build's cache mounts (pip's and cargo's downloads) beside the rest.
in_storage() {
  mkdir -p "$CACHE/tmp"
  TMPDIR="$CACHE/tmp" buildah --root "$CACHE/storage" --runroot "$RUNROOT" \
    --storage-driver "$STORAGE_DRIVER" "$@"
}

# install_missing COMMAND:PACKAGE...: apt-get install the packages whose command is missing.
install_missing() {
  local missing=() pair
  for pair in "$@"; do command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}"); done
  [[ ${#missing[@]} -eq 0 ]] && return
  [[ $EUID -eq 0 ]] || die "needs root to install ${missing[*]} with apt-get"
  log "installing ${missing[*]} from Debian's packages"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# image_value KEY VALUES: the key's value in the top-level image: block of values.yaml.
image_value() {
  awk -v key="$1" '/^image:/ { block = 1; next } /^[^ #]/ { block = 0 }
    block && $1 == key ":" { print $2; exit }' "$2"
}

# The image's name: the chart's default image, whose tag is the chart's appVersion,
# which must be the package's version that `privatellm --version` reports.
read_names() {
  local chart="$ROOT/charts/privatellm" values_tag
  REPOSITORY="$(image_value repository "$chart/values.yaml")"
  values_tag="$(image_value tag "$chart/values.yaml")"
  TAG="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$chart/Chart.yaml")"
  VERSION="$(python3 -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")"
  [[ -n "$REPOSITORY" && -n "$TAG" ]] || die "no image.repository or appVersion in $chart"
  [[ "$TAG" == "$VERSION" ]] ||
    die "Chart appVersion $TAG differs from pyproject.toml's version $VERSION"
  [[ "$values_tag" == '""' || "$values_tag" == "$TAG" ]] ||
    die "values.yaml image.tag $values_tag differs from appVersion $TAG"
  IMAGE="$REPOSITORY:$TAG"
}

fresh() { [[ -s "$1" && -z "$(find "$1" -mmin "+$((BASE_MAX_AGE_DAYS * 1440))")" ]]; }

# The build stage's base, like debian:bookworm-slim: minbase without documentation.
make_build_base() {
  local tar="$CACHE/bases/$SUITE-build.tar"
  fresh "$tar" && return
  log "build base: Debian $SUITE minbase (mmdebstrap)"
  mkdir -p "$CACHE/bases"
  mmdebstrap --quiet --variant=minbase --format=tar \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    "$SUITE" "$tar.partial" "${SOURCES[@]}"
  mv "$tar.partial" "$tar"
}

# The runtime's base, like distroless python3-debian12: the packages are extracted, not
# installed, so no maintainer script needs a shell and none ends up in the image.
make_runtime_base() {
  local tar="$CACHE/bases/$SUITE-python3.11.tar"
  fresh "$tar" && return
  log "runtime base: Python 3.11 from Debian $SUITE, extracted (mmdebstrap)"
  mkdir -p "$CACHE/bases"
  # The hook removes apt's and mmdebstrap's own files itself, after reading the packages.
  mmdebstrap --quiet --variant=extract --format=tar --include="$RUNTIME_PACKAGES" \
    --skip=cleanup/apt,cleanup/mmdebstrap --extract-hook="\"$SELF\" runtime-base-hook \"\$1\"" \
    "$SUITE" "$tar.partial" "${SOURCES[@]}"
  mv "$tar.partial" "$tar"
}

# Called by mmdebstrap with the extracted tree: does what the packages' maintainer
# scripts would have done, as far as the runtime needs it.
runtime_base_hook() {
  local root="$1" deb package
  mkdir -p "$root/var/lib/dpkg/status.d"
  for deb in "$root"/var/cache/apt/archives/*.deb; do
    package="$(dpkg-deb --field "$deb" Package)"
    if [[ " $INSTALL_ONLY_PACKAGES " == *" $package "* ]]; then
      dpkg-deb --fsys-tarfile "$deb" | tar -t | grep -v '/$' | while read -r path; do
        rm -f "$root/${path#./}"
      done
    else
      # One file per package, as distroless records them, for SBOM tools and scanners.
      dpkg-deb --field "$deb" >"$root/var/lib/dpkg/status.d/$package"
    fi
  done
  # ca-certificates' maintainer script would have made the bundle.
  mkdir -p "$root/etc/ssl/certs" "$root/usr/lib/ssl"
  cat "$root"/usr/share/ca-certificates/*/*.crt >"$root/etc/ssl/certs/ca-certificates.crt"
  ln -sfn /etc/ssl/certs/ca-certificates.crt "$root/usr/lib/ssl/cert.pem"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' 'nonroot:x:65532:' >"$root/etc/group"
  install -d -m 0700 "$root/root"
  install -d -m 0700 -o 65532 -g 65532 "$root/home/nonroot"
  install -d -m 1777 "$root/tmp"
  # What mmdebstrap set up to fetch the packages, and the host's name and resolver.
  rm -rf "$root/etc/apt" "$root/var/lib/apt" "$root/var/cache/apt" \
    "$root/etc/hostname" "$root/etc/resolv.conf"
  # Licences stay; the rest of the documentation is of no use without a shell.
  find "$root/usr/share/doc" -type f ! -name copyright -delete
  find "$root/usr/share/doc" -depth -type d -empty -delete
  rm -rf "$root/usr/share/man" "$root/usr/share/info" "$root/usr/share/locale" \
    "$root/usr/share/lintian"
  # The standard library's bytecode, which Python could not write on a read-only root.
  chroot "$root" /usr/bin/python3.11 -m compileall -q -j 0 /usr/lib/python3.11 >/dev/null
}

# import_base TAR IMAGE CONFIG...: commit the tarball as a local image, once per tarball,
# so that the layer cache of the build stays valid until a base is remade.
import_base() {
  local tar="$1" image="$2" container
  shift 2
  if [[ "$tar.imported" -nt "$tar" ]] &&
    in_storage inspect --type image "$image" >/dev/null 2>&1; then
    return
  fi
  log "importing $(basename "$tar") as $image"
  container="$(in_storage from --pull=never scratch)"
  in_storage add --quiet "$container" "$tar" / >/dev/null
  in_storage config "$@" "$container"
  in_storage commit --quiet --rm "$container" "$image" >/dev/null
  touch "$tar.imported"
}

syft_bin() {
  local dir="$CACHE/tools/syft-$SYFT_VERSION"
  if [[ ! -x "$dir/syft" ]]; then
    command -v go >/dev/null || die "go is needed to build syft (the SBOM tool)"
    log "syft $SYFT_VERSION: building from the Go module proxy (once)"
    GOFLAGS=-buildvcs=false CGO_ENABLED=0 GOBIN="$dir" go install -trimpath \
      -ldflags "-s -w -X main.version=${SYFT_VERSION#v}" \
      "github.com/anchore/syft/cmd/syft@$SYFT_VERSION"
  fi
  echo "$dir/syft"
}

build() {
  local start=$SECONDS volumes=() syft
  [[ $EUID -eq 0 ]] || die "run as root: mmdebstrap and buildah build root file systems"
  install_missing buildah:buildah mmdebstrap:mmdebstrap
  read_names
  syft="$(syft_bin)"
  make_build_base
  make_runtime_base
  # Working containers left by an interrupted run; the storage is this script's alone.
  in_storage rm --all >/dev/null
  local path=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  import_base "$CACHE/bases/$SUITE-build.tar" "$BUILD_BASE" --env "$path" --cmd /bin/bash
  import_base "$CACHE/bases/$SUITE-python3.11.tar" "$RUNTIME_BASE" --env "$path" \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt --user 65532:65532 \
    --workingdir /home/nonroot --entrypoint '["/usr/bin/python3.11"]'
  # Certificates the host trusts beyond Debian's (a TLS-inspecting proxy, say) are lent
  # to the build stage, whose ca-certificates takes them in; the runtime never sees them.
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    volumes=(--volume /usr/local/share/ca-certificates:/usr/local/share/ca-certificates:ro)
  fi
  log "building $IMAGE ($STORAGE_DRIVER storage in $CACHE/storage, log in $CACHE/build.log)"
  local bud=(bud --isolation chroot --layers --pull=never --build-arg "BUILD_BASE=$BUILD_BASE"
    --build-arg "BASE=$RUNTIME_BASE" --build-arg "VERSION=$TAG" "${volumes[@]}"
    --file "$ROOT/Containerfile")
  # The build stage is tagged too, so that pruning what no tag holds keeps its layers,
  # the cache of the next build, and drops those of earlier builds.
  local build_log="$CACHE/build.log"
  if ! in_storage "${bud[@]}" --target build --tag "$BUILD_CACHE" "$ROOT" >"$build_log" 2>&1 ||
    ! in_storage "${bud[@]}" --tag "$IMAGE" "$ROOT" >>"$build_log" 2>&1; then
    tail -n 30 "$build_log" >&2
    die "build failed; the whole log is $build_log"
  fi
  in_storage rmi --prune >/dev/null
  # build/ is output only: keep it out of version control without touching .gitignore.
  mkdir -p "$OUT"
  [[ -f "$OUT/../.gitignore" ]] || echo '*' >"$OUT/../.gitignore"
  local layout="$OUT/oci" sbom="$OUT/privatellm-$TAG.cdx.json"
  rm -rf "$layout" "$sbom"
  in_storage push --quiet "$IMAGE" "oci:$layout:$TAG"
  # Packages only: the files they own would add hundreds of entries and nothing to audit.
  SYFT_CHECK_FOR_APP_UPDATE=false SYFT_FILE_METADATA_SELECTION=none "$syft" scan --quiet \
    --source-name "$REPOSITORY" --source-version "$TAG" -o "cyclonedx-json=$sbom" "oci-dir:$layout"
  local compressed
  compressed="$(du -sb "$layout/blobs" | cut -f1)"
  echo "image   $IMAGE"
  echo "layout  $layout (ref $TAG): $((compressed / 1048576)) MiB compressed," \
    "$(in_storage images --format '{{.Size}}' "$IMAGE") unpacked"
  echo "sbom    $sbom (CycloneDX, syft $SYFT_VERSION): $(sbom_summary "$sbom")"
  echo "took    $((SECONDS - start)) s"
}

sbom_summary() {
  python3 - "$1" <<'PY'
import collections, json, sys
components = json.load(open(sys.argv[1]))["components"]
kinds = collections.Counter(c.get("purl", "").partition("/")[0] for c in components)
print(f"{kinds['pkg:pypi']} Python packages, {kinds['pkg:deb']} Debian packages")
PY
}

clean() {
  if [[ -d "$CACHE/storage" ]]; then
    in_storage rm --all >/dev/null 2>&1 || true
    in_storage rmi --all --force >/dev/null 2>&1 || true
  fi
  rm -rf "$CACHE/storage" "$CACHE/tmp" "$CACHE/bases" "$CACHE/build.log" "$RUNROOT" "$OUT"
  log "removed the bases, the build storage and $OUT (syft stays in $CACHE/tools)"
}

case "${1:-build}" in
  build) build ;;
  tools) install_missing runc:runc umoci:umoci ;;
  clean) clean ;;
  runtime-base-hook) runtime_base_hook "$2" ;;
  *) die "usage: scripts/image.sh [build|tools|clean]" ;;
esac
