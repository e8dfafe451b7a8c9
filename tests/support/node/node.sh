#!/usr/bin/env bash
# A real one-node Kubernetes 1.20 cluster for the test suite, driven from the shell (or from Rust through the
# env file): etcd + kube-apiserver + kube-controller-manager + kube-scheduler + containerd/runc + kubelet,
# every listener on loopback, every file under DIR (etcd's data on /dev/shm), every process stopped by PID.
#
#   node.sh start DIR          start a node; DIR must be absent or empty. Prints the env file (also DIR/node.env).
#   node.sh stop DIR           idempotent: kill pods/containers, unmount, stop every process, remove state;
#                              DIR/logs and DIR/node.env stay (the caller removes DIR).
#   node.sh status DIR         which processes are alive; exit 0 only if all are
#   node.sh import DIR TAR...  import image tarballs (OCI or docker-archive) into the node's containerd (k8s.io)
#   node.sh reap               stop every node whose owner process is gone (start does this first)
#
# Environment:
#   LSTR_CACHE            cache root (default /var/tmp/ls-token-refresher); binaries via ../kube and ./provision.sh
#   LSTR_NODE_OWNER_PID   the process whose life the node is tied to (default: none). A later `start` or `reap`
#                         stops nodes whose owner died without calling `stop` (a killed test process).
#   LSTR_NODE_NAME        node name (default 127.0.0.1: see "Node address" below)
#   LSTR_NODE_CONTROLLERS kube-controller-manager --controllers (default: the set listed below)
#
# Networking: pods must use `hostNetwork: true` (they share the host's loopback, so they reach Label Studio
# and the apiserver on 127.x addresses). The CNI config is a loopback-only network: it makes the runtime
# report NetworkReady (so the node turns Ready and the scheduler places pods) and gives no pod an address
# outside the machine; a pod without hostNetwork fails sandbox creation with "failed to find network info".
# The service CIDR is a random 127.X.Y.0/24 and the apiserver listens on 127.X.Y.1:443 — the ClusterIP of the
# `kubernetes` Service — so in-cluster clients (KUBERNETES_SERVICE_HOST/PORT + the ServiceAccount token) reach
# it unchanged, and every ClusterIP a test creates is a loopback address. (The apiserver refuses loopback
# Endpoints, so the `kubernetes` Endpoints reconciler is off: no kube-proxy reads them anyway.)
# Node address: kubelet 1.20 rejects --node-ip=127.0.0.1 ("nodeIP can't be loopback address") and would
# otherwise report the machine's own interface address; a node NAMED 127.0.0.1 (--hostname-override) gets
# InternalIP 127.0.0.1 unvalidated, so apiserver -> kubelet traffic (logs, exec) and hostNetwork pods'
# podIP/hostIP stay on loopback.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
export LSTR_CACHE="${LSTR_CACHE:-/var/tmp/ls-token-refresher}"
INSTANCES="$LSTR_CACHE/node/instances"
NODE_NAME="${LSTR_NODE_NAME:-127.0.0.1}"
CONTROLLERS="${LSTR_NODE_CONTROLLERS:-deployment,replicaset,job,cronjob,statefulset,daemonset,namespace,serviceaccount,serviceaccount-token,garbagecollector,nodelifecycle,podgc,endpoint,endpointslice,clusterrole-aggregation,root-ca-cert-publisher,ttl-after-finished}"
USER_NAME=refresher
ADMIN_NAME=lstr-admin
ISSUER=https://kubernetes.default.svc.cluster.local

log() { printf '[node] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}
now_ms() { date +%s%3N; }

# ------------------------------------------------------------------------------------------------ processes

# start_time PID -> field 22 of /proc/PID/stat (clock ticks since boot), empty if the process is gone or a
# zombie (our daemons are reparented to PID 1 once the shell that started them exits, and PID 1 here may
# reap late).
start_time() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
    stat="${stat##*) }"
    # shellcheck disable=SC2086
    set -- $stat
    [[ "$1" != Z ]] || return 0
    echo "${20}"
}

