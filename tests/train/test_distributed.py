"""Multi-process start-up: real processes joined on localhost, from the documented variables and
from a cluster's environment that jax detects; the plan's rules on their own."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from mmar_jax.train import distributed


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def fake_cpu_env(devices: int, **extra: str) -> dict[str, str]:
  """This environment with `devices` fake CPU devices a process (the tests' other XLA flags kept)."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS",
                                                                  "SLURM_"))}
  return env | {"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}".strip(),
                "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"} | extra


def run_processes(envs: list[dict[str, str]], args: list[str], timeout: float = 240) -> list[tuple[int, str, str]]:
  """`mmar-jax ARGS` once per environment, all at once; (returncode, stdout, stderr) of each."""
  procs = [subprocess.Popen([sys.executable, "-m", "mmar_jax.cli.main", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for env in envs]
  results = []
  try:
    for proc in procs:
      out, err = proc.communicate(timeout=timeout)
      results.append((proc.returncode, out, err))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return results


STARTUP = ["train", "--config=configs/demo.py", "--startup-only"]


def test_two_processes_start_from_the_documented_variables(tmp_path):
  port = free_port()
  envs = [fake_cpu_env(4, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
          for i in range(2)]
  (rc0, out0, err0), (rc1, out1, err1) = run_processes(envs, STARTUP + [f"--workdir={tmp_path}"])
  assert (rc0, rc1) == (0, 0), err0 + err1
  # Process 0 alone says what the job is: 2 processes of 4 devices, one mesh over all 8.
  assert ("mmar-jax train: 2 processes, 4 local / 8 global devices (cpu), mesh data=8 x fsdp=1 x tensor=1 "
          "(8 devices), global batch 16 (8 a process)") in out0
  assert "mmar-jax train:" not in out1


def test_a_slurm_environment_is_left_to_jax(tmp_path):
  # Only SLURM's variables (as srun sets them for 2 tasks on one node): jax finds the rest.
  port = free_port()
  envs = [fake_cpu_env(4, SLURM_JOB_ID="77", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2", SLURM_PROCID=str(i),
                       SLURM_LOCALID=str(i), JAX_COORDINATOR_PORT=str(port)) for i in range(2)]
  results = run_processes(envs, STARTUP + [f"--workdir={tmp_path}", "--config.mesh.data=4"])
  # ... and a mesh of 4 devices contradicts the 8 the two processes hold: each fails naming both.
  for rc, _, err in results:
    assert rc == 2, err
    assert "config.mesh={'data': 4, 'fsdp': 1, 'tensor': 1} covers 4 devices but there are 8" in err
    assert "Traceback" not in err


def test_an_incomplete_set_of_variables_fails_naming_what_is_missing(tmp_path):
  env = fake_cpu_env(4, JAX_COORDINATOR_ADDRESS=f"localhost:{free_port()}", JAX_PROCESS_ID="1")
  [(rc, _, err)] = run_processes([env], STARTUP + [f"--workdir={tmp_path}"], timeout=60)
  assert rc == 2
  assert "--num-processes or JAX_NUM_PROCESSES" in err and "Traceback" not in err


def test_plan_rules():
  none = dict(cluster=None)
  assert distributed.plan(env={}, **none).kind == "single"
  assert distributed.plan(env={"JAX_NUM_PROCESSES": "1"}, **none).kind == "single"
  env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
  assert distributed.plan(env=env, **none) == distributed.Plan("explicit", "h:1", 4, 2)
  # A flag wins over its variable, field by field.
  assert distributed.plan("g:2", None, 3, env=env, **none) == distributed.Plan("explicit", "g:2", 4, 3)
  with pytest.raises(ValueError, match=r"JAX_PROCESS_ID='x' must be an integer"):
    distributed.plan(env=env | {"JAX_PROCESS_ID": "x"}, **none)
  with pytest.raises(ValueError, match=r"JAX_PROCESS_ID=4 must be in \[0, 4\)"):
    distributed.plan(env=env | {"JAX_PROCESS_ID": "4"}, **none)


class _TwoHostCluster:
  name = "twohosts"

  @staticmethod
  def get_process_count():
    return 2


def test_plan_leaves_a_detected_cluster_to_jax():
  # The cluster argument stands for what jax's detection found (the SLURM test above runs the real one).
  assert distributed.plan(env={}, cluster=_TwoHostCluster) == distributed.Plan("detected", cluster="twohosts")
  # An address alone is an override jax completes from the cluster.
  assert distributed.plan(env={"JAX_COORDINATOR_ADDRESS": "h:1"}, cluster=_TwoHostCluster) == distributed.Plan(
      "explicit", "h:1", None, None, cluster="twohosts")


def test_slurm_gpu_problem_names_the_idle_gpus():
  per_node = {"SLURM_LOCALID": "0", "SLURM_GPUS_ON_NODE": "8", "SLURM_TASKS_PER_NODE": "1(x2)"}
  problem = distributed.slurm_gpu_problem(per_node)
  assert "SLURM_GPUS_ON_NODE=8 GPUs for 1 task(s)" in problem and "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in problem
  assert distributed.slurm_gpu_problem(per_node | {"JAX_LOCAL_DEVICE_IDS": "0,1,2,3,4,5,6,7"}) is None
  assert distributed.slurm_gpu_problem(per_node | {"SLURM_TASKS_PER_NODE": "8(x2)"}) is None
