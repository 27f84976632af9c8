#!/usr/bin/env bash
# launch/local.sh N [mmar-jax train flags...]
#
# N `mmar-jax train` processes on this machine, joined on localhost as a multi-host job would be:
# each sees its own fake CPU devices, process 0 hosts the coordinator. For developing and testing
# multi-process code paths without a cluster. Every process gets the same train flags.
#
# Settings (environment):
#   MMAR_LOCAL_DEVICES  fake CPU devices per process (default 4)
#   MMAR_LOCAL_PORT     coordinator port on localhost (default: a free one)
#   MMAR_LOCAL_LOGS     directory for process_<i>.log (default: <workdir>/launch_logs)
#   PYTHON              the interpreter that has mmar_jax installed (default: python3)
# Process 0's output is also shown here. The exit status is the first non-zero one of the
# processes (0 when all succeed); SIGTERM / SIGINT are passed on to every process (a preemption).
#
# Example: launch/local.sh 2 --config=configs/demo.py --workdir=/tmp/run --config.train.num_steps=20
set -euo pipefail

die() { echo "launch/local.sh: $*" >&2; echo "usage: launch/local.sh N --config=CONFIG --workdir=DIR [train flags...]" >&2; exit 2; }

[[ $# -ge 1 ]] || die "missing N, the number of processes"
N=$1; shift
[[ $N =~ ^[1-9][0-9]*$ ]] || die "N=$N must be a positive number of processes"
DEVICES=${MMAR_LOCAL_DEVICES:-4}
[[ $DEVICES =~ ^[1-9][0-9]*$ ]] || die "MMAR_LOCAL_DEVICES=$DEVICES must be a positive number of devices"
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON is not an executable on PATH"

workdir="" config=""
args=("$@")
for ((k = 0; k < ${#args[@]}; k++)); do
  case ${args[k]} in
    --workdir=*) workdir=${args[k]#--workdir=} ;;
    --workdir) workdir=${args[k + 1]:-} ;;
    --config=*) config=${args[k]#--config=} ;;
    --config) config=${args[k + 1]:-} ;;
    --coordinator-address*|--num-processes*|--process-id*) die "${args[k]%%=*} is set by this script; leave it out" ;;
  esac
done
[[ -n $workdir ]] || die "missing --workdir=DIR (the run's directory, shared by the processes)"
[[ -n $config ]] || die "missing --config=CONFIG (e.g. configs/demo.py)"

PORT=${MMAR_LOCAL_PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}
[[ $PORT =~ ^[0-9]+$ ]] || die "MMAR_LOCAL_PORT=$PORT must be a port number"
LOGS=${MMAR_LOCAL_LOGS:-$workdir/launch_logs}
mkdir -p "$LOGS"

# Each process: DEVICES fake CPU devices (any device count already in XLA_FLAGS replaced).
xla_flags="$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g' <<<"${XLA_FLAGS:-}") --xla_force_host_platform_device_count=$DEVICES"
pids=()
for ((i = 0; i < N; i++)); do
  export JAX_PLATFORMS=cpu XLA_FLAGS="${xla_flags# }" JAX_COORDINATOR_ADDRESS="localhost:$PORT" \
    JAX_NUM_PROCESSES="$N" JAX_PROCESS_ID="$i" PYTHONUNBUFFERED=1
  if ((i == 0)); then
    "$PYTHON" -m mmar_jax.cli.main train "$@" > >(tee "$LOGS/process_0.log") 2>&1 &
  else
    "$PYTHON" -m mmar_jax.cli.main train "$@" >"$LOGS/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done
echo "launch/local.sh: $N processes x $DEVICES CPU devices, coordinator localhost:$PORT, logs in $LOGS" >&2

forward() { kill -s "$1" "${pids[@]}" 2>/dev/null || true; }
trap 'forward TERM' TERM
trap 'forward INT' INT

status=0
for i in "${!pids[@]}"; do
  while true; do
    rc=0; wait "${pids[i]}" || rc=$?
    # A trapped signal interrupts `wait` (status > 128) while the process still runs: wait again.
    if ((rc > 128)) && kill -0 "${pids[i]}" 2>/dev/null; then continue; fi
    # It ended meanwhile: its own status, unless that wait already collected it.
    if ((rc > 128)); then again=0; wait "${pids[i]}" 2>/dev/null || again=$?; ((again == 127)) || rc=$again; fi
    break
  done
  if ((rc != 0)); then
    echo "launch/local.sh: process $i exited with status $rc (log: $LOGS/process_$i.log)" >&2
    ((status != 0)) || status=$rc
  fi
done
wait  # The tee of process 0's output.
exit "$status"