# alive NAME: the recorded process DIR/pids/NAME ("PID STARTTIME") is still the same process.
alive() {
    local f="$D/pids/$1" pid st
    [[ -f "$f" ]] || return 1
    read -r pid st <"$f"
    [[ -n "$pid" && "$(start_time "$pid")" == "$st" ]]
}
pid_of() { [[ -f "$D/pids/$1" ]] && cut -d' ' -f1 "$D/pids/$1"; }

# spawn NAME BINARY ARGS...: detached (own session), output to DIR/logs/NAME.log, PID recorded.
spawn() {
    local name="$1"
    shift
    setsid "$@" </dev/null >>"$D/logs/$name.log" 2>&1 &
    local pid=$!
    disown "$pid" # no "Killed" job notices from this shell when stop kills it
    echo "$pid $(start_time "$pid")" >"$D/pids/$name"
}

# terminate NAME [GRACE_SECONDS]: SIGTERM, then SIGKILL after the grace period (0: SIGKILL at once);
# by recorded PID only.
terminate() {
    local name="$1" grace="${2:-10}" pid i
    alive "$name" || return 0
    pid="$(pid_of "$name")"
    if ((grace > 0)); then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            alive "$name" || return 0
            sleep 0.1
        done
        log "$name (pid $pid) ignored SIGTERM for ${grace}s: SIGKILL"
    fi
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$name" || return 0
        sleep 0.1
    done
}

# alloc_net: prints "127.X.Y PORT1 … PORT6": a random 127.X.Y.0/24 whose .1:443 can be bound (not 127.0.x,
# which hosts use for their own names), and six free 127.0.0.1 ports (one python start-up for all). The ports
# come from 24000 up to the kernel's ephemeral range: not from the range itself, where any outgoing connection
# may take a port between this check and etcd's or the kubelet's bind, and not below 24000, where the Rust
# harnesses' free_port (tests/e2e/src/lib.rs) hands out ports for Label Studio and the refreshers started
# alongside.
alloc_net() {
    python3 - <<'EOF'
import random, socket
for _ in range(200):
    x, y = random.randint(64, 254), random.randint(0, 255)
    s = socket.socket()
    try:
        s.bind((f"127.{x}.{y}.1", 443))
    except OSError:
        continue
    finally:
        s.close()
    break
else:
    raise SystemExit("no free 127.X.Y.1:443")
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    low = 32768
candidates = list(range(24000, low)) if low > 24100 else list(range(low - 1000, low))
random.shuffle(candidates)
socks = []
for port in candidates:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    socks.append(s)
    if len(socks) == 6:
        break
else:
    raise SystemExit("no six free 127.0.0.1 ports below the ephemeral range")
print(f"127.{x}.{y}", *[s.getsockname()[1] for s in socks])
EOF
}

