#!/usr/bin/env bash
# Run the fedge Flower App on real Flower processes on this machine.
#
# Starts one `flower-superlink` and N `flower-supernode`s (default 2) on loopback, each
# SuperNode told its partition with --node-config, writes a private Flower config (its
# own FLWR_HOME under the work dir), submits the app with `flwr run . <connection>
# --stream`, checks that the run finished successfully and stops every process it
# started (SIGTERM, then SIGKILL after a grace period) on exit, error or Ctrl-C.
#
# In --tls mode (the default) the script makes a throwaway CA and a server certificate
# for 127.0.0.1/localhost with openssl; SuperNodes and the flwr CLI verify the SuperLink
# against that CA.
#
# Usage: scripts/local-deployment.sh [--tls|--insecure] [--port-base PORT]
#            [--work-dir DIR] [--supernodes N] [--timeout SECONDS]
#            [--run-config 'KEY=VALUE ...']... [KEY=VALUE]...
set -euo pipefail

readonly SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly APP_DIR="$(dirname "$SCRIPT_DIR")"
readonly CONNECTION="fedge-local"
readonly GRACE_SECONDS=15

usage() {
    cat <<EOF
Usage: $(basename "$0") [options] [KEY=VALUE ...]

Run the fedge app on one flower-superlink and N flower-supernodes on 127.0.0.1.

Options:
  --tls                  TLS with a CA and server certificate made here (default)
  --insecure             plain HTTP, no certificates
  --port-base PORT       SuperLink on PORT, SuperNode i's ClientApp API on PORT+1+i
                         (default: free ports picked at start)
  --work-dir DIR         certificates, Flower homes, logs and outputs
                         (default: a new directory under \${TMPDIR:-/tmp})
  --supernodes N         number of SuperNodes / partitions (default: 2)
  --timeout SECONDS      give up on the run after this long (default: 900)
  -c, --run-config STR   run-config overrides for \`flwr run\`, e.g. 'num-server-rounds=2';
                         repeatable; bare KEY=VALUE arguments are forwarded the same way
  -h, --help             show this help

Unless overridden, output-dir is <work-dir>/outputs and run-name is "deployment".
EOF
}

say() {
    echo "[$(date +%H:%M:%S)] local-deployment: $*"
}

die() {
    echo "[$(date +%H:%M:%S)] local-deployment: error: $*" >&2
    exit 1
}

# --- arguments ---------------------------------------------------------------------
mode="tls"
port_base=""
work_dir=""
num_supernodes=2
timeout_s=900
user_run_config=()
while (($#)); do
    case "$1" in
        --tls) mode="tls" ;;
        --insecure) mode="insecure" ;;
        --port-base) port_base="${2:?--port-base needs a port}"; shift ;;
        --port-base=*) port_base="${1#*=}" ;;
        --work-dir) work_dir="${2:?--work-dir needs a directory}"; shift ;;
        --work-dir=*) work_dir="${1#*=}" ;;
        --supernodes) num_supernodes="${2:?--supernodes needs a number}"; shift ;;
        --supernodes=*) num_supernodes="${1#*=}" ;;
        --timeout) timeout_s="${2:?--timeout needs seconds}"; shift ;;
        --timeout=*) timeout_s="${1#*=}" ;;
        -c | --run-config) user_run_config+=("${2:?--run-config needs KEY=VALUE pairs}"); shift ;;
        --run-config=*) user_run_config+=("${1#*=}") ;;
        -h | --help) usage; exit 0 ;;
        *=*) user_run_config+=("$1") ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
    shift
done
[[ "$num_supernodes" =~ ^[1-9][0-9]*$ ]] || die "--supernodes must be a positive whole number"
[[ "$timeout_s" =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive whole number of seconds"
if [[ -n "$port_base" ]]; then
    [[ "$port_base" =~ ^[0-9]+$ ]] && ((port_base >= 1024 && port_base + num_supernodes <= 65535)) \
        || die "--port-base must be a port in 1024..$((65535 - num_supernodes))"
fi

# --- environment: the app's venv, no network, no dependency install ------------------
if [[ -x "$APP_DIR/.venv/bin/python" ]]; then
    export PATH="$APP_DIR/.venv/bin:$PATH"
fi
for tool in python flwr flower-superlink flower-supernode; do
    command -v "$tool" >/dev/null \
        || die "'$tool' not found; create $APP_DIR/.venv with 'bash scripts/setup.sh' (or pip install -e \".[train]\") or put it on PATH"
done
if [[ "$mode" == "tls" ]]; then
    command -v openssl >/dev/null || die "'openssl' not found; install it or use --insecure"
fi
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1  # the venv already has the deps
export FLWR_DISABLE_UPDATE_CHECK=1
export FLWR_TELEMETRY_ENABLED=0
export TF_CPP_MIN_LOG_LEVEL=2
export PYTHONUNBUFFERED=1

# Helpers below reuse fedge's own code (free_port, format_run_config, RunConfig).
app_python() {
    PYTHONPATH="$APP_DIR${PYTHONPATH:+:$PYTHONPATH}" python "$@"
}

if [[ -z "$work_dir" ]]; then
    work_dir="$(mktemp -d "${TMPDIR:-/tmp}/fedge-deployment.XXXXXX")"
fi
mkdir -p "$work_dir"
work_dir="$(cd "$work_dir" && pwd)"
readonly log_dir="$work_dir/logs"
mkdir -p "$log_dir" "$work_dir/pids"

# --- ports ---------------------------------------------------------------------------
if [[ -n "$port_base" ]]; then
    ports=()
    for ((i = 0; i <= num_supernodes; i++)); do ports+=($((port_base + i))); done
else
    read -r -a ports < <(
        app_python - "$((num_supernodes + 1))" <<'PY'
import sys
from fedge.local_federation import free_port
wanted, ports = int(sys.argv[1]), []
while len(ports) < wanted:
    port = free_port()
    if port not in ports:
        ports.append(port)
print(*ports)
PY
    )
fi
((${#ports[@]} == num_supernodes + 1)) || die "could not pick free ports; pass --port-base"
readonly superlink_port="${ports[0]}"
readonly superlink_address="127.0.0.1:$superlink_port"
for port in "${ports[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is already in use; pick another --port-base"
    fi
done

# --- run config: our defaults, then the caller's overrides (later ones win) ---------
default_run_config="$(
    app_python - "$work_dir/outputs" <<'PY'
import sys
from fedge.local_federation import format_run_config
print(format_run_config({"output-dir": sys.argv[1], "run-name": "deployment"}))
PY
)"
run_config_args=(--run-config "$default_run_config")
for item in ${user_run_config[@]+"${user_run_config[@]}"}; do
    run_config_args+=(--run-config "$item")
done
# Validate the merged config now (clear error before any process starts) and learn
# where the ServerApp will write. A relative output-dir is relative to the SuperLink's
# working directory, which is <work-dir>/superlink.
run_dir="$(
    app_python - "$APP_DIR" "$work_dir/superlink" \
        "$default_run_config" ${user_run_config[@]+"${user_run_config[@]}"} <<'PY'
import sys
import tomllib
from pathlib import Path

from flwr.common.config import parse_config_args

from fedge.core.errors import FedgeError
from fedge.core.run_config import RunConfig
from server.run_directory import default_run_name

app_dir, cwd, overrides = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
pyproject = tomllib.loads((app_dir / "pyproject.toml").read_text())
values = dict(pyproject["tool"]["flwr"]["app"]["config"])
for item in overrides:
    values.update(parse_config_args([item]))
try:
    cfg = RunConfig.from_mapping(values)
except FedgeError as err:
    sys.exit(f"local-deployment: error: invalid run config: {err}")
print((cwd / Path(cfg.output_dir).expanduser()).resolve() / (cfg.run_name or default_run_name(cfg)))
PY
)" || exit 1

# --- process bookkeeping and shutdown ------------------------------------------------
names=()  # long-running processes we started, by name
pids=()
flwr_pid=""

alive() {
    local state
    state="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
    [[ "$state" != Z* ]]
}

# The given PIDs and all their descendants (Flower starts SuperExec and App processes).
with_descendants() {
    ps -e -o pid=,ppid= | awk -v roots="$*" '
        BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
        { parent[$1] = $2 }
        END {
            do {
                changed = 0
                for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 }
            } while (changed)
            for (p in keep) print p
        }'
}

# SIGTERM to every process of the deployment (SuperLink, SuperNodes, the SuperExecs and
# App processes they spawned, `flwr run`), then SIGKILL what is left after the grace period.
stop_all() {
    local roots=() tracked=() live=() signalled=" " pid deadline
    [[ -n "$flwr_pid" ]] && roots+=("$flwr_pid")
    roots+=(${pids[@]+"${pids[@]}"})
    ((${#roots[@]})) || return 0
    tracked=("${roots[@]}")
    deadline=$((SECONDS + GRACE_SECONDS))
    while :; do
        # follow children spawned while shutting down, too
        mapfile -t tracked < <(with_descendants "${tracked[@]}")
        live=()
        for pid in "${tracked[@]}"; do
            alive "$pid" || continue
            live+=("$pid")
            if [[ "$signalled" != *" $pid "* ]]; then
                kill -TERM "$pid" 2>/dev/null || true
                signalled+="$pid "
            fi
        done
        ((${#live[@]})) || break
        tracked=("${live[@]}")
        if ((SECONDS >= deadline)); then
            say "SIGKILL for processes still running after ${GRACE_SECONDS}s: ${live[*]}" >&2
            kill -KILL "${live[@]}" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    wait 2>/dev/null || true  # reap our direct children
}

on_exit() {
    local code=$?
    set +e
    trap - EXIT INT TERM
    say "stopping all processes"
    stop_all
    echo "Logs:    $log_dir"
    if [[ -s "$run_dir/metrics.jsonl" ]]; then
        echo "Metrics: $run_dir/metrics.jsonl"
    else
        echo "Metrics: none written (expected $run_dir/metrics.jsonl)"
    fi
    if ((code == 0)); then
        say "run succeeded ($mode)"
    else
        say "FAILED (exit $code)" >&2
    fi
    exit "$code"
}
trap on_exit EXIT
trap 'say "interrupted" >&2; exit 130' INT
trap 'say "terminated" >&2; exit 143' TERM

log_tail() {
    echo "--- last lines of $1 ---" >&2
    tail -n 20 "$1" >&2 || true
}

# start NAME COMMAND...: run in <work-dir>/NAME with its own FLWR_HOME, log to logs/NAME.log
start() {
    local name="$1"
    shift
    mkdir -p "$work_dir/$name/flwr-home"
    (cd "$work_dir/$name" && FLWR_HOME="$work_dir/$name/flwr-home" exec "$@") \
        >"$log_dir/$name.log" 2>&1 </dev/null &
    names+=("$name")
    pids+=("$!")
    echo "$!" >"$work_dir/pids/$name.pid"
    say "started $name (pid $!): $*"
}

check_alive() {
    local i
    for i in "${!pids[@]}"; do
        if ! alive "${pids[$i]}"; then
            local code=0
            wait "${pids[$i]}" 2>/dev/null || code=$?
            log_tail "$log_dir/${names[$i]}.log"
            die "${names[$i]} (pid ${pids[$i]}) exited early with status $code; log: $log_dir/${names[$i]}.log"
        fi
    done
}

wait_for_port() {
    local port="$1" what="$2" deadline=$((SECONDS + 60))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        check_alive
        ((SECONDS < deadline)) || die "$what is not listening on 127.0.0.1:$port after 60s"
        sleep 0.3
    done
}

# --- TLS material --------------------------------------------------------------------
cert_dir="$work_dir/certs"
tls_link_args=(--insecure)
tls_node_args=(--insecure)
if [[ "$mode" == "tls" ]]; then
    mkdir -p "$cert_dir"
    (
        cd "$cert_dir"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
            -subj "/CN=fedge local deployment CA" -keyout ca.key -out ca.crt \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
        cat >server.ext <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost
EOF
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 \
            -extfile server.ext -out server.crt
        openssl verify -CAfile ca.crt server.crt
        chmod 600 ca.key server.key
    ) >"$log_dir/openssl.log" 2>&1 || { log_tail "$log_dir/openssl.log"; die "openssl failed"; }
    tls_link_args=(--ssl-ca-certfile "$cert_dir/ca.crt" --ssl-certfile "$cert_dir/server.crt"
        --ssl-keyfile "$cert_dir/server.key")
    tls_node_args=(--root-certificates "$cert_dir/ca.crt")
fi

# --- private Flower config for the flwr CLI ------------------------------------------
export FLWR_HOME="$work_dir/cli/flwr-home"
mkdir -p "$FLWR_HOME"
{
    echo "[superlink]"
    echo "default = \"$CONNECTION\""
    echo
    echo "[superlink.$CONNECTION]"
    echo "address = \"$superlink_address\""
    if [[ "$mode" == "tls" ]]; then
        echo "root-certificates = \"$cert_dir/ca.crt\""
    else
        echo "insecure = true"
    fi
} >"$FLWR_HOME/config.toml"

# --- processes -----------------------------------------------------------------------
say "$mode deployment in $work_dir (logs: $log_dir)"
start superlink flower-superlink --host 127.0.0.1 --port "$superlink_port" \
    "${tls_link_args[@]}" --disable-runtime-dependency-installation
wait_for_port "$superlink_port" superlink
for ((i = 0; i < num_supernodes; i++)); do
    # SuperNodes give up (and so show up as dead) if they cannot reach the SuperLink
    start "supernode-$i" flower-supernode --superlink "$superlink_address" \
        --port "${ports[$((i + 1))]}" "${tls_node_args[@]}" --max-wait-time 60 \
        --node-config "partition-id=$i num-partitions=$num_supernodes"
done
for ((i = 0; i < num_supernodes; i++)); do
    wait_for_port "${ports[$((i + 1))]}" "supernode-$i"
done

say "flwr run $APP_DIR $CONNECTION --stream ${run_config_args[*]@Q}"
run_log="$log_dir/flwr-run.log"
(cd "$APP_DIR" && exec flwr run . "$CONNECTION" --stream "${run_config_args[@]}") \
    > >(tee "$run_log") 2>&1 </dev/null &
flwr_pid=$!
deadline=$((SECONDS + timeout_s))
while alive "$flwr_pid"; do
    check_alive
    if ((SECONDS >= deadline)); then
        die "the run did not finish within ${timeout_s}s; log: $run_log"
    fi
    sleep 0.5
done
run_code=0
wait "$flwr_pid" || run_code=$?
flwr_pid=""
sleep 0.2  # let tee flush the log

# --- did the run succeed? ------------------------------------------------------------
((run_code == 0)) || die "'flwr run' exited with status $run_code; log: $run_log"
if grep -q -e "An unhandled exception occurred" -e "Exit Code:" "$run_log"; then
    die "the run reported an error; log: $run_log"
fi
run_id="$(grep -o -E 'Successfully started run [0-9]+' "$run_log" | grep -o -E '[0-9]+$' | head -n 1)" \
    || die "no run id in the 'flwr run' output; log: $run_log"
status_json="$(flwr ls "$CONNECTION" --run-id "$run_id" --format json 2>&1)" \
    || die "'flwr ls' failed: $status_json"
run_status="$(
    python -c 'import json, sys; runs = json.loads(sys.argv[1])["runs"]; print(runs[0]["status"])' \
        "$status_json"
)" || die "cannot read the run status from 'flwr ls': $status_json"
[[ "$run_status" == "finished:completed" ]] \
    || die "run $run_id ended with status '$run_status' (expected finished:completed)"
say "run $run_id: $run_status"
[[ -s "$run_dir/metrics.jsonl" ]] || die "the run wrote no $run_dir/metrics.jsonl"
