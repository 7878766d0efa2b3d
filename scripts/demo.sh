#!/usr/bin/env bash
# The main job on the embedded default: replicate a sample database to a local directory replica,
# delete the database, restore it, and show that every row came back.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$REPO/scripts/bootstrap.sh"
exec "$REPO/.venv/bin/python" "$REPO/examples/demo.py" "$@"