# wait_for WHAT SECONDS CMD...: poll CMD every 0.2 s; fail with WHAT if it does not succeed in time, or at
# once if one of the started components has exited.
wait_for() {
    local what="$1" secs="$2" p
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        for p in "$D"/pids/*; do
            [[ -f "$p" ]] || continue
            if ! alive "$(basename "$p")"; then
                log "$(basename "$p") exited while waiting for $what"
                return 1
            fi
        done
        if ((SECONDS > deadline)); then
            log "timed out after ${secs}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}

# ------------------------------------------------------------------------------------------------ PKI

make_pki() {
    local P="$D/pki" ip="$1"
    mkdir -p "$P"
    (
        cd "$P"
        ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
        cat >ca.cnf <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = lstr-node-ca
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
EOF
        openssl req -x509 -new -config ca.cnf -extensions v3_ca "${ec[@]}" -keyout ca.key -out ca.crt \
            -days 3650 -subj /CN=lstr-node-ca 2>/dev/null
        # name subject extendedKeyUsage [subjectAltName]
        cert() {
            {
                echo "basicConstraints = critical,CA:FALSE"
                echo "keyUsage = critical,digitalSignature,keyEncipherment"
                echo "extendedKeyUsage = $3"
                echo "subjectKeyIdentifier = hash"
                echo "authorityKeyIdentifier = keyid"
                [[ -z "${4:-}" ]] || echo "subjectAltName = $4"
            } >"$1.ext"
            openssl req -new "${ec[@]}" -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
            openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
                -days 3650 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
            rm -f "$1.csr" "$1.ext"
        }
        cert apiserver /CN=kube-apiserver serverAuth \
            "IP:$ip,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
        cert admin "/O=system:masters/CN=$ADMIN_NAME" clientAuth
        cert controller-manager /CN=system:kube-controller-manager clientAuth
        cert scheduler /CN=system:kube-scheduler clientAuth
        cert kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
        cert kubelet-serving "/CN=$NODE_NAME" serverAuth "IP:127.0.0.1,DNS:localhost,DNS:$NODE_NAME"
        cert apiserver-kubelet-client /O=system:masters/CN=kube-apiserver-kubelet-client clientAuth
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out sa.key 2>/dev/null
        openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
    )
}

# kubeconfig FILE (cert NAME | token TOKEN) NAMESPACE: a self-contained kubeconfig (certs inlined).
kubeconfig() {
    local file="$1" kind="$2" cred="$3" ns="$4" user
    b64() { base64 -w0 <"$D/pki/$1"; }
    if [[ "$kind" == cert ]]; then
        user="{\"client-certificate-data\": \"$(b64 "$cred.crt")\", \"client-key-data\": \"$(b64 "$cred.key")\"}"
    else
        user="{\"token\": \"$cred\"}"
    fi
    cat >"$file.tmp" <<EOF
{
  "apiVersion": "v1",
  "kind": "Config",
  "clusters": [{"name": "lstr-node", "cluster": {"server": "$APISERVER_URL", "certificate-authority-data": "$(b64 ca.crt)"}}],
  "users": [{"name": "u", "user": $user}],
  "contexts": [{"name": "lstr-node", "context": {"cluster": "lstr-node", "user": "u", "namespace": "$ns"}}],
  "current-context": "lstr-node"
}
EOF
    mv -f "$file.tmp" "$file"
}

# api PATH: GET as admin, body on stdout.
api() {
    curl -fsS --max-time 5 --cacert "$D/pki/ca.crt" --cert "$D/pki/admin.crt" --key "$D/pki/admin.key" \
        "$APISERVER_URL$1"
}

# ------------------------------------------------------------------------------------------------ start

provision() {
    KUBE_BIN="$(bash "$REPO/tests/support/kube/provision.sh")"
    [[ -x "$KUBE_BIN/kubelet" ]] || die "no kubelet in $KUBE_BIN"
    local line
    while IFS= read -r line; do
        [[ "$line" == *=* ]] && export "${line?}"
    done < <(bash "$HERE/provision.sh")
    [[ -x "$NODE_BIN/containerd" ]] || die "node provisioning failed"
    if command -v kubectl >/dev/null 2>&1; then KUBECTL="$(command -v kubectl)"; else KUBECTL="$KUBE_BIN/kubectl"; fi
}

record_timing() { echo "$1=$(($(now_ms) - $2))" >>"$D/timings"; }

write_configs() {
    mkdir -p "$D/containerd/root" "$D/containerd/state" "$D/containerd/runc" "$D/cni/net.d" \
        "$D/kubelet/root" "$D/kubelet/pki" "$D/kubelet/manifests" "$D/kubelet/volume-plugins"
    cat >"$D/cni/net.d/10-lstr-loopback.conflist" <<'EOF'
{
  "cniVersion": "0.4.0",
  "name": "lstr-loopback",
  "plugins": [{"type": "loopback"}]
}
EOF
    cat >"$D/containerd/config.toml" <<EOF
version = 2
root = "$D/containerd/root"
state = "$D/containerd/state"
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "$CONTAINERD_SOCKET"

[ttrpc]
  address = ""

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$D/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # These machines lack CAP_SYS_RESOURCE: without this every sandbox dies with runc's
  # "can't get final child's PID from pipe: EOF" (it cannot lower oom_score_adj).
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  max_concurrent_downloads = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$NODE_BIN/runc"
        Root = "$D/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$NODE_CNI_BIN"
    conf_dir = "$D/cni/net.d"
    max_conf_num = 1
EOF
    cat >"$D/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $D/pki/kubelet-serving.crt
tlsPrivateKeyFile: $D/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $D/pki/ca.crt}
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
staticPodPath: $D/kubelet/manifests
volumePluginDir: $D/kubelet/volume-plugins
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
makeIPTablesUtilChains: false
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
# Imported images must never be garbage-collected (pods use imagePullPolicy Never/IfNotPresent), and a busy
# shared disk must not evict test pods.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "0%"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
maxPods: 60
# Start-up speed: the first status after registration is usually NotReady (PLEG not yet healthy); the default
# 10 s until the next one dominated the node's start. Cheap: with node leases, an unchanged status is not
# re-posted. (Secret/ConfigMap propagation is unaffected: syncFrequency keeps its 1 m default.)
nodeStatusUpdateFrequency: 1s
EOF
}

cmd_start() {
    local t_all t
    t_all="$(now_ms)"
    [[ -n "${1:-}" ]] || die "usage: node.sh start DIR"
    mkdir -p "$1"
    D="$(cd "$1" && pwd)"
    [[ -z "$(ls -A "$D")" ]] || die "$D is not empty"
    [[ $(id -u) -eq 0 ]] || die "the node needs root (containerd, runc, kubelet mounts)"
    CONTAINERD_SOCKET="$D/containerd.sock"
    ((${#CONTAINERD_SOCKET} < 100)) || die "DIR too long for a unix socket path: $CONTAINERD_SOCKET"

    cmd_reap
    mkdir -p "$D/logs" "$D/pids" "$INSTANCES"
    : >"$D/timings"
    t="$(now_ms)"
    provision
    record_timing provision_ms "$t"
    echo "$NODE_BIN" >"$D/node-bin" # for stop, whatever LSTR_CACHE it runs with

    # Register the instance before anything runs, so that a killed owner's node can be reaped.
    local owner="${LSTR_NODE_OWNER_PID:-}"
    echo "${owner:+$owner $(start_time "$owner")}" >"$D/owner"
    ln -sfn "$D" "$INSTANCES/$(echo "$D" | sha256sum | cut -c1-16)"

    # Any failure from here on stops what was started.
    trap 'rc=$?; if ((rc)); then log "start failed; logs in $D/logs"; tail_logs; cmd_stop "$D" || true; fi' EXIT

    local net
    read -r net ETCD_PORT ETCD_PEER_PORT KUBELET_PORT KUBELET_HEALTHZ_PORT CONTROLLER_MANAGER_PORT SCHEDULER_PORT \
        < <(alloc_net)
    [[ -n "$SCHEDULER_PORT" ]] || die "could not allocate addresses"
    APISERVER_IP="$net.1"
    APISERVER_PORT=443
    APISERVER_URL="https://$APISERVER_IP:$APISERVER_PORT"
    SERVICE_CIDR="$net.0/24"
    ETCD_DATA="$(mktemp -d /dev/shm/lstr-node-etcd.XXXXXX 2>/dev/null || mktemp -d "$D/etcd.XXXXXX")"
    echo "$ETCD_DATA" >"$D/etcd-data"

    t="$(now_ms)"
    make_pki "$APISERVER_IP"
    USER_TOKEN="$(openssl rand -hex 20)"
    ADMIN_TOKEN="$(openssl rand -hex 20)"
    printf '%s,%s-token,%s-token-uid,"system:masters"\n%s,%s,%s-uid\n' \
        "$ADMIN_TOKEN" "$ADMIN_NAME" "$ADMIN_NAME" "$USER_TOKEN" "$USER_NAME" "$USER_NAME" >"$D/pki/tokens.csv"
    kubeconfig "$D/admin.kubeconfig" cert admin default
    kubeconfig "$D/user.kubeconfig" token "$USER_TOKEN" default
    kubeconfig "$D/controller-manager.kubeconfig" cert controller-manager kube-system
    kubeconfig "$D/scheduler.kubeconfig" cert scheduler kube-system
    kubeconfig "$D/kubelet.kubeconfig" cert kubelet-client default
    write_configs
    record_timing pki_ms "$t"

    t="$(now_ms)"
    spawn etcd "$KUBE_BIN/etcd" --name=lstr --data-dir="$ETCD_DATA" \
        --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster="lstr=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state=new \
        --logger=zap --log-level=warn
    # containerd does not depend on the control plane: start it now, in parallel.
    spawn containerd env PATH="$NODE_BIN:/usr/sbin:/usr/bin:/sbin:/bin" \
        "$NODE_BIN/containerd" --config "$D/containerd/config.toml" --log-level warn
    wait_for "etcd /health" 30 sh -c "curl -fsS --max-time 2 http://127.0.0.1:$ETCD_PORT/health | grep -q true"
    record_timing etcd_ms "$t"

    t="$(now_ms)"
    spawn kube-apiserver "$KUBE_BIN/kube-apiserver" \
        --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
        --bind-address="$APISERVER_IP" --advertise-address="$APISERVER_IP" --secure-port="$APISERVER_PORT" \
        --insecure-port=0 \
        --tls-cert-file="$D/pki/apiserver.crt" --tls-private-key-file="$D/pki/apiserver.key" \
        --client-ca-file="$D/pki/ca.crt" --token-auth-file="$D/pki/tokens.csv" \
        --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
        --service-account-key-file="$D/pki/sa.pub" --service-account-signing-key-file="$D/pki/sa.key" \
        --service-account-issuer="$ISSUER" --api-audiences="$ISSUER" \
        --service-cluster-ip-range="$SERVICE_CIDR" --endpoint-reconciler-type=none \
        --requestheader-client-ca-file="$D/pki/ca.crt" --requestheader-allowed-names=front-proxy-client \
        --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
        --requestheader-extra-headers-prefix=X-Remote-Extra- \
        --kubelet-client-certificate="$D/pki/apiserver-kubelet-client.crt" \
        --kubelet-client-key="$D/pki/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority="$D/pki/ca.crt" --kubelet-preferred-address-types=InternalIP \
        --allow-privileged=false --profiling=false --v=1
    wait_for "containerd" 30 "$NODE_BIN/ctr" --address "$CONTAINERD_SOCKET" version
    "$NODE_BIN/ctr" --address "$CONTAINERD_SOCKET" -n k8s.io images import "$PAUSE_TAR" >>"$D/logs/import.log" 2>&1
    # The kubelet now, without waiting for the apiserver: its start spends ~5 s in cAdvisor probing for a
    # Docker daemon (5 x 1 s retries, unconditional in 1.20), which overlaps the apiserver's start; it retries
    # registering the node until the apiserver answers.
    spawn kubelet "$KUBE_BIN/kubelet" --config="$D/kubelet/config.yaml" --kubeconfig="$D/kubelet.kubeconfig" \
        --container-runtime=remote --container-runtime-endpoint="unix://$CONTAINERD_SOCKET" \
        --containerd="$CONTAINERD_SOCKET" \
        --runtime-request-timeout=2m --root-dir="$D/kubelet/root" --cert-dir="$D/kubelet/pki" \
        --hostname-override="$NODE_NAME" --pod-infra-container-image="$PAUSE_IMAGE" --v=1
    wait_for "kube-apiserver /readyz" 120 sh -c "[ \"\$(curl -fsS --max-time 5 --cacert '$D/pki/ca.crt' \
        --cert '$D/pki/admin.crt' --key '$D/pki/admin.key' '$APISERVER_URL/readyz')\" = ok ]"
    record_timing apiserver_ms "$t"

    t="$(now_ms)"
    spawn kube-controller-manager "$KUBE_BIN/kube-controller-manager" \
        --kubeconfig="$D/controller-manager.kubeconfig" \
        --authentication-kubeconfig="$D/controller-manager.kubeconfig" \
        --authorization-kubeconfig="$D/controller-manager.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port="$CONTROLLER_MANAGER_PORT" --port=0 --cert-dir="$D/pki/cm-serving" \
        --leader-elect=false --use-service-account-credentials=true \
        --service-account-private-key-file="$D/pki/sa.key" --root-ca-file="$D/pki/ca.crt" \
        --controllers="$CONTROLLERS" --node-monitor-period=1s --profiling=false --v=1
    spawn kube-scheduler "$KUBE_BIN/kube-scheduler" \
        --kubeconfig="$D/scheduler.kubeconfig" \
        --authentication-kubeconfig="$D/scheduler.kubeconfig" --authorization-kubeconfig="$D/scheduler.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --port=0 --cert-dir="$D/pki/scheduler-serving" \
        --leader-elect=false --profiling=false --v=1
    wait_for "kube-scheduler /healthz" 60 curl -fsSk --max-time 2 "https://127.0.0.1:$SCHEDULER_PORT/healthz"
    wait_for "kube-controller-manager /healthz" 60 curl -fsSk --max-time 2 "https://127.0.0.1:$CONTROLLER_MANAGER_PORT/healthz"
    wait_for "kubelet /healthz" 60 curl -fsS --max-time 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
    record_timing components_ms "$t"
    t="$(now_ms)"
    wait_for "node $NODE_NAME Ready and untainted" 120 node_ready
    wait_for "ServiceAccount default/default" 60 api /api/v1/namespaces/default/serviceaccounts/default
    record_timing node_ready_ms "$t"

    trap - EXIT
    write_env
    record_timing start_total_ms "$t_all"
    log "node $NODE_NAME ready in $((($(now_ms) - t_all) / 1000)) s ($(tr '\n' ' ' <"$D/timings"))"
    cat "$D/node.env"
}

node_ready() {
    api "/api/v1/nodes/$NODE_NAME" | python3 -c '
import json, sys
n = json.load(sys.stdin)
ready = any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
taints = [t["key"] for t in n["spec"].get("taints", [])]
sys.exit(0 if ready and not taints else 1)'
}

write_env() {
    local p
    {
        echo "# lstr test node: sourceable by sh, KEY=VALUE per line (no quoting needed: no value has spaces)"
        echo "NODE_DIR=$D"
        echo "NODE_NAME=$NODE_NAME"
        echo "KUBECONFIG=$D/admin.kubeconfig"
        echo "ADMIN_KUBECONFIG=$D/admin.kubeconfig"
        echo "ADMIN_TOKEN=$ADMIN_TOKEN"
        echo "USER_KUBECONFIG=$D/user.kubeconfig"
        echo "USER_NAME=$USER_NAME"
        echo "USER_TOKEN=$USER_TOKEN"
        echo "CA_CRT=$D/pki/ca.crt"
        echo "APISERVER_URL=$APISERVER_URL"
        echo "APISERVER_IP=$APISERVER_IP"
        echo "APISERVER_PORT=$APISERVER_PORT"
        echo "SERVICE_CIDR=$SERVICE_CIDR"
        echo "ETCD_URL=http://127.0.0.1:$ETCD_PORT"
        echo "KUBELET_PORT=$KUBELET_PORT"
        echo "KUBELET_HEALTHZ_PORT=$KUBELET_HEALTHZ_PORT"
        echo "KUBELET_ROOT=$D/kubelet/root"
        echo "CONTROLLER_MANAGER_PORT=$CONTROLLER_MANAGER_PORT"
        echo "SCHEDULER_PORT=$SCHEDULER_PORT"
        echo "CONTAINERD_SOCKET=$CONTAINERD_SOCKET"
        echo "CONTAINERD_NAMESPACE=k8s.io"
        echo "CTR=$NODE_BIN/ctr"
        echo "KUBECTL=$KUBECTL"
        echo "KUBE_BIN=$KUBE_BIN"
        echo "PAUSE_IMAGE=$PAUSE_IMAGE"
        echo "BUSYBOX_IMAGE=$BUSYBOX_IMAGE"
        echo "BUSYBOX_TAR=$BUSYBOX_TAR"
        echo "LOG_DIR=$D/logs"
        for p in etcd kube-apiserver containerd kube-controller-manager kube-scheduler kubelet; do
            echo "PID_$(echo "$p" | tr 'a-z-' 'A-Z_')=$(pid_of "$p")"
        done
    } >"$D/node.env.tmp"
    mv -f "$D/node.env.tmp" "$D/node.env"
}

tail_logs() {
    local f
    for f in "$D"/logs/*.log; do
        [[ -s "$f" ]] || continue
        echo "--- $(basename "$f") (tail) ---" >&2
        tail -n 15 "$f" >&2
    done
}

# ------------------------------------------------------------------------------------------------ stop

# Mount points at or below a path, deepest first (from /proc/self/mountinfo; octal escapes decoded).
mounts_under() {
    python3 - "$@" <<'EOF'
import sys
roots = [r.rstrip("/") for r in sys.argv[1:] if r]
found = []
with open("/proc/self/mountinfo") as f:
    for line in f:
        mp = line.split()[4]
        mp = bytes(mp, "utf-8").decode("unicode_escape")
        if any(mp == r or mp.startswith(r + "/") for r in roots):
            found.append(mp)
for mp in sorted(set(found), key=lambda p: (-p.count("/"), p)):
    print(mp)
EOF
}

unmount_all() {
    local mp _
    for _ in 1 2 3; do
        local left=0
        while IFS= read -r mp; do
            [[ -n "$mp" ]] || continue
            left=1
            umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
        done < <(mounts_under "$@")
        ((left)) || return 0
    done
    if [[ -n "$(mounts_under "$@")" ]]; then
        log "still mounted: $(mounts_under "$@" | tr '\n' ' ')"
        return 1
    fi
}

# PIDs of containerd shims serving our containerd (their command line names our socket).
our_shims() {
    local p
    for p in /proc/[0-9]*; do
        [[ "$(readlink "$p/exe" 2>/dev/null)" == "$NODE_BIN/containerd-shim-runc-v2" ]] || continue
        tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "-address $CONTAINERD_SOCKET " && echo "${p#/proc/}"
    done
    return 0
}

cmd_stop() {
    [[ -n "${1:-}" ]] || die "usage: node.sh stop DIR"
    [[ -d "$1" ]] || return 0
    D="$(cd "$1" && pwd)"
    [[ -d "$D/pids" || -d "$D/containerd" || -d "$D/kubelet" ]] || return 0
    local t
    t="$(now_ms)"
    NODE_BIN="$(cat "$D/node-bin" 2>/dev/null || echo "$LSTR_CACHE/node/bin")"
    CONTAINERD_SOCKET="$D/containerd.sock"
    local ctr=("$NODE_BIN/ctr" --address "$CONTAINERD_SOCKET" --timeout 10s -n k8s.io)

    local tp
    tp="$(now_ms)"
    # step WHAT: notes how long the previous step took (DIR/logs/stop.log).
    step() { echo "$(($(now_ms) - tp)) ms $1" >>"$D/logs/stop.log"; tp="$(now_ms)"; }
    # Everything is thrown away, so nothing needs a graceful shutdown: SIGKILL (a graceful kube-apiserver
    # alone takes seconds). Order matters: the kubelet first, so that it restarts nothing.
    # 1. The kubelet.
    terminate kubelet 0
    step kubelet
    # 2. Every container: SIGKILL and delete through containerd (its shims then exit) ...
    if alive containerd; then
        local id
        for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
            "${ctr[@]}" tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true
        done
        for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
            "${ctr[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true
        done
    fi
    # ... and whatever containerd could not reach, straight through runc (kills, removes cgroups and state).
    if [[ -d "$D/containerd/runc/k8s.io" ]]; then
        local id
        for id in $("$NODE_BIN/runc" --root "$D/containerd/runc/k8s.io" list -q 2>/dev/null); do
            "$NODE_BIN/runc" --root "$D/containerd/runc/k8s.io" delete --force "$id" >/dev/null 2>&1 || true
        done
    fi
    step containers
    terminate containerd 0
    step containerd
    local pid
    for pid in $(our_shims); do kill -KILL "$pid" 2>/dev/null || true; done
    # 3. The control plane.
    terminate kube-scheduler 0
    terminate kube-controller-manager 0
    terminate kube-apiserver 0
    terminate etcd 0
    step control-plane

    # 4. Mounts: the kubelet's root dir (it bind-mounts it rshared), Secret/emptyDir tmpfs, overlay rootfs,
    #    sandbox /dev/shm.
    local etcd_data=""
    [[ -f "$D/etcd-data" ]] && etcd_data="$(cat "$D/etcd-data")"
    unmount_all "$D" || true
    step unmount

    # 5. Container logs the kubelet wrote to /var/log/pods for this node's pods (one dir per pod UID).
    local uid f
    if [[ -d "$D/kubelet/root/pods" ]]; then
        for uid in "$D"/kubelet/root/pods/*; do
            [[ -d "$uid" ]] && rm -rf /var/log/pods/*_"$(basename "$uid")"
        done
        for f in /var/log/containers/*.log; do
            [[ -L "$f" && ! -e "$f" ]] && rm -f "$f"
        done
    fi

    # 6. State. Logs, env and timings stay for the caller.
    if [[ -z "$(mounts_under "$D")" ]]; then
        rm -rf --one-file-system "$D/containerd" "$D/kubelet" "$D/cni" "$D/pki" "$D"/*.kubeconfig "$D/containerd.sock" "$D/containerd.sock.ttrpc"
    fi
    case "$etcd_data" in /dev/shm/lstr-node-etcd.* | "$D"/etcd.*) rm -rf "$etcd_data" ;; esac
    rm -f "$D/etcd-data"
    local link
    for link in "$INSTANCES"/*; do
        [[ -L "$link" && "$(readlink "$link")" == "$D" ]] && rm -f "$link"
    done
    echo "stop_ms=$(($(now_ms) - t))" >>"$D/timings"
    return 0
}

cmd_status() {
    D="$(cd "${1:?usage: node.sh status DIR}" && pwd)"
    local p rc=0
    for p in etcd kube-apiserver containerd kube-controller-manager kube-scheduler kubelet; do
        if alive "$p"; then
            echo "$p running pid $(pid_of "$p") rss_kib $(awk '/^VmRSS:/{print $2}' "/proc/$(pid_of "$p")/status")"
        else
            echo "$p stopped"
            rc=1
        fi
    done
    return $rc
}

cmd_import() {
    D="$(cd "${1:?usage: node.sh import DIR TAR...}" && pwd)"
    shift
    local tar
    for tar in "$@"; do
        "$LSTR_CACHE/node/bin/ctr" --address "$D/containerd.sock" -n k8s.io images import "$tar" >&2
    done
}

# Stops registered nodes whose owner process is gone.
cmd_reap() {
    [[ -d "$INSTANCES" ]] || return 0
    local link dir owner pid st
    for link in "$INSTANCES"/*; do
        [[ -L "$link" ]] || continue
        dir="$(readlink "$link")"
        if [[ ! -d "$dir" ]]; then
            rm -f "$link"
            continue
        fi
        owner="$(cat "$dir/owner" 2>/dev/null || true)"
        [[ -n "$owner" ]] || continue # no owner recorded: only an explicit stop ends it
        read -r pid st <<<"$owner"
        if [[ "$(start_time "$pid")" != "$st" ]]; then
            log "reaping node $dir (owner $pid is gone)"
            (cmd_stop "$dir") || true
            rm -f "$link"
        fi
    done
}

case "${1:-}" in
start) cmd_start "${2:-}" ;;
stop) cmd_stop "${2:-}" ;;
status) cmd_status "${2:-}" ;;
import) shift; cmd_import "$@" ;;
reap) cmd_reap ;;
*) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
