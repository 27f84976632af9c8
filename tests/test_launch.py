"""launch/: the scripts parse, check their arguments, and their dry runs print the right commands."""

from __future__ import annotations

import os
import subprocess

import pytest

SCRIPTS = ("launch/local.sh", "launch/tpu_pod.sh", "launch/slurm_gpu.sbatch")


def bash(*args: str, **env: str) -> subprocess.CompletedProcess:
  clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "XLA_FLAGS"))}
  return subprocess.run(["bash", *args], capture_output=True, text=True, timeout=60, env=clean | env)


def commands(result: subprocess.CompletedProcess) -> list[str]:
  assert result.returncode == 0, result.stderr
  return [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
  assert subprocess.run(["bash", "-n", script]).returncode == 0


TPU = ("launch/tpu_pod.sh", "--dry-run", "--zone=us-west4-a", "--config=configs/mmar_0p5b.py")


def test_tpu_pod_dry_run_creates_installs_pinned_and_trains_on_every_worker():
  cmds = commands(bash(*TPU, "--name=pod", "--accelerator=v5litepod-256", "--workdir=gs://b/runs/m05", "--",
                       "--config.train.num_steps=10"))
  assert cmds[0] == ("gcloud compute tpus tpu-vm create pod --zone=us-west4-a --accelerator-type=v5litepod-256 "
                     "--version=v2-alpha-tpuv5-lite")
  assert cmds[1].startswith("git archive --format=tar.gz")
  assert cmds[2].startswith("gcloud compute tpus tpu-vm scp") and cmds[2].endswith("pod:~/mmar_jax.tar.gz "
                                                                                   "--zone=us-west4-a --worker=all")
  install = cmds[3]
  assert install.startswith("gcloud compute tpus tpu-vm ssh pod --zone=us-west4-a --worker=all '--command=")
  assert "pip install -q -c ~/mmar_jax/requirements.lock -e ~/mmar_jax" in install and "jax[tpu]==0.10.2" in install
  assert cmds[4] == ("gcloud compute tpus tpu-vm ssh pod --zone=us-west4-a --worker=all '--command=cd ~/mmar_jax && "
                     "~/mmar_venv/bin/mmar-jax train --config=configs/mmar_0p5b.py --workdir=gs://b/runs/m05 "
                     "--config.train.num_steps=10'")
  assert len(cmds) == 5


def test_tpu_pod_dry_run_multi_slice_queues_k_nodes_and_sets_the_dcn_axis():
  cmds = commands(bash(*TPU, "--name=ms", "--accelerator=v5p-128", "--slices=2", "--spot", "--skip-install",
                       "--workdir=gs://b/r"))
  assert cmds[0] == ("gcloud compute tpus queued-resources create ms --zone=us-west4-a --accelerator-type=v5p-128 "
                     "--runtime-version=v2-alpha-tpuv5 --spot --node-count=2 --node-prefix=ms")
  trains = [c for c in cmds if "mmar-jax train" in c]
  assert [c.split()[5] for c in trains] == ["ms-0", "ms-1"]
  assert all("--config.mesh.dcn_data=2" in c and "--worker=all" in c for c in trains)
  # A dcn_* field the user sets is kept as given.
  cmds = commands(bash(*TPU, "--name=ms", "--accelerator=v5p-128", "--slices=2", "--skip-install",
                       "--workdir=gs://b/r", "--", "--config.mesh.dcn_fsdp=2"))
  assert all("dcn_data" not in c for c in cmds)


@pytest.mark.parametrize("args, says", [
    (("--zone=z", "--accelerator=v5p-8", "--config=configs/demo.py", "--workdir=gs://b"), "missing --name"),
    (("--name=p", "--zone=z", "--accelerator=v5p-8", "--config=configs/demo.py", "--workdir=/local"),
     "--workdir=/local must be a gs:// path"),
    (("--name=p", "--zone=z", "--accelerator=v5p-8", "--config=configs/nope.py", "--workdir=gs://b"),
     "--config=configs/nope.py is not a file"),
    (("--name=p", "--zone=z", "--accelerator=tpu9-8", "--config=configs/demo.py", "--workdir=gs://b"),
     "no default runtime for --accelerator=tpu9-8"),
    (("--name=p", "--zone=z", "--accelerator=v5p-8", "--config=configs/demo.py", "--workdir=gs://b", "--",
      "--workdir=gs://c"), "train flag --workdir=gs://c is set by this script"),
    (("--name=p", "--bogus"), "unknown argument --bogus"),
])
def test_tpu_pod_checks_its_arguments(args, says):
  result = bash("launch/tpu_pod.sh", "--dry-run", *args)
  assert result.returncode == 2 and says in result.stderr, result.stderr


SLURM = ("launch/slurm_gpu.sbatch", "--dry-run", "--config=configs/mmar_7b.py", "--workdir=/shared/r")


def test_slurm_dry_run_one_task_per_gpu_by_default():
  cmds = commands(bash(*SLURM, "--", "--config.train.num_steps=5", SLURM_JOB_NUM_NODES="2", SLURM_GPUS_ON_NODE="8",
                       SLURM_JOB_ID="42", SLURM_SUBMIT_DIR="/home/u/mmar_jax"))
  assert cmds[0].startswith("export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 XLA_FLAGS=--xla_gpu_enable_latency_hiding_"
                            "scheduler=true NCCL_DEBUG=WARN") and "JAX_LOCAL_DEVICE_IDS" not in cmds[0]
  assert cmds[2] == ("srun --nodes=2 --ntasks-per-node=8 --ntasks=16 --kill-on-bad-exit=0 "
                     "--output=/home/u/mmar_jax/slurm-logs/42/process-%t.log /home/u/mmar_jax/.venv/bin/mmar-jax "
                     "train --config=configs/mmar_7b.py --workdir=/shared/r --config.train.num_steps=5")
  assert "scontrol requeue 42" in cmds[3]


def test_slurm_dry_run_one_task_per_node_owns_its_gpus():
  cmds = commands(bash(*SLURM, "--per-node", SLURM_JOB_NUM_NODES="4", SLURM_GPUS_ON_NODE="4", SLURM_CPUS_ON_NODE="64",
                       SLURM_JOB_ID="42", SLURM_SUBMIT_DIR="/s"))
  assert cmds[0].endswith("JAX_LOCAL_DEVICE_IDS=0,1,2,3")
  assert cmds[2].startswith("srun --nodes=4 --ntasks-per-node=1 --ntasks=4 --kill-on-bad-exit=0 --cpus-per-task=64 ")


@pytest.mark.parametrize("args, env, says", [
    (("launch/slurm_gpu.sbatch", "--workdir=/r"), {}, "missing --config"),
    (("launch/slurm_gpu.sbatch", "--config=configs/demo.py"), {}, "missing --workdir"),
    (("launch/slurm_gpu.sbatch", "--config=configs/demo.py", "--workdir=/r"), {}, "not inside a SLURM job"),
    (("launch/slurm_gpu.sbatch", "--config=configs/demo.py", "--workdir=/r", "--", "--process-id=1"), {},
     "train flag --process-id=1 is set by this script"),
    (("launch/slurm_gpu.sbatch", "--config=configs/demo.py", "--workdir=/r"),
     {"SLURM_JOB_ID": "1", "MMAR_VENV": "/nonexistent"}, "/nonexistent/bin/mmar-jax not found"),
])
def test_slurm_checks_its_arguments(args, env, says):
  result = bash(*args, **env)
  assert result.returncode == 2 and says in result.stderr, result.stderr
