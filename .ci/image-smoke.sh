#!/usr/bin/env bash
# On demand, not in CI (slow): build the Dockerfile with podman on a daemonless, registry-less Debian
# box (as root) and smoke-test the image: both entry points start, as uid 65532, read-only root.
#   LIFEBOAT_IMAGE_WORK  scratch directory (default: <repo>/.ci-work/image)
#   LIFEBOAT_IMAGE_TAG   image tag (default: localhost/lifeboat:smoke)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${LIFEBOAT_IMAGE_WORK:-$REPO/.ci-work/image}
TAG=${LIFEBOAT_IMAGE_TAG:-localhost/lifeboat:smoke}
# The Dockerfile's FROM; with no registry reachable, a debootstrapped stand-in is tagged with it.
BASE=docker.io/library/debian:bookworm-slim
mkdir -p "$WORK"
t0=$SECONDS; step() { echo "== [$((SECONDS - t0))s] $*"; }

step "podman, runc, debootstrap"
export DEBIAN_FRONTEND=noninteractive
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends podman runc netavark aardvark-dns iptables debootstrap \
    ca-certificates >/dev/null
fi

# crun refuses hybrid cgroup hosts (use runc); without CAP_SYS_RESOURCE podman's default rlimits are refused.
cat >"$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
export CONTAINERS_CONF=$WORK/containers.conf

if ! podman image exists "$BASE"; then
  step "debootstrap minbase bookworm -> $BASE"
  rm -rf "$WORK/rootfs"
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  debootstrap --variant=minbase bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log"
  rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
  # HTTPS to PyPI may go through an intercepting proxy whose CA only the host trusts.
  mkdir -p "$WORK/rootfs/usr/local/share/ca-certificates" "$WORK/rootfs/etc/ssl/certs"
  cp /usr/local/share/ca-certificates/*.crt "$WORK/rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
  cp /etc/ssl/certs/ca-certificates.crt "$WORK/rootfs/etc/ssl/certs/ca-certificates.crt"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$WORK/rootfs/etc/pip.conf"
  tar -C "$WORK/rootfs" -c . | podman import \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  rm -rf "$WORK/rootfs"
fi

step "podman build -> $TAG"
podman build --pull=never --network=host -t "$TAG" "$REPO"

run() { podman run --rm --network=none --read-only --user 65532:65532 "$TAG" "$@"; }
step "smoke"
[[ $(podman run --rm --network=none --entrypoint id "$TAG" -u) == 65532 ]]
run --help >/dev/null
podman run --rm --network=none --read-only --entrypoint lifeboat-operator "$TAG" --help >/dev/null
run version
step "ok: $TAG"
