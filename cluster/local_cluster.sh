#!/usr/bin/env bash
# psfm local multi-node Ray cluster: a head plus N worker nodes on this one machine, each node its
# own raylet (its own `ray start --block` process, Ray temp dir and ports), all bound to 127.0.0.1,
# with Ray token authentication on (RAY_AUTH_MODE=token, token file in DIR, mode 600).
# Nodes are started through cluster/ray_node.py, a thin wrapper of `ray start` that keeps them on
# 127.0.0.1 (plain `ray start` rewrites 127.0.0.1 to the host's routable IP and listens on all
# interfaces); clients need RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which `env` prints.
#
#   cluster/local_cluster.sh start [--workers N] [--cpus-per-node C] [--head-cpus C]
#                                  [--object-store-mb M] [--port P] [--timeout S] [--dir DIR]
#   cluster/local_cluster.sh add-node [--cpus-per-node C] [--dir DIR] # one more worker node
#   cluster/local_cluster.sh stop    [--purge] [--dir DIR]
#   cluster/local_cluster.sh status  [--dir DIR]
#   cluster/local_cluster.sh address [--dir DIR]     # GCS address, e.g. 127.0.0.1:41234
#   cluster/local_cluster.sh env     [--dir DIR]     # eval "$(cluster/local_cluster.sh env)"
#
# Resources: the head gets {"psfm_driver": 1} and --head-cpus CPUs (default 1); each worker node
# gets {"psfm_shard": 1, "psfm_worker": 1} and --cpus-per-node CPUs (default 2: one shard plus one
# worker at psfm's default ray.shard_cpus = ray.worker_cpus = 1). --object-store-mb (default 256)
# per node. Start waits up to --timeout seconds (default 90) for every node to be alive.
#
# Stop is targeted: every node runs in its own session (setsid), so `stop` signals exactly the
# `ray start --block` processes it started and then sweeps what is left of their sessions
# (raylet, GCS, dashboard, agents, core workers). It never calls `ray stop`, which would kill
# every Ray process on the machine.
#
# DIR (state, token, logs) defaults to $PSFM_CLUSTER_DIR, else ${TMPDIR:-/tmp}/psfm-cluster-$UID.
# PYTHON: the interpreter that has ray (default python3).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)

PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
DIR=${PSFM_CLUSTER_DIR:-${TMPDIR:-/tmp}/psfm-cluster-$(id -u)}
WORKERS=2
CPUS=2
HEAD_CPUS=1
OSM_MB=256
GCS_PORT=
TIMEOUT=90
PURGE=0
GRACE=15

die() { echo "local_cluster.sh: error: $*" >&2; exit 1; }
log() { echo "local_cluster.sh: $*" >&2; }

usage() {
    sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'
}

