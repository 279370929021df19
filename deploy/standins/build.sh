#!/bin/bash
# Build the images of the compose stack with podman, on a machine without Docker and
# without an image registry (see README "Running the stack here"):
#   standins  local base images and stand-ins for the third-party images, from Debian's
#             packages: debian:bookworm-slim, python:3.11-slim-bookworm, eclipse-mosquitto,
#             influxdb:1.8 (kept while their build files are unchanged);
#   service   the project's Dockerfile, target service, as shipped, on the python stand-in;
#   train     target train, torch from this machine's CPU wheel (TORCH_SOURCE=wheels).
# Usage (root): deploy/standins/build.sh [standins] [service] [train]   (default: all three)
# Env: STACK_DIR (default /var/tmp/sensorcast-stack: containers.conf, lock, scratch),
#      SENSORCAST_VERSION (tag of the project images, default 0.1.0),
#      TORCH_WHEEL (default: the torch 2.13.0 cp311 x86_64 wheel (the version make setup pins) in pip's find-links directories).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STACK_DIR="${STACK_DIR:-/var/tmp/sensorcast-stack}"
VERSION="${SENSORCAST_VERSION:-0.1.0}"
PREFIX=localhost/sensorcast-standin
BASE_IMAGE="$PREFIX/debian:bookworm-slim"
PYTHON_IMAGE="$PREFIX/python:3.11-bookworm"
MOSQUITTO_IMAGE="$PREFIX/mosquitto:bookworm"
INFLUXDB_IMAGE="$PREFIX/influxdb:bookworm"
PACKAGES=(podman runc netavark aardvark-dns iptables debootstrap docker-compose)

log() { echo "build.sh: $*"; }

# Debian's packages for podman, when missing (as root; CI is root).
missing=""
for b in podman runc debootstrap docker-compose iptables; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing="$missing $b"
done
[ -x /usr/lib/podman/netavark ] || missing="$missing netavark"
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        log "missing:$missing; run as root or: apt-get install -y ${PACKAGES[*]}" >&2
        exit 1
    fi
    log "installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
fi

# podman 4.3 here: crun cannot set RLIMIT_NOFILE and refuses cgroups in hybrid mode, so
# runc, and no default ulimits (docs/measured.md, "Containers on this machine").
mkdir -p "$STACK_DIR"
export CONTAINERS_CONF="$STACK_DIR/containers.conf"
printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' >"$CONTAINERS_CONF"
# One build at a time on this machine (podman's storage is shared).
exec 9>"$STACK_DIR/build.lock"
flock 9

# A stand-in is rebuilt when its build files (or its parent) change, or it is missing.
digest() { cat "$@" | sha256sum | cut -c1-16; }
current() { # IMAGE HASH
    [ "$(podman image inspect --format '{{index .Labels "sensorcast.standin.hash"}}' "$1" 2>/dev/null)" = "$2" ]
}
timed() { # NAME COMMAND...: output in $STACK_DIR/logs/, its end shown when it fails
    name="$1"; shift
    out="$STACK_DIR/logs/$(echo "$name" | tr '/:' '__').log"
    mkdir -p "$STACK_DIR/logs"
    t0=$(date +%s)
    if ! "$@" >"$out" 2>&1; then
        tail -n 30 "$out" >&2
        log "building $name failed (whole log: $out)" >&2
        exit 1
    fi
    log "built $name in $(( $(date +%s) - t0 )) s"
}
build_base() {
    rootfs="$STACK_DIR/rootfs"
    rm -rf "$rootfs"
    bash "$HERE/base/rootfs.sh" "$rootfs"
    # Through a file: a failed tar must not leave a half image with a current label.
    tar --numeric-owner -C "$rootfs" -cf "$rootfs.tar" .
    podman import -q --change 'CMD ["bash"]' --change "LABEL sensorcast.standin.hash=$1" \
        "$rootfs.tar" "$BASE_IMAGE"
    rm -rf "$rootfs" "$rootfs.tar"
}
build_standin() { # DIR IMAGE HASH
    podman build --format docker --network=host --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --label "sensorcast.standin.hash=$3" -t "$2" "$HERE/$1"
}
standins() {
    base_hash=$(digest "$HERE/base/rootfs.sh" /etc/ssl/certs/ca-certificates.crt)
    if current "$BASE_IMAGE" "$base_hash"; then log "kept $BASE_IMAGE"; else timed "$BASE_IMAGE" build_base "$base_hash"; fi
    for spec in python:$PYTHON_IMAGE mosquitto:$MOSQUITTO_IMAGE influxdb:$INFLUXDB_IMAGE; do
        dir="${spec%%:*}"; image="${spec#*:}"
        h=$(echo "$base_hash" | cat - "$HERE/$dir"/* | sha256sum | cut -c1-16)
        if current "$image" "$h"; then log "kept $image"; else timed "$image" build_standin "$dir" "$image" "$h"; fi
    done
}
service() { # the Dockerfile as shipped; podman's layer cache keeps unchanged steps
    timed "sensorcast:$VERSION" podman build --format docker --network=host \
        --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" --target service -t "sensorcast:$VERSION" "$REPO"
}
torch_wheel() {
    if [ -n "${TORCH_WHEEL:-}" ]; then echo "$TORCH_WHEEL"; return; fi
    for conf in /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
        [ -f "$conf" ] || continue
        sed -n 's/^[[:space:]]*find-links[[:space:]]*=[[:space:]]*//p' "$conf" | tr ' ' '\n' | sed 's|^file://||'
    done | while read -r dir; do
        ls "$dir"/torch-2.13.0*-cp311-cp311-*x86_64.whl 2>/dev/null || true
    done | sort -V | tail -n 1
}
train() { # torch from a wheel directory inside the build context (deploy/wheels, git-ignored)
    wheel="$(torch_wheel)"
    if [ -z "$wheel" ] || [ ! -f "$wheel" ]; then
        log "no torch wheel found (set TORCH_WHEEL=/path/to/torch-...-cp311-...x86_64.whl)" >&2
        exit 1
    fi
    rm -f "$REPO"/deploy/wheels/torch-*.whl
    ln "$wheel" "$REPO/deploy/wheels/" 2>/dev/null || cp "$wheel" "$REPO/deploy/wheels/"
    log "torch from $wheel"
    timed "sensorcast-train:$VERSION" podman build --format docker --network=host \
        --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" --build-arg TORCH_SOURCE=wheels \
        --target train -t "sensorcast-train:$VERSION" "$REPO"
}

[ $# -gt 0 ] || set -- standins service train
for step in "$@"; do
    case "$step" in
        standins) standins ;;
        service) service ;;
        train) train ;;
        *) log "unknown step $step (standins, service, train)" >&2; exit 2 ;;
    esac
done
echo "PYTHON_IMAGE=$PYTHON_IMAGE"
echo "MOSQUITTO_IMAGE=$MOSQUITTO_IMAGE"
echo "INFLUXDB_IMAGE=$INFLUXDB_IMAGE"
