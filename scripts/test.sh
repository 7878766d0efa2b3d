#!/usr/bin/env bash
# Installs everything the tests need (Python packages, the real storage servers, helm), starts the
# servers, lints, and runs the whole test suite. Safe to run twice.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
t0=$SECONDS
step() { echo "== [$((SECONDS - t0))s] $*"; }

step "python packages"
bash scripts/bootstrap.sh all,test
step "storage servers"
bash .ci/services.sh
trap 'bash .ci/stop-services.sh >/dev/null 2>&1 || true' EXIT
if [[ -f .ci/k8s-tools.sh ]]; then
  step "kubernetes tools"
  bash .ci/k8s-tools.sh
fi
# The control plane of tests/cluster (built once from Go modules, cached outside the repository).
# Without go the cluster tests skip themselves.
if command -v go >/dev/null || [[ -x /usr/local/go/bin/go ]]; then
  step "kubernetes control plane: build (cached)"
  cluster_t0=$SECONDS
  bash .ci/cluster.sh build
  step "kubernetes control plane: built in $((SECONDS - cluster_t0))s; start"
  trap 'bash .ci/cluster.sh stop >/dev/null 2>&1 || true; bash .ci/stop-services.sh >/dev/null 2>&1 || true' EXIT
  bash .ci/cluster.sh start
fi
if [[ ${LIFEBOAT_SKIP_IMAGE:-0} != 1 ]]; then
  step "image: hadolint, podman build, smoke as uid 65532 on a read-only root (LIFEBOAT_SKIP_IMAGE=1 skips)"
  image_t0=$SECONDS
  bash .ci/image-smoke.sh
  step "image: done in $((SECONDS - image_t0))s"
fi
step "lint"
.venv/bin/ruff check .
step "tests"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
step "done"
