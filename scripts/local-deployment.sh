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
# With --task person-detector the whole loop runs on real processes, one site per
# SuperNode: `fedge cloud` (TLS with the same CA, one bearer token per site) labels the
# sites' hard cases, and at each site i an edge agent, `fedge edge --detector-dir --loop
# --realtime`, replays its own segment of the clip like a camera. It starts in cold
# start (no detector installed yet), stores frames and gets cloud labels for its hard
# cases; training starts only when every store holds --min-labelled cloud-labelled
# frames with people. The SuperNode of site i trains on that store and installs each
# round's exported model into <store>/detector, which the agent follows, swapping each
# new version in between frames. At the end every agent must run the last round's
# version, every round's model must be installed on every site, and every store must
# hold cloud labels.
#
# Usage: scripts/local-deployment.sh [--tls|--insecure] [--port-base PORT]
#            [--work-dir DIR] [--supernodes|--sites N] [--timeout SECONDS]
#            [--task fashion-mnist|person-detector] [--rounds R] [--min-labelled K]
#            [--clip FILE] [--camera-fps F] [--privacy MODE]
#            [--run-config 'KEY=VALUE ...']... [KEY=VALUE]...
set -euo pipefail

readonly SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly APP_DIR="$(dirname "$SCRIPT_DIR")"
readonly CONNECTION="fedge-local"
readonly GRACE_SECONDS=15
readonly DETECTOR_TASK="person-detector"
readonly COLLECT_TIMEOUT_S=300  # for the cloud labels every site needs before training
readonly CATCH_UP_TIMEOUT_S=120  # for every agent to run the last version after the run

