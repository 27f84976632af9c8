#!/usr/bin/env bash
# launch/tpu_pod.sh: train on a Cloud TPU slice (or several: multi-slice), from this checkout.
#
#   launch/tpu_pod.sh --name=NAME --zone=ZONE --accelerator=v5litepod-256 --config=configs/mmar_0p5b.py \
#     --workdir=gs://BUCKET/runs/m05 [options] [-- train flags, e.g. --config.train.num_steps=50000]
#
# 1. Creates the slice unless it exists (`gcloud compute tpus tpu-vm create`, or a queued resource
#    with --queued / --slices), recreating one that was preempted.
# 2. Copies this checkout (`git archive HEAD`: commit first) to every worker and installs it
#    pinned (requirements.lock as constraints, jax[tpu] of the same version) in ~/mmar_venv.
# 3. Starts the same `mmar-jax train` on every worker at once (`--worker=all`); jax finds the
#    other hosts itself (TPU metadata), process 0 prints the job's one start-up line.
# After a preemption run the same command again: the slice comes back and training resumes from
# the newest checkpoint in the gs:// workdir (a lost host ends the others with exit 75).
#
# Options:
#   --project=P        gcloud project (default: gcloud's)
#   --version=V        TPU VM runtime (default: by accelerator, e.g. v2-alpha-tpuv5-lite for v5e)
#   --queued           create through a queued resource (waits for capacity) instead of directly
#   --spot             spot / preemptible capacity
#   --slices=K         K slices joined over DCN (a queued resource of K nodes; sets
#                      --config.mesh.dcn_data=K unless the train flags set a dcn_* field)
#   --detach           leave training running under nohup (log: ~/mmar_train.log on each worker)
#   --skip-install     the workers already have this commit installed
#   --dry-run          print the commands instead of running them (nothing is created)
set -euo pipefail
cd "$(dirname "$0")/.."  # The checkout's root: --config paths and `git archive` are relative to it.

die() { echo "launch/tpu_pod.sh: $*" >&2; echo "usage: launch/tpu_pod.sh --name=NAME --zone=ZONE --accelerator=TYPE --config=CONFIG --workdir=gs://... [options] [-- train flags]" >&2; exit 2; }

name="" zone="" accelerator="" config="" workdir="" project="" version="" queued=0 spot=0 slices=1
detach=0 skip_install=0 dry_run=0
train_flags=()
while (($#)); do
  case $1 in
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --accelerator=*) accelerator=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --slices=*) slices=${1#*=} ;;
    --queued) queued=1 ;;
    --spot) spot=1 ;;
    --detach) detach=1 ;;
    --skip-install) skip_install=1 ;;
    --dry-run) dry_run=1 ;;
    --) shift; train_flags=("$@"); break ;;
    *) die "unknown argument $1 (train flags go after --)" ;;
  esac
  shift
done
[[ -n $name ]] || die "missing --name=NAME (the TPU VM or queued resource)"
[[ -n $zone ]] || die "missing --zone=ZONE (e.g. us-west4-a)"
[[ -n $accelerator ]] || die "missing --accelerator=TYPE (e.g. v5litepod-256, v5p-128)"
[[ -n $config ]] || die "missing --config=CONFIG (e.g. configs/mmar_0p5b.py)"
[[ $workdir == gs://* ]] || die "--workdir=${workdir:-?} must be a gs:// path: every worker writes the same checkpoints"
[[ $slices =~ ^[1-9][0-9]*$ ]] || die "--slices=$slices must be a positive number of slices"
[[ -f $config ]] || die "--config=$config is not a file of this checkout"
for flag in "${train_flags[@]}"; do
  case $flag in
    --workdir*|--config=*|--coordinator-address*|--num-processes*|--process-id*)
      die "train flag $flag is set by this script (use --workdir=/--config= before --)" ;;
  esac
done
if [[ -z $version ]]; then
  case $accelerator in
    v5litepod-*|v5e-*) version=v2-alpha-tpuv5-lite ;;
    v5p-*) version=v2-alpha-tpuv5 ;;
    v6e-*) version=v2-alpha-tpuv6e ;;
    v4-*) version=tpu-ubuntu2204-base ;;
    *) die "no default runtime for --accelerator=$accelerator; pass --version=" ;;
  esac
fi
if ((slices > 1)); then
  queued=1
  [[ " ${train_flags[*]} " == *" --config.mesh.dcn_"* ]] || train_flags+=("--config.mesh.dcn_data=$slices")
fi

gcloud_args=(--zone="$zone")
[[ -z $project ]] || gcloud_args+=(--project="$project")

