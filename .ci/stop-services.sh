#!/usr/bin/env bash
# Stops the servers .ci/services.sh started (by the pids it recorded); safe to run twice.
set -euo pipefail

WORK="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.ci-work"
for name in moto gcs azurite sshd nats; do
  pidfile="$WORK/$name.pid"
  [[ -f "$pidfile" ]] || continue
  kill "$(cat "$pidfile")" 2>/dev/null || true
  rm -f "$pidfile"
done