usage() {
    cat <<EOF
Usage: $(basename "$0") [options] [KEY=VALUE ...]

Run the fedge app on one flower-superlink and N flower-supernodes on 127.0.0.1.

Options:
  --tls                  TLS with a CA and server certificate made here (default)
  --insecure             plain HTTP, no certificates
  --port-base PORT       SuperLink on PORT, SuperNode i's ClientApp API on PORT+1+i
                         (person-detector: fedge cloud on PORT+1+N)
                         (default: free ports picked at start)
  --work-dir DIR         certificates, Flower homes, logs and outputs
                         (default: a new directory under \${TMPDIR:-/tmp})
  --supernodes N         number of SuperNodes / partitions / sites (default: 2)
  --sites N              the same as --supernodes
  --timeout SECONDS      give up on the run after this long (default: 900)
  --task NAME            fashion-mnist (the app's default) or person-detector
  --rounds R             federated rounds (num-server-rounds=R)
  -c, --run-config STR   run-config overrides for \`flwr run\`, e.g. 'num-server-rounds=2';
                         repeatable; bare KEY=VALUE arguments are forwarded the same way
  -h, --help             show this help

person-detector only:
  --min-labelled K       cloud-labelled frames with people each site must hold before
                         training starts (default: 3; 0: do not wait)
  --clip FILE            the video the sites share, one segment each
                         (default: data/samples/vtest_clip.mp4)
  --camera-fps F         frame rate the agents replay their segment at (default: 2)
  --privacy MODE         what the agents' hard cases reveal: landmarks, crops (default)
                         or frames (faces blurred on the node)
  --no-warm-worker       a cold ClientApp process per Flower message, as Flower runs it
                         (default: one warm training process per site, node config
                         warm-worker=true; see clients/warm_worker.py)

Unless overridden, output-dir is <work-dir>/outputs and run-name is "deployment". With
person-detector the run is kept short unless overridden: 2 rounds, 1 local epoch of at
most 16 frames in batches of 4, no federated evaluation (it needs cloud-labelled
held-out frames), min-available-nodes=N. Site i keeps its segment, store, model
versions and frame records (frames.jsonl) in <work-dir>/site-i.
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
cli_run_config=()  # from --task and --rounds; before the caller's --run-config items
min_labelled=3
clip="$APP_DIR/data/samples/vtest_clip.mp4"
camera_fps=2
warm_worker=true
privacy="crops"
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
        --sites) num_supernodes="${2:?--sites needs a number}"; shift ;;
        --sites=*) num_supernodes="${1#*=}" ;;
        --task) cli_run_config+=("task=\"${2:?--task needs a task name}\""); shift ;;
        --task=*) cli_run_config+=("task=\"${1#*=}\"") ;;
        --rounds) cli_run_config+=("num-server-rounds=${2:?--rounds needs a number}"); shift ;;
        --rounds=*) cli_run_config+=("num-server-rounds=${1#*=}") ;;
        --min-labelled) min_labelled="${2:?--min-labelled needs a number}"; shift ;;
        --min-labelled=*) min_labelled="${1#*=}" ;;
        --clip) clip="${2:?--clip needs a video file}"; shift ;;
        --clip=*) clip="${1#*=}" ;;
        --camera-fps) camera_fps="${2:?--camera-fps needs a frame rate}"; shift ;;
        --camera-fps=*) camera_fps="${1#*=}" ;;
        --no-warm-worker) warm_worker=false ;;
        --privacy) privacy="${2:?--privacy needs a mode}"; shift ;;
        --privacy=*) privacy="${1#*=}" ;;
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
[[ "$min_labelled" =~ ^[0-9]+$ ]] || die "--min-labelled must be a whole number (0: do not wait)"
[[ "$camera_fps" =~ ^[0-9]+([.][0-9]+)?$ && ! "$camera_fps" =~ ^0+([.]0*)?$ ]] \
    || die "--camera-fps must be a positive number of frames a second"
[[ "$privacy" =~ ^(landmarks|crops|frames)$ ]] \
    || die "--privacy takes landmarks, crops or frames (none sends nothing to label), not '$privacy'"
if [[ -n "$port_base" ]]; then
    # the highest port: fedge cloud's at PORT+1+N in a person-detector run
    [[ "$port_base" =~ ^[0-9]+$ ]] && ((port_base >= 1024 && port_base + num_supernodes + 1 <= 65535)) \
        || die "--port-base must be a port in 1024..$((65535 - num_supernodes - 1))"
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

# --- run config: our defaults, then the caller's overrides (later ones win) ---------
default_run_config="$(
    app_python - "$work_dir/outputs" <<'PY'
import sys
from fedge.local_federation import format_run_config
print(format_run_config({"output-dir": sys.argv[1], "run-name": "deployment"}))
PY
)"
# Validate the merged config now (clear error before any process starts) and learn
# where the ServerApp will write, and the task. A relative output-dir is relative to the
# SuperLink's working directory, which is <work-dir>/superlink. A person-detector run
# gets short-run defaults (usage) between ours and the caller's items.
run_config_items=(${cli_run_config[@]+"${cli_run_config[@]}"} ${user_run_config[@]+"${user_run_config[@]}"})
config_facts="$(
    app_python - "$APP_DIR" "$work_dir/superlink" "$num_supernodes" \
        "$default_run_config" ${run_config_items[@]+"${run_config_items[@]}"} <<'PY'
import os
import sys
import tomllib
from pathlib import Path

from flwr.common.config import parse_config_args

from fedge.core.errors import FedgeError
from fedge.core.run_config import RunConfig
from fedge.local_federation import format_run_config
from server.run_directory import default_run_name

app_dir, cwd, sites, ours = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
overrides = sys.argv[5:]
pyproject = tomllib.loads((app_dir / "pyproject.toml").read_text())


def merged(items: list[str]) -> RunConfig:
    values = dict(pyproject["tool"]["flwr"]["app"]["config"])
    for item in items:
        values.update(parse_config_args([item]))
    return RunConfig.from_mapping(values)


task_defaults = ""
try:
    cfg = merged([ours, *overrides])
    if cfg.task == "person-detector":
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        task_defaults = format_run_config(
            {
                "num-server-rounds": 2,
                "min-available-nodes": sites,
                "local-epochs": 1,
                "detector-batch-size": 4,
                "detector-max-frames": 16,
                "detector-int8-eval-every": 0,
                "fraction-evaluate": 0.0,
                "cpu-threads": max(1, cores // sites),  # the nodes share this machine
            }
        )
        cfg = merged([ours, task_defaults, *overrides])
except FedgeError as err:
    sys.exit(f"local-deployment: error: invalid run config: {err}")
print((cwd / Path(cfg.output_dir).expanduser()).resolve() / (cfg.run_name or default_run_name(cfg)))
print(cfg.task)
print(cfg.detector_export)
print(task_defaults)
PY
)" || exit 1
mapfile -t facts <<<"$config_facts"  # (the last line is empty for fashion-mnist)
run_dir="${facts[0]}"
task="${facts[1]:-}"
detector_export="${facts[2]:-}"
task_run_config="${facts[3]:-}"
run_config_args=(--run-config "$default_run_config")
if [[ -n "$task_run_config" ]]; then run_config_args+=(--run-config "$task_run_config"); fi
for item in ${run_config_items[@]+"${run_config_items[@]}"}; do
    run_config_args+=(--run-config "$item")
done
detector=false
if [[ "$task" == "$DETECTOR_TASK" ]]; then
    detector=true
    [[ "$detector_export" != "none" ]] \
        || die "detector-export=none: the sites would get no model to install; drop it"
    [[ "$work_dir" != *[\"\\]* ]] \
        || die "--work-dir must not contain '\"' or '\\' (it goes into --node-config)"
    [[ -r "$clip" ]] || die "--clip $clip is not a readable file"
    command -v fedge >/dev/null \
        || die "'fedge' not found; install the app into $APP_DIR/.venv (pip install -e .)"
    # every site keeps its models in <store>/detector (SuperNode and agent alike)
    unset FEDGE_DETECTOR_DIR
fi

# --- ports ---------------------------------------------------------------------------
# SuperLink, SuperNodes and (person-detector) fedge cloud
num_ports=$((num_supernodes + 1))
if $detector; then num_ports=$((num_ports + 1)); fi
if [[ -n "$port_base" ]]; then
    ports=()
    for ((i = 0; i < num_ports; i++)); do ports+=($((port_base + i))); done
else
    read -r -a ports < <(
        app_python - "$num_ports" <<'PY'
import sys
from fedge.core.ports import free_port
wanted, ports = int(sys.argv[1]), []
while len(ports) < wanted:
    port = free_port()
    if port not in ports:
        ports.append(port)
print(*ports)
PY
    )
fi
((${#ports[@]} == num_ports)) || die "could not pick free ports; pass --port-base"
readonly superlink_port="${ports[0]}"
readonly superlink_address="127.0.0.1:$superlink_port"
readonly cloud_port="${ports[$((num_supernodes + 1))]:-}"
for port in "${ports[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is already in use; pick another --port-base"
    fi
done

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

# Processes whose environment names one of this deployment's Flower homes, this script
# aside: what the deployment started, even a process no longer below the one that started
# it (a site's warm worker outlives the ClientApp process that started it).
of_this_deployment() {
    grep -lzF "FLWR_HOME=$work_dir/" /proc/[0-9]*/environ 2>/dev/null \
        | sed -e 's|^/proc/||' -e 's|/environ$||' | grep -vxF -e "$$" -e "$BASHPID"
    return 0
}

# SIGTERM to every process of the deployment (SuperLink, SuperNodes, the SuperExecs and
# App processes they spawned, warm workers, `flwr run`), then SIGKILL what is left after
# the grace period.
stop_all() {
    local roots=() tracked=() live=() signalled=" " pid deadline
    [[ -n "$flwr_pid" ]] && roots+=("$flwr_pid")
    roots+=(${pids[@]+"${pids[@]}"})
    ((${#roots[@]})) || return 0
    tracked=("${roots[@]}")
    deadline=$((SECONDS + GRACE_SECONDS))
    while :; do
        # follow children spawned while shutting down, too
        mapfile -t tracked < <({ with_descendants "${tracked[@]}"; of_this_deployment; } | sort -u)
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
    if $detector; then
        echo "Sites:   $work_dir/site-<i>/ (frames.jsonl, store/, store/detector/)"
    fi
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

# --- person-detector: the sites' material and checks ------------------------------------
# One Python helper, one subcommand per step (reads fedge's own stores, pointers, metrics).
read -r -d '' DETECTOR_PY <<'PY' || true
import json
import os
import secrets
import sys
from pathlib import Path


def fail(message: str) -> None:
    sys.exit(f"local-deployment: error: {message}")


def site(work: Path, i: int) -> Path:
    return work / f"site-{i}"


def last_record(path: Path) -> dict | None:
    """The last complete JSON line of an agent's frame records (None: none yet)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - (1 << 20)))
            lines = f.read().split(b"\n")
    except OSError:
        return None
    for line in reversed(lines[:-1]):  # lines[-1]: after the last newline
        if line.strip():
            return json.loads(line)
    return None


def segments(clip: str, sites: int, work: Path, fps: float) -> None:
    """Cut the clip into `sites` disjoint segments, site-i/clip.avi (Motion JPEG at `fps`:
    the rate the agents replay it at, like a camera)."""
    import cv2

    capture = cv2.VideoCapture(clip)
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    if len(frames) < sites:
        fail(f"--clip {clip}: {len(frames)} frames decoded, fewer than the {sites} sites")
    per_site = len(frames) // sites
    height, width = frames[0].shape[:2]
    for i in range(sites):
        path = site(work, i) / "clip.avi"
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
        if not writer.isOpened():
            fail(f"OpenCV cannot write the Motion JPEG video {path}")
        for index in range(i * per_site, (i + 1) * per_site):
            writer.write(frames[index])
        writer.release()
        print(f"site-{i}: clip frames {i * per_site}..{(i + 1) * per_site - 1} at {fps:g} fps")


def tokens(sites: int, work: Path) -> None:
    """One bearer token per site: the cloud's table and each site's own file (mode 600)."""
    table = []
    for i in range(sites):
        token = secrets.token_urlsafe(24)
        table.append(f"site-{i} {token}\n")
        path = site(work, i) / "token"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(token + "\n")
    path = work / "cloud" / "tokens"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text("".join(table))


def labelled_counts(sites: int, work: Path) -> list[dict]:
    """Per store: frames, frames per label status, and `people`: cloud-labelled frames
    with at least one person box (what the detector trains on at full weight)."""
    from data.frame_store import FrameStore, LabelStatus

    counts = []
    for i in range(sites):
        with FrameStore.open_reader(site(work, i) / "store") as store:
            status = store.status_counts()
            people = sum(
                1
                for frame in store.hard_cases(status=LabelStatus.LABELLED)
                if any(box.label == "person" for box in frame.frame_label.boxes)
            )
            counts.append(
                {
                    "frames": len(store),
                    "people": people,
                    **{s.value: status.get(s, 0) for s in LabelStatus},
                }
            )
    return counts


def labelled(sites: int, work: Path, least: int) -> None:
    """Each store holds at least `least` cloud-labelled frames with people."""
    short = []
    for i, c in enumerate(labelled_counts(sites, work)):
        print(
            f"site-{i}: {c['frames']} frames stored, {c['labelled']} cloud-labelled, "
            f"{c['people']} of them with people ({c['pending'] + c['sent']} waiting, "
            f"{c['failed']} failed, {c['suppressed']} suppressed)"
        )
        if c["people"] < least:
            short.append(f"site-{i} has {c['people']}")
    if short:
        fail(
            f"training needs {least} cloud-labelled frames with people per site: "
            f"{', '.join(short)}; see logs/agent-*.log and logs/cloud.log (pass "
            "--min-labelled to ask for fewer, --privacy frames, or a longer --clip)"
        )


def rounds(run_dir: Path, sites: int) -> None:
    """Every site sampled in a round trained, and every round's model was installed on
    every site; print the last round's version and its label."""
    from server.metrics_log import read_metrics

    rows = read_metrics(run_dir / "metrics.jsonl")
    if not rows:
        fail(f"{run_dir}/metrics.jsonl has no round")
    for row in rows:
        r = row["round"]
        trained = len(row.get("clients", []))
        lost = sorted(set(row.get("failed_nodes", []) + row.get("rejected_nodes", [])))
        if lost or not trained:
            fail(
                f"round {r}: {trained} sites trained, nodes {lost} failed or were rejected; "
                "see logs/supernode-*.log and logs/flwr-run.log"
            )
        model = row.get("model")
        if not model:
            fail(f"round {r} exported no model to send (detector-export?); see logs/flwr-run.log")
        installed = model.get("installed", {})
        if model["version"] != r or len(installed) != sites:
            fail(
                f"round {r}: model v{model['version']} installed on {len(installed)} of "
                f"{sites} sites (rejected: {model.get('rejected')}, no answer: "
                f"{model.get('failed')}); see logs/supernode-*.log"
            )
        wrong = {node: v for node, v in installed.items() if v != r}
        if wrong:
            fail(f"round {r}: nodes report other versions installed: {wrong}")
    from clients.model_installer import version_label
    from export.artifact import DEFAULT_NAME

    last = rows[-1]["round"]
    print(last, version_label(DEFAULT_NAME, last))


def on_version(sites: int, work: Path, label: str) -> None:
    """Exit 0 when every agent's last frame record names `label`, else 3."""
    for i in range(sites):
        record = last_record(site(work, i) / "frames.jsonl")
        if record is None or record.get("model_version") != label:
            sys.exit(3)


def final(sites: int, work: Path, version: int, least: int) -> None:
    """After every process stopped: each agent's last record, store and model directory."""
    from clients.model_installer import read_pointer, version_label
    from export.artifact import DEFAULT_NAME

    label = version_label(DEFAULT_NAME, version)
    problems = []
    counts = labelled_counts(sites, work)
    for i in range(sites):
        record = last_record(site(work, i) / "frames.jsonl")
        running = None if record is None else record.get("model_version", "")
        pointer = read_pointer(site(work, i) / "store" / "detector")
        history = [] if pointer is None else list(pointer.history)
        print(
            f"site-{i}: last frame {None if record is None else record['frame']} on "
            f"{running or 'no detector'}; installed {history}; "
            f"{counts[i]['frames']} frames stored, {counts[i]['labelled']} cloud-labelled "
            f"({counts[i]['people']} with people)"
        )
        if running != label:
            problems.append(f"site-{i}'s agent ended on {running or 'no detector'}, not {label}")
        if history[-1:] != [version] or sorted(set(history)) != list(range(1, version + 1)):
            problems.append(f"site-{i} installed versions {history}, not 1..{version}")
        if counts[i]["people"] < max(1, least):
            problems.append(
                f"site-{i}'s store has {counts[i]['people']} cloud-labelled frames with people"
            )
    if problems:
        fail("; ".join(problems))
    print(f"every agent ran {label} at the end")


command, args = sys.argv[1], sys.argv[2:]
if command == "segments":
    segments(args[0], int(args[1]), Path(args[2]), float(args[3]))
elif command == "tokens":
    tokens(int(args[0]), Path(args[1]))
elif command == "labelled":
    labelled(int(args[0]), Path(args[1]), int(args[2]))
elif command == "rounds":
    rounds(Path(args[0]), int(args[1]))
elif command == "on-version":
    on_version(int(args[0]), Path(args[1]), args[2])
elif command == "final":
    final(int(args[0]), Path(args[1]), int(args[2]), int(args[3]))
else:
    fail(f"unknown helper step {command}")
PY

detector_py() {
    app_python -c "$DETECTOR_PY" "$@"
}

uplink_args=()  # how an agent reaches fedge cloud
cloud_args=()
if $detector; then
    detector_py segments "$clip" "$num_supernodes" "$work_dir" "$camera_fps" \
        || die "could not cut $clip into $num_supernodes segments"
    detector_py tokens "$num_supernodes" "$work_dir" || die "could not write the tokens"
    cloud_args=(--host 127.0.0.1 --port "$cloud_port" --tokens "$work_dir/cloud/tokens"
        --audit-log "$work_dir/cloud/audit.jsonl" --grace 5)
    if [[ "$mode" == "tls" ]]; then
        cloud_args+=(--tls-cert "$cert_dir/server.crt" --tls-key "$cert_dir/server.key")
        uplink_args=(--root-cert "$cert_dir/ca.crt")
    else
        cloud_args+=(--insecure)
        uplink_args=(--insecure)
    fi
    uplink_args=(--cloud "127.0.0.1:$cloud_port" "${uplink_args[@]}")
fi

# Each site's edge agent: its segment in a loop, paced like a camera, following the
# detector its SuperNode installs (cold start until the first version arrives).
start_agents() {
    local i site
    for ((i = 0; i < num_supernodes; i++)); do
        site="$work_dir/site-$i"
        # cold start: frames sampled for the cloud to label, at most one a second; no
        # look-alike of a recent hard case
        start "agent-$i" fedge edge --source "$site/clip.avi" --loop --realtime \
            --store-dir "$site/store" --detector-dir "${uplink_args[@]}" --privacy "$privacy" \
            --token-file "$site/token" --node-id "site-$i" --jsonl "$site/frames.jsonl" \
            --cold-start-per-minute 60 --hard-per-minute 60 --pose-workers 1 --threads 1 --quiet
    done
}

# Wait until every store holds --min-labelled cloud-labelled frames with people.
wait_for_labels() {
    local deadline=$((SECONDS + COLLECT_TIMEOUT_S)) report
    say "waiting for $min_labelled cloud-labelled frames with people at every site"
    until report="$(detector_py labelled "$num_supernodes" "$work_dir" "$min_labelled" 2>&1)"; do
        check_alive
        if ((SECONDS >= deadline)); then
            echo "$report" >&2
            die "the sites did not get enough cloud labels within ${COLLECT_TIMEOUT_S}s"
        fi
        sleep 2
    done
    echo "$report"
}

# --- processes -----------------------------------------------------------------------
say "$mode deployment in $work_dir (logs: $log_dir)"
start superlink flower-superlink --host 127.0.0.1 --port "$superlink_port" \
    "${tls_link_args[@]}" --disable-runtime-dependency-installation
wait_for_port "$superlink_port" superlink
if $detector; then
    start cloud fedge cloud "${cloud_args[@]}"
fi
for ((i = 0; i < num_supernodes; i++)); do
    node_config="partition-id=$i num-partitions=$num_supernodes"
    if $detector; then
        node_config+=" store-dir=\"$work_dir/site-$i/store\""
        if $warm_worker; then
            node_config+=" warm-worker=true"
        fi
    fi
    # SuperNodes give up (and so show up as dead) if they cannot reach the SuperLink
    start "supernode-$i" flower-supernode --superlink "$superlink_address" \
        --port "${ports[$((i + 1))]}" "${tls_node_args[@]}" --max-wait-time 60 \
        --node-config "$node_config"
done
for ((i = 0; i < num_supernodes; i++)); do
    wait_for_port "${ports[$((i + 1))]}" "supernode-$i"
done
if $detector; then
    wait_for_port "$cloud_port" cloud
    start_agents
    wait_for_labels  # the stores hold frames and cloud labels before training starts
fi

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

# --- person-detector: every site on the last model ----------------------------------
if $detector; then
    read -r last_version last_label < <(detector_py rounds "$run_dir" "$num_supernodes") \
        || exit 1
    [[ -n "${last_label:-}" ]] || exit 1
    say "every round's model installed on all $num_supernodes sites; the last: $last_label"
    deadline=$((SECONDS + CATCH_UP_TIMEOUT_S))
    until detector_py on-version "$num_supernodes" "$work_dir" "$last_label"; do
        check_alive
        ((SECONDS < deadline)) \
            || die "not every agent runs $last_label after ${CATCH_UP_TIMEOUT_S}s; see $log_dir/agent-*.log"
        sleep 1
    done
    say "every agent runs $last_label; stopping all processes for the final checks"
    stop_all
    detector_py final "$num_supernodes" "$work_dir" "$last_version" "$min_labelled" || exit 1
fi