q() {  # The arguments as one shell-quoted line: plain words bare, others in single quotes.
  local out=() a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}
run() {  # Prints the command; runs it unless --dry-run.
  echo "+ $(q "$@")"
  ((dry_run)) || "$@"
}

# The TPU VMs the job runs on: NAME, or NAME-0 ... NAME-(K-1) for a queued resource of K nodes.
nodes=("$name")
if ((slices > 1)); then nodes=(); for ((k = 0; k < slices; k++)); do nodes+=("$name-$k"); done; fi

# 1. The slice(s).
state=""
if ((!dry_run)); then
  if ((queued)); then
    state=$(gcloud compute tpus queued-resources describe "$name" "${gcloud_args[@]}" --format='value(state.state)' 2>/dev/null || true)
  else
    state=$(gcloud compute tpus tpu-vm describe "$name" "${gcloud_args[@]}" --format='value(state)' 2>/dev/null || true)
  fi
fi
if [[ $state == PREEMPTED || $state == TERMINATED || $state == FAILED || $state == SUSPENDED ]]; then
  echo "launch/tpu_pod.sh: $name is $state; deleting it to create it again" >&2
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "$name" "${gcloud_args[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${gcloud_args[@]}" --quiet
  fi
  state=""
fi
if [[ -z $state ]]; then
  capacity=()
  ((!spot)) || capacity=(--spot)
  if ((queued)); then
    node_args=(--node-id="$name")
    ((slices == 1)) || node_args=(--node-count="$slices" --node-prefix="$name")
    run gcloud compute tpus queued-resources create "$name" "${gcloud_args[@]}" --accelerator-type="$accelerator" \
      --runtime-version="$version" "${capacity[@]}" "${node_args[@]}"
    # Wait until the capacity is granted and the VMs are up.
    if ((!dry_run)); then
      until [[ $(gcloud compute tpus queued-resources describe "$name" "${gcloud_args[@]}" --format='value(state.state)') == ACTIVE ]]; do
        sleep 30
      done
    else
      echo "+ (wait until: gcloud compute tpus queued-resources describe $name --format='value(state.state)' says ACTIVE)"
    fi
  else
    run gcloud compute tpus tpu-vm create "$name" "${gcloud_args[@]}" --accelerator-type="$accelerator" \
      --version="$version" "${capacity[@]}"
  fi
else
  echo "launch/tpu_pod.sh: reusing $name ($state)" >&2
fi

# 2. This checkout, installed pinned on every worker.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
tarball=${TMPDIR:-/tmp}/mmar_jax-$commit.tar.gz
jax_version=$(sed -n 's/^jax==//p' requirements.lock)
[[ -n $jax_version ]] || die "requirements.lock pins no jax version"
install="set -e; if ! command -v python3.11 >/dev/null; then sudo apt-get update -q; sudo apt-get install -yq python3.11 python3.11-venv; fi; \
rm -rf ~/mmar_jax; mkdir -p ~/mmar_jax; tar xzf ~/mmar_jax.tar.gz -C ~/mmar_jax; \
if [ ! -x ~/mmar_venv/bin/python ]; then python3.11 -m venv ~/mmar_venv; fi; \
~/mmar_venv/bin/pip install -q -c ~/mmar_jax/requirements.lock -e ~/mmar_jax 'jax[tpu]==$jax_version'"
if ((!skip_install)); then
  run git archive --format=tar.gz -o "$tarball" HEAD
  for node in "${nodes[@]}"; do
    run gcloud compute tpus tpu-vm scp "$tarball" "$node:~/mmar_jax.tar.gz" "${gcloud_args[@]}" --worker=all
    run gcloud compute tpus tpu-vm ssh "$node" "${gcloud_args[@]}" --worker=all --command="$install"
  done
fi

# 3. The same training command on every worker of every slice, at once.
train="cd ~/mmar_jax && ~/mmar_venv/bin/mmar-jax train $(q --config="$config" --workdir="$workdir" "${train_flags[@]}")"
((!detach)) || train="nohup bash -c $(q "$train") > ~/mmar_train.log 2>&1 < /dev/null &"
pids=()
for node in "${nodes[@]}"; do
  if ((dry_run)); then
    run gcloud compute tpus tpu-vm ssh "$node" "${gcloud_args[@]}" --worker=all --command="$train"
  else
    run gcloud compute tpus tpu-vm ssh "$node" "${gcloud_args[@]}" --worker=all --command="$train" &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
((status == 0)) || echo "launch/tpu_pod.sh: training exited with status $status; run the same command again to resume from $workdir" >&2
exit "$status"
