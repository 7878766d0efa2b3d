#!/usr/bin/env bash
# Creates .venv and installs Lifeboat into it (editable). Usage: bootstrap.sh [EXTRAS], e.g. "all,test".
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
EXTRAS=${1:-}
PY=${PYTHON:-python3}
if [[ ! -x "$REPO/.venv/bin/python" ]]; then
  if ! "$PY" -m venv "$REPO/.venv" 2>/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    "$PY" -m venv "$REPO/.venv"
  fi
fi
LOG=$(mktemp)
pip_install() {
  if ! "$REPO/.venv/bin/pip" install -q --disable-pip-version-check "$@" >"$LOG" 2>&1; then
    cat "$LOG" >&2
    exit 1
  fi
}
pip_install --upgrade pip
pip_install -e "$REPO${EXTRAS:+[$EXTRAS]}"
rm -f "$LOG"
"$REPO/.venv/bin/python" -c 'import lifeboat.agent.cli' # fail loudly if the install did not take