cmd=${1:-}
[ -n "$cmd" ] || { usage; exit 2; }
shift
while [ $# -gt 0 ]; do
    case $1 in
        --workers) WORKERS=${2:?}; shift 2 ;;
        --workers=*) WORKERS=${1#*=}; shift ;;
        --cpus-per-node) CPUS=${2:?}; shift 2 ;;
        --cpus-per-node=*) CPUS=${1#*=}; shift ;;
        --head-cpus) HEAD_CPUS=${2:?}; shift 2 ;;
        --head-cpus=*) HEAD_CPUS=${1#*=}; shift ;;
        --object-store-mb) OSM_MB=${2:?}; shift 2 ;;
        --object-store-mb=*) OSM_MB=${1#*=}; shift ;;
        --port) GCS_PORT=${2:?}; shift 2 ;;
        --port=*) GCS_PORT=${1#*=}; shift ;;
        --timeout) TIMEOUT=${2:?}; shift 2 ;;
        --timeout=*) TIMEOUT=${1#*=}; shift ;;
        --dir) DIR=${2:?}; shift 2 ;;
        --dir=*) DIR=${1#*=}; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_uint "$WORKERS" || die "--workers must be a non-negative integer"
is_uint "$CPUS" || die "--cpus-per-node must be a non-negative integer"
is_uint "$HEAD_CPUS" || die "--head-cpus must be a non-negative integer"
is_uint "$OSM_MB" && [ "$OSM_MB" -ge 80 ] || die "--object-store-mb must be an integer >= 80"
is_uint "$TIMEOUT" || die "--timeout must be a non-negative integer"
[ -z "$GCS_PORT" ] || is_uint "$GCS_PORT" || die "--port must be an integer"

if [ "$cmd" = start ]; then
    mkdir -p "$DIR" 2>/dev/null || die "cannot create $DIR"
fi
[ ! -d "$DIR" ] || DIR=$(cd "$DIR" && pwd -P)
STATE=$DIR/cluster.env
TOKEN_FILE=$DIR/auth_token
PID_DIR=$DIR/pids
LOG_DIR=$DIR/logs

# The environment every Ray process of this cluster (and every client of it) runs with. The token
# is read from the file (RAY_AUTH_TOKEN_PATH); RAY_AUTH_TOKEN is unset because it would take
# precedence over the file, and ~/.ray/auth_token (the default, which `ray.init()` writes on this
# machine) is never read because RAY_AUTH_TOKEN_PATH is set. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# keeps Ray from rewriting 127.0.0.1 to the routable IP (see cluster/ray_node.py).
ray_env() {
    env -u RAY_AUTH_TOKEN -u RAY_ADDRESS -u RAY_API_SERVER_ADDRESS \
        RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$TOKEN_FILE" \
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 "$@"
}

# Ray temp dirs of the nodes: DIR/ray/nI. Unix socket paths (ROOT/nI/session_<date>_<pid>/sockets/
# plasma_store) must stay under 107 bytes, so for a long DIR the nodes get ROOT =
# /tmp/psfm-ray-<cksum of DIR>, a symlink to DIR/ray (removed again by stop).
default_ray_tmp_root() {
    if [ ${#DIR} -le 36 ]; then
        echo "$DIR/ray"
    else
        echo "/tmp/psfm-ray-$(printf %s "$DIR" | cksum | cut -d' ' -f1)"
    fi
}

load_state() {
    [ -f "$STATE" ] || return 1
    # shellcheck disable=SC1090
    . "$STATE"
}

# cluster_pids MODE SIDS ROOT: processes of this cluster. SIDS are the recorded pids of the
# `ray start --block` processes, each the leader of its own session (setsid). A recorded pid
# counts only if that process is gone (the kernel does not reuse a pid while it is still some
# process's session id, so the session's remaining members are ours) or is still our
# `ray_node.py --temp-dir=ROOT/n...` (guards against pid reuse). MODE=leaders prints the live,
# verified leaders; MODE=all prints every member of those sessions plus any process whose command
# line names ROOT/ (this cluster's Ray temp dir).
cluster_pids() {
    "$PYTHON" - "$1" "$2" "$3" <<'PY'
import os, sys
mode, sids, root = sys.argv[1], [int(s) for s in sys.argv[2].split(",") if s], sys.argv[3]
me = os.getpid()

def read(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        fields = stat[stat.rindex(")") + 2:].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        return fields[0], int(fields[3]), cmdline
    except (OSError, ValueError, IndexError):
        return None

def ours(cmdline):
    return "ray_node.py" in cmdline and f"--temp-dir={root}/n" in cmdline

valid, leaders = set(), []
for sid in sids:
    info = read(sid)
    if info is None or info[0] == "Z":
        valid.add(sid)
    elif ours(info[2]):
        valid.add(sid)
        leaders.append(sid)
if mode == "leaders":
    print("\n".join(map(str, leaders)))
    sys.exit(0)
for d in os.listdir("/proc"):
    if not d.isdigit() or int(d) == me:
        continue
    info = read(int(d))
    if info is None or info[0] == "Z":
        continue
    if info[1] in valid or (root and root + "/" in info[2]):
        print(d)
PY
}

node_sids() {
    local f sids=
    for f in "$PID_DIR"/node*.pid; do
        [ -f "$f" ] || continue
        sids=$sids$(cat "$f"),
    done
    echo "${sids%,}"
}

pick_ports() { # pick_ports N -> N distinct free TCP ports on 127.0.0.1
    "$PYTHON" - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

do_stop() {
    local sids pids root=${RAY_TMP_ROOT:-}
    [ -n "$root" ] || root=$(default_ray_tmp_root)
    if [ ! -d "$PID_DIR" ] && [ ! -f "$STATE" ]; then
        log "no cluster in $DIR (nothing to stop)"
        [ "$PURGE" = 0 ] || purge "$root"
        return 0
    fi
    sids=$(node_sids)
    # 1. SIGTERM each `ray start --block` (worker nodes first, the head last): its handler stops
    #    the node's processes gracefully.
    local leaders f pid
    leaders=" $(cluster_pids leaders "$sids" "$root" | tr '\n' ' ') "
    for f in $(printf '%s\n' "$PID_DIR"/node*.pid | sort -rV); do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        [[ $leaders == *" $pid "* ]] && kill -TERM "$pid" 2>/dev/null || true
    done
    # 2. Wait for the sessions to drain, then SIGKILL whatever is left. Drained means empty at
    #    two looks 0.5 s apart: a process shutting down can still fork one (the dashboard's
    #    multiprocessing forkserver) after a look that found nothing.
    local deadline=$((SECONDS + GRACE)) empty=0
    while :; do
        pids=$(cluster_pids all "$sids" "$root")
        if [ -z "$pids" ]; then
            empty=$((empty + 1))
            [ "$empty" -ge 2 ] && break
            sleep 0.5
            continue
        fi
        empty=0
        if [ $SECONDS -ge $deadline ]; then
            local -a leftover
            mapfile -t leftover <<<"$pids"
            log "killing leftover processes: ${leftover[*]}"
            kill -KILL "${leftover[@]}" 2>/dev/null || true
            sleep 1
            pids=$(cluster_pids all "$sids" "$root")
            [ -z "$pids" ] || die "processes of the cluster in $DIR survived SIGKILL: ${pids//$'\n'/ }"
            break
        fi
        sleep 0.5
    done
    rm -rf "$PID_DIR"
    rm -f "$STATE" "$TOKEN_FILE"
    if [ -L "$root" ]; then rm -f "$root"; fi
    [ "$PURGE" = 0 ] || purge "$root"
    log "stopped the cluster in $DIR"
}

purge() { # remove the logs and Ray temp dirs (only what start creates), then DIR if empty
    [ -d "$DIR" ] || return 0
    rm -rf "$LOG_DIR" "$DIR/ray" "$1"
    rmdir "$DIR" 2>/dev/null || true
}

tail_logs() {
    local f
    for f in "$LOG_DIR"/node*.log; do
        [ -f "$f" ] || continue
        echo "----- $f (last 25 lines)" >&2
        tail -n 25 "$f" >&2 || true
    done
}

fail_start() {
    log "start failed: $*"
    tail_logs
    log "stopping the partial cluster"
    do_stop || true
    exit 1
}

start_node() { # start_node INDEX ARGS... ; records the pid (= session id) in pids/nodeI.pid
    local i=$1 agent_port; shift
    agent_port=$(pick_ports 1)
    # `( exec env ... setsid python ... ) &`: the subshell execs env, env execs setsid, and setsid
    # calls setsid() and execs python in place (a background job of a non-interactive shell is no
    # process-group leader, so setsid does not fork). $! is therefore both the pid of
    # `ray start --block` and the id of the node's session.
    (
        exec env -u RAY_AUTH_TOKEN -u RAY_ADDRESS -u RAY_API_SERVER_ADDRESS \
            RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$TOKEN_FILE" \
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 \
            RAY_max_direct_call_object_size=4194304 \
            setsid "$PYTHON" "$HERE/ray_node.py" --block \
            --node-ip-address=127.0.0.1 --temp-dir="$RAY_TMP_ROOT/n$i" \
            --object-store-memory=$((OSM_MB * 1024 * 1024)) --num-gpus=0 \
            --dashboard-agent-listen-port="$agent_port" \
            --disable-usage-stats --log-style=record --log-color=false "$@" \
            >"$LOG_DIR/node$i.log" 2>&1 </dev/null
    ) &
    echo $! >"$PID_DIR/node$i.pid"
}

do_start() {
    if [ -f "$STATE" ] || [ -d "$PID_DIR" ]; then
        if load_state && [ -n "$(cluster_pids all "$(node_sids)" "${RAY_TMP_ROOT:-}")" ]; then
            die "a cluster is already running in $DIR ($GCS_ADDRESS); stop it first"
        fi
        log "removing stale state in $DIR"
        do_stop
        mkdir -p "$DIR"
    fi
    "$PYTHON" -c 'import ray' 2>/dev/null || die "$PYTHON cannot import ray (set PYTHON=...)"
    command -v setsid >/dev/null || die "setsid (util-linux) is required"

    RAY_TMP_ROOT=$(default_ray_tmp_root)
    mkdir -p "$PID_DIR" "$LOG_DIR" "$DIR/ray"
    if [ "$RAY_TMP_ROOT" != "$DIR/ray" ] && { [ -L "$RAY_TMP_ROOT" ] || [ ! -e "$RAY_TMP_ROOT" ]; }
    then
        ln -sfn "$DIR/ray" "$RAY_TMP_ROOT"
    fi
    mkdir -p "$RAY_TMP_ROOT"

    # Fresh token, mode 600 from the start.
    (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' \
        >"$TOKEN_FILE")
    chmod 600 "$TOKEN_FILE"

    local ports
    read -r -a ports <<<"$(pick_ports 3)"
    GCS_PORT=${GCS_PORT:-${ports[0]}}
    local dash_port=${ports[1]} client_port=${ports[2]}
    GCS_ADDRESS=127.0.0.1:$GCS_PORT
    DASHBOARD_URL=http://127.0.0.1:$dash_port
    cat >"$STATE" <<EOF
GCS_ADDRESS=$GCS_ADDRESS
DASHBOARD_URL=$DASHBOARD_URL
RAY_TMP_ROOT=$RAY_TMP_ROOT
NUM_WORKERS=$WORKERS
EOF

    local t0=$SECONDS
    # From here on, an interrupted or failed start leaves no node behind.
    trap 'fail_start "interrupted"' INT TERM
    rm -f "$RAY_TMP_ROOT/n0/ray_current_cluster"
    log "starting head at $GCS_ADDRESS (dashboard $DASHBOARD_URL, Ray temp $RAY_TMP_ROOT)"
    start_node 0 --head --port="$GCS_PORT" --num-cpus="$HEAD_CPUS" \
        --resources='{"psfm_driver": 1}' \
        --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$dash_port" \
        --ray-client-server-port="$client_port"
    # The head writes its address file once its GCS and raylet are up.
    local deadline=$((SECONDS + TIMEOUT))
    until [ "$(cat "$RAY_TMP_ROOT/n0/ray_current_cluster" 2>/dev/null)" = "$GCS_ADDRESS" ]; do
        kill -0 "$(cat "$PID_DIR/node0.pid")" 2>/dev/null || fail_start "the head node exited"
        [ $SECONDS -lt $deadline ] || fail_start "the head node did not come up in ${TIMEOUT}s"
        sleep 0.5
    done

    local i
    for ((i = 1; i <= WORKERS; i++)); do
        start_node "$i" --address="$GCS_ADDRESS" --num-cpus="$CPUS" \
            --resources='{"psfm_shard": 1, "psfm_worker": 1}'
    done

    # Wait until every node is alive in the GCS with its resources.
    local left=$((deadline - SECONDS))
    [ $left -gt 5 ] || left=5
    if ! ray_env "$PYTHON" - "$GCS_ADDRESS" "$WORKERS" "$left" "$PID_DIR" <<'PY'
import os, sys, time
import ray

addr, workers, timeout, pid_dir = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + timeout

def node_procs_alive():
    for name in os.listdir(pid_dir):
        with open(os.path.join(pid_dir, name)) as f:
            pid = int(f.read())
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(f"node process {name} ({pid}) exited")

ray.init(address=addr, logging_level="ERROR", log_to_driver=False)
while True:
    node_procs_alive()
    alive = [n for n in ray.nodes() if n["Alive"]]
    heads = [n for n in alive if n["Resources"].get("psfm_driver")]
    shards = [n for n in alive if n["Resources"].get("psfm_shard")
              and n["Resources"].get("psfm_worker")]
    if len(alive) == workers + 1 and len(heads) == 1 and len(shards) == workers:
        ips = sorted({n["NodeManagerAddress"] for n in alive})
        if ips != ["127.0.0.1"]:
            sys.exit(f"nodes are not on 127.0.0.1: {ips}")
        break
    if time.monotonic() > deadline:
        sys.exit(f"only {len(alive)} of {workers + 1} nodes alive after {timeout:.0f}s")
    time.sleep(0.5)
ray.shutdown()
PY
    then
        fail_start "not all nodes came up"
    fi
    trap - INT TERM
    log "cluster up in $((SECONDS - t0))s: head + $WORKERS worker nodes at $GCS_ADDRESS"
    echo "$GCS_ADDRESS"
}

do_status() {
    load_state || { echo "no cluster in $DIR"; return 3; }
    echo "dir        $DIR"
    echo "address    $GCS_ADDRESS"
    echo "dashboard  $DASHBOARD_URL"
    echo "ray temp   $RAY_TMP_ROOT"
    local f pid state rc=0
    for f in $(printf '%s\n' "$PID_DIR"/node*.pid | sort -V); do
        [ -f "$f" ] || continue
        pid=$(cat "$f"); state=dead
        kill -0 "$pid" 2>/dev/null && state=running || rc=1
        printf '%-10s pid %-8s %s\n' "$(basename "$f" .pid)" "$pid" "$state"
    done
    ray_env "$PYTHON" -m ray.scripts.scripts status --address="$GCS_ADDRESS" || rc=1
    return $rc
}

do_env() {
    load_state || die "no cluster in $DIR (run: $0 start --dir $DIR)"
    printf 'export RAY_ADDRESS=%q\n' "$GCS_ADDRESS"
    printf 'export RAY_AUTH_MODE=token\n'
    printf 'export RAY_AUTH_TOKEN_PATH=%q\n' "$TOKEN_FILE"
    printf 'export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0\n'
    printf 'unset RAY_AUTH_TOKEN RAY_API_SERVER_ADDRESS\n'
    printf '# dashboard and job API: %s (ray job submit finds it from RAY_ADDRESS)\n' \
        "$DASHBOARD_URL"
}

do_add_node() { # one more worker node joined to the running head (e.g. to replace a lost one)
    load_state || die "no cluster in $DIR (run: $0 start --dir $DIR)"
    [ -n "$(cluster_pids leaders "$(node_sids)" "$RAY_TMP_ROOT")" ] \
        || die "the cluster in $DIR is not running"
    local i=1
    while [ -e "$PID_DIR/node$i.pid" ]; do i=$((i + 1)); done
    start_node "$i" --address="$GCS_ADDRESS" --num-cpus="$CPUS" \
        --resources='{"psfm_shard": 1, "psfm_worker": 1}'
    # alive in the GCS: the node whose raylet socket is under its own temp dir
    ray_env "$PYTHON" - "$GCS_ADDRESS" "$RAY_TMP_ROOT/n$i/" "$TIMEOUT" "$PID_DIR/node$i.pid" \
        <<'PY' || { tail_logs; die "node $i did not join"; }
import os, sys, time
import ray

addr, where, timeout, pid_file = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + timeout
ray.init(address=addr, logging_level="ERROR", log_to_driver=False)
while not any(n["Alive"] and where in n.get("RayletSocketName", "") for n in ray.nodes()):
    os.kill(int(open(pid_file).read()), 0)  # the node's process exited: ProcessLookupError
    if time.monotonic() > deadline:
        sys.exit(f"not alive after {timeout:.0f}s")
    time.sleep(0.5)
PY
    log "node $i joined $GCS_ADDRESS"
}

case $cmd in
    start) do_start ;;
    add-node) do_add_node ;;
    stop) load_state || true; do_stop ;;
    status) do_status ;;
    address) load_state || die "no cluster in $DIR"; echo "$GCS_ADDRESS" ;;
    env) do_env ;;
    -h|--help|help) usage ;;
    *) usage; exit 2 ;;
esac
