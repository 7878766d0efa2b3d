#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for the cluster tests (tests/cluster):
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes and kubelets).
#
#   .ci/cluster.sh build   build the binaries once from their Go modules (cached, keyed by version)
#   .ci/cluster.sh start   build if needed, start everything, wait for /readyz and a Ready node,
#                          print the kubeconfig path (already running: print it and do nothing else)
#   .ci/cluster.sh env     print `export KUBECONFIG=...`
#   .ci/cluster.sh stop    stop exactly the processes `start` started (their PID files)
#   .ci/cluster.sh restart-apiserver   stop kube-apiserver alone and start it again on the same etcd
#
# Environment:
#   LIFEBOAT_K8S_CACHE     binary cache (default: ~/.cache/lifeboat-k8s), outside the repository
#   LIFEBOAT_CLUSTER_DIR   state: certificates, kubeconfig, etcd data, logs, PID files
#                          (default: <repo>/.ci-work/cluster)
#   LIFEBOAT_APISERVER_PORT  kube-apiserver's secure port on 127.0.0.1 (default: 16443)
#   LIFEBOAT_ETCD_PORT       etcd's client port on 127.0.0.1 (default: 12379; the peer port is +1)
#   GO                     the go command (default: go on PATH, else /usr/local/go/bin/go)
#
# Kubernetes has no downloadable binaries here (only the Go module proxy is reachable), so each
# component is built from its module with `go build`:
# - k8s.io/kubernetes replaces its staging modules (k8s.io/api, ...) with ./staging directories that
#   are not part of the module zip; the build points them at the published k8s.io/* v0.X.Y instead.
# - etcd's server module has replace directives too, so it is built through a one-file main package
#   that calls etcdmain.Main, exactly what etcd's own main does.
# - kwok is built from inside its module directory.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
K8S_VERSION=v1.35.4
ETCD_VERSION=v3.6.6
KWOK_VERSION=v0.8.0
CACHE=${LIFEBOAT_K8S_CACHE:-$HOME/.cache/lifeboat-k8s}
STATE=${LIFEBOAT_CLUSTER_DIR:-$REPO/.ci-work/cluster}
API_PORT=${LIFEBOAT_APISERVER_PORT:-16443}
ETCD_PORT=${LIFEBOAT_ETCD_PORT:-12379}
ETCD_PEER_PORT=$((ETCD_PORT + 1))
# kwok gives pods addresses on loopback (every 127.x.y.z routes to lo on Linux): a test running a
# pod's containers as local processes binds the pod's IP, where the operator asks it (status.podIP).
# A /16 of its own per API port, so clusters of several sessions on one host do not share addresses.
POD_CIDR=${LIFEBOAT_POD_CIDR:-127.$((API_PORT % 200 + 20)).0.1/16}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
K8S_BIN=$CACHE/kubernetes-$K8S_VERSION
ETCD_BIN=$CACHE/etcd-$ETCD_VERSION/etcd
KWOK_BIN=$CACHE/kwok-$KWOK_VERSION/kwok
KUBECONFIG_FILE=$STATE/admin.kubeconfig
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

log() { echo "cluster: $*" >&2; }
die() { log "$*"; exit 1; }

# Lean, reproducible builds: go_build EXTRA_LDFLAGS ARGS... The module checksum database is not
# reachable here (the proxy is): go.sum files still pin what they list.
go_build() {
  local ldflags="-s -w $1"
  shift
  GOFLAGS=-mod=mod GOWORK=off GOSUMDB=off nice "$GO" build -trimpath -ldflags="$ldflags" "$@"
}

module_dir() {  # the module's directory in the module cache (downloaded if needed)
  GOWORK=off GOSUMDB=off "$GO" mod download -json "$1" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p'
}

