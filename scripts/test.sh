#!/usr/bin/env bash
# Installs everything the tests need (Python packages, the real storage servers, helm), starts the
# servers, lints, and runs the whole test suite. Safe to run twice.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
t0=$SECONDS
step() { echo "== [$((SECONDS - t0))s] $*"; }
# On exit, whatever this run started: the background build, the control plane, the servers.
cluster_build="" cluster_started=0 services_started=0
cleanup() {
  [[ -n $cluster_build ]] && kill "$cluster_build" 2>/dev/null
  ((cluster_started)) && bash .ci/cluster.sh stop >/dev/null 2>&1
  ((services_started)) && bash .ci/stop-services.sh >/dev/null 2>&1
  return 0
}
trap cleanup EXIT

# The control plane of tests/cluster is built once from Go modules and cached outside the repository.
# A cold build is the longest step, so it runs in the background while the network-bound steps
# (packages, servers, the image) run, and the tests wait for it. Without go the cluster tests skip.
GO_BIN=$(command -v go || { [[ -x /usr/local/go/bin/go ]] && echo /usr/local/go/bin/go; } || true)
if [[ -n $GO_BIN ]]; then
  mkdir -p .ci-work
  step "kubernetes control plane: build (cached) in the background, log in .ci-work/cluster-build.log"
  cluster_t0=$SECONDS
  bash .ci/cluster.sh build >.ci-work/cluster-build.log 2>&1 &
  cluster_build=$!
fi
step "python packages"
bash scripts/bootstrap.sh all,test
step "storage servers"
services_started=1
bash .ci/services.sh
if [[ -f .ci/k8s-tools.sh ]]; then
  step "kubernetes tools"
  bash .ci/k8s-tools.sh
fi
if [[ ${LIFEBOAT_SKIP_IMAGE:-0} != 1 ]]; then
  step "image: hadolint, podman build, smoke as uid 65532 on a read-only root (LIFEBOAT_SKIP_IMAGE=1 skips)"
  image_t0=$SECONDS
  bash .ci/image-smoke.sh
  step "image: done in $((SECONDS - image_t0))s"
fi
if [[ -n $GO_BIN ]]; then
  step "kubernetes control plane: waiting for the build"
  if ! wait "$cluster_build"; then
    cat .ci-work/cluster-build.log >&2
    exit 1
  fi
  cluster_build=""
  tail -n 3 .ci-work/cluster-build.log
  step "kubernetes control plane: binaries ready $((SECONDS - cluster_t0))s after the build began (alongside the packages); start"
  cluster_started=1
  bash .ci/cluster.sh start
fi
step "lint"
.venv/bin/ruff check .
step "tests"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
step "done"