build_kubernetes() {
  local want=(kube-apiserver kube-controller-manager kube-scheduler) missing=() c
  for c in "${want[@]}"; do [[ -x $K8S_BIN/$c ]] || missing+=("./cmd/$c"); done
  ((${#missing[@]})) || return 0
  log "building kubernetes $K8S_VERSION (${missing[*]})"
  local src=$CACHE/src/kubernetes-$K8S_VERSION staging=v0.${K8S_VERSION#v1.}
  if [[ ! -f $src/.prepared ]]; then
    rm -rf "$src"
    mkdir -p "$(dirname "$src")"
    cp -r "$(module_dir "k8s.io/kubernetes@$K8S_VERSION")" "$src"
    chmod -R u+w "$src"
    rm -f "$src/go.work" "$src/go.work.sum"
    local module
    for module in $(sed -n 's#^[[:space:]]*\(k8s.io/[a-z-]*\) => ./staging/.*#\1#p' "$src/go.mod"); do
      (cd "$src" && "$GO" mod edit -replace "$module=$module@$staging")
    done
    touch "$src/.prepared"
  fi
  mkdir -p "$K8S_BIN"
  # The version Kubernetes' own build stamps in (helm checks a chart's kubeVersion against it).
  local minor=${K8S_VERSION#v1.}
  minor=${minor%%.*}
  local pkg stamp=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    stamp+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    stamp+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$src" && go_build "$stamp" -o "$K8S_BIN/" "${missing[@]}")
}

build_etcd() {
  [[ -x $ETCD_BIN ]] && return 0
  log "building etcd $ETCD_VERSION"
  local src=$CACHE/src/etcd-$ETCD_VERSION
  mkdir -p "$src" "$(dirname "$ETCD_BIN")"
  cat >"$src/main.go" <<'GO'
// etcd's own main package, as a module without replace directives.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  if [[ ! -f $src/go.mod ]]; then
    (cd "$src" && "$GO" mod init lifeboat.local/etcd >/dev/null 2>&1 &&
      GOSUMDB=off "$GO" get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null)
  fi
  (cd "$src" && go_build "" -o "$ETCD_BIN" .)
}

build_kwok() {
  [[ -x $KWOK_BIN ]] && return 0
  log "building kwok $KWOK_VERSION"
  mkdir -p "$(dirname "$KWOK_BIN")"
  (cd "$(module_dir "sigs.k8s.io/kwok@$KWOK_VERSION")" && go_build "" -o "$KWOK_BIN" ./cmd/kwok)
}

build() {
  command -v "$GO" >/dev/null || [[ -x $GO ]] || die "go is not installed (needed to build Kubernetes)"
  local t0=$SECONDS
  build_kubernetes
  build_etcd
  build_kwok
  log "binaries ready in $((SECONDS - t0))s under $CACHE"
}

# --- certificates and kubeconfig -------------------------------------------------------------------

certs() {
  local pki=$STATE/pki
  [[ -f $pki/.done ]] && return 0
  rm -rf "$pki"
  mkdir -p "$pki"
  (
    cd "$pki"
    ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
    ec ca.key
    openssl req -x509 -new -key ca.key -subj /CN=lifeboat-test-ca -days 3650 -out ca.crt 2>/dev/null
    sign() {  # name subject extensions
      ec "$1.key"
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    }
    sign apiserver /CN=kube-apiserver "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth"
    # One cluster-admin client identity for the control-plane components and the tests' own kubectl.
    sign admin "/O=system:masters/CN=lifeboat-admin" "extendedKeyUsage=clientAuth"
    # Service-account tokens (TokenRequest) are signed with this key.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
    rm -f ./*.csr ./*.ext ca.srl
    touch .done
  )
}

kubeconfig() {
  local pki=$STATE/pki
  b64() { base64 -w0 <"$1"; }
  cat >"$KUBECONFIG_FILE" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: lifeboat-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: lifeboat-admin
  user:
    client-certificate-data: $(b64 "$pki/admin.crt")
    client-key-data: $(b64 "$pki/admin.key")
contexts:
- name: lifeboat-test
  context: {cluster: lifeboat-test, user: lifeboat-admin}
current-context: lifeboat-test
EOF
  chmod 600 "$KUBECONFIG_FILE"
}

# kwok's stages: its own node and pod stages (Nodes Ready, Pods Running, deleted Pods gone), and ours
# (.ci/kwok-stages.yaml: a Pod ends when the test annotates it).
kwok_config() {
  local stages file
  stages=$(module_dir "sigs.k8s.io/kwok@$KWOK_VERSION")/kustomize/stage
  {
    for file in node/fast/node-initialize.yaml node/heartbeat/node-heartbeat.yaml \
        pod/fast/pod-ready.yaml pod/fast/pod-delete.yaml; do
      cat "$stages/$file"
      echo ---
    done
    cat "$REPO/.ci/kwok-stages.yaml"
  } >"$STATE/kwok.yaml"
}

# --- processes -------------------------------------------------------------------------------------

pid_of() {  # the PID in the component's PID file, if that process is still the one we started
  local pidfile=$STATE/$1.pid pid
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "/$1 " && echo "$pid"
}

launch() {  # name binary args...
  local name=$1
  shift
  # Its own session: a signal to the caller's process group does not reach the control plane.
  setsid "$@" >"$STATE/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/$name.pid"
}

wait_for() {  # description seconds command...
  local what=$1 deadline=$((SECONDS + $2))
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out waiting for $what (logs: $STATE/*.log)"
    sleep 0.5
  done
}

kubectl_() {
  local kubectl=${KUBECTL:-$REPO/.ci-work/tools/kubectl/kubectl}
  "$kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"
}

readyz() {
  curl -fsS --cacert "$STATE/pki/ca.crt" --cert "$STATE/pki/admin.crt" --key "$STATE/pki/admin.key" \
    "https://127.0.0.1:$API_PORT/readyz" >/dev/null
}

untainted() { [[ -z $(kubectl_ get node "$1" -o jsonpath='{.spec.taints}') ]]; }

running() { local c; for c in "${COMPONENTS[@]}"; do pid_of "$c" >/dev/null || return 1; done; }

start_apiserver() {
  local pki=$STATE/pki
  # OwnerReferencesPermissionEnforcement, as on OpenShift: blockOwnerDeletion needs `update` on the
  # owner's finalizers (the operator's owner references must be allowed by the chart's RBAC).
  # Webhook Services resolve through their EndpointSlices (--enable-aggregator-routing), so a test
  # can route a Service to a process on this host with an EndpointSlice to the host's own address
  # (an EndpointSlice may not hold a loopback address).
  launch kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 --authorization-mode=Node,RBAC \
    --enable-aggregator-routing=true --endpoint-reconciler-type=none --allow-privileged=true \
    --enable-admission-plugins=OwnerReferencesPermissionEnforcement
  wait_for "kube-apiserver /readyz" 120 readyz
}

# The API server alone goes down and comes back on the same etcd (clients see their watches break).
restart_apiserver() {
  running || die "not running (start first)"
  stop_component kube-apiserver
  start_apiserver
  log "kube-apiserver restarted"
}

start() {
  mkdir -p "$STATE"
  if running && readyz; then
    echo "$KUBECONFIG_FILE"
    return 0
  fi
  stop >/dev/null
  build
  local t0=$SECONDS pki=$STATE/pki
  certs
  kubeconfig
  kwok_config
  rm -rf "$STATE/etcd"  # every start is a fresh, empty cluster
  launch etcd "$ETCD_BIN" --name=lifeboat --data-dir="$STATE/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="lifeboat=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --quota-backend-bytes=$((1 << 30))
  start_apiserver
  launch kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$KUBECONFIG_FILE" --authentication-kubeconfig="$KUBECONFIG_FILE" \
    --authorization-kubeconfig="$KUBECONFIG_FILE" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port=0 \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --controllers='*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route'
  launch kube-scheduler "$K8S_BIN/kube-scheduler" \
    --kubeconfig="$KUBECONFIG_FILE" --authentication-kubeconfig="$KUBECONFIG_FILE" \
    --authorization-kubeconfig="$KUBECONFIG_FILE" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port=0
  launch kwok "$KWOK_BIN" --kubeconfig="$KUBECONFIG_FILE" --config="$STATE/kwok.yaml" \
    --manage-all-nodes=true --server-address= --cidr="$POD_CIDR"
  kubectl_ apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/hostname: kwok-node-0
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
EOF
  wait_for "node kwok-node-0 Ready" 60 kubectl_ wait --for=condition=Ready node/kwok-node-0 --timeout=1s
  # The node lifecycle controller lifts the not-ready taint the API server put on the new Node.
  wait_for "node kwok-node-0 untainted" 60 untainted kwok-node-0
  wait_for "the default ServiceAccount" 60 kubectl_ get serviceaccount default -n default
  log "control plane ready in $((SECONDS - t0))s"
  echo "$KUBECONFIG_FILE"
}

stop_component() {  # by its PID file, and only if that PID is still the process we started
  local pid
  if pid=$(pid_of "$1"); then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $1 ($pid)"
  fi
  rm -f "$STATE/$1.pid"
}

stop() {
  local i
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do stop_component "${COMPONENTS[i]}"; done
}

case ${1:-} in
  build) build ;;
  start) start ;;
  stop) stop ;;
  restart-apiserver) restart_apiserver ;;
  env) echo "export KUBECONFIG=$KUBECONFIG_FILE" ;;
  *) die "usage: $0 build|start|stop|env|restart-apiserver" ;;
esac
