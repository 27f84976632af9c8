"""Multi-process start-up: how this process joins the job, `jax.distributed.initialize()` once,
and the one line process 0 prints about the job.

Where the settings come from, first match wins:
  1. the flags --coordinator-address / --num-processes / --process-id, field by field, else
     the variables JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID. jax 0.10.2 reads
     only the address from the environment, so all three are passed to it explicitly. A field
     left out is filled by jax's cluster detection where there is a cluster, else it is an error.
  2. jax's own cluster detection (`jax.distributed.initialize()` with no arguments): TPU pods
     and plain TPU VMs (metadata server), GKE, SLURM, Open MPI.
  3. neither: one process, nothing to initialize (one CPU, one GPU host, one TPU VM host).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping

import jax
import ml_collections

ENV_ADDRESS, ENV_COUNT, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class Plan:
  """How this process joins the job; None fields are left to jax's cluster detection."""
  kind: str  # 'single' (no initialize), 'explicit' (flags or variables), 'detected' (jax's detection)
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  cluster: str | None = None  # The jax cluster environment found ('slurm', 'gcetpu', ...), if any.


def detected_cluster():
  """The cluster environment jax's `initialize()` would use (a `ClusterEnv` class), or None.

  The same classes in the same order as jax's auto-detection (opt-in ones such as mpi4py
  excluded, as jax does when no method is named); asking is cheap off a cluster (environment
  variables; the TPU metadata server only on a Cloud TPU VM).
  """
  from jax._src import clusters  # jax's own detection; no public API asks "is there a cluster?".
  for env in clusters.ClusterEnv._cluster_types:  # noqa: SLF001
    if not env.opt_in_only_method and env.is_env_present():
      return env
  return None


def _int_setting(flag_value: int | None, env: Mapping[str, str], name: str, flag: str) -> int | None:
  if flag_value is not None:
    return flag_value
  raw = env.get(name, "").strip()
  if not raw:
    return None
  try:
    return int(raw)
  except ValueError:
    raise ValueError(f"{name}={raw!r} must be an integer (or pass {flag})") from None


def plan(coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None,
         env: Mapping[str, str] = os.environ, cluster=...) -> Plan:
  """How to start: from the flags (None when not given), the variables in `env`, or the cluster
  jax detects (`cluster`: a ClusterEnv class or None; default: ask jax)."""
  address = coordinator_address or env.get(ENV_ADDRESS, "").strip() or None
  count = _int_setting(num_processes, env, ENV_COUNT, "--num-processes")
  pid = _int_setting(process_id, env, ENV_ID, "--process-id")
  if cluster is ...:
    cluster = detected_cluster()
  name = getattr(cluster, "name", None) or getattr(cluster, "__name__", None)
  if address is None and count is None and pid is None:
    if cluster is None or cluster.get_process_count() <= 1:
      return Plan("single", cluster=name)
    return Plan("detected", cluster=name)
  if count is not None and count < 1:
    raise ValueError(f"--num-processes / {ENV_COUNT}={count} must be at least 1")
  if count == 1 and pid in (None, 0):
    return Plan("single", cluster=name)
  if cluster is None:  # Nothing to fill the gaps: every setting must be there.
    missing = [what for what, value in (
        (f"--coordinator-address or {ENV_ADDRESS} (host:port of process 0)", address),
        (f"--num-processes or {ENV_COUNT}", count), (f"--process-id or {ENV_ID}", pid)) if value is None]
    if missing:
      given = ", ".join(f"{k}={v}" for k, v in (("address", address), ("processes", count), ("id", pid))
                        if v is not None)
      raise ValueError(f"a multi-process start needs {' and '.join(missing)} as well ({given} given, and no "
                       "TPU pod, SLURM or Open MPI environment to take the rest from)")
  if count is not None and pid is not None and not 0 <= pid < count:
    raise ValueError(f"--process-id / {ENV_ID}={pid} must be in [0, {count}) for {count} processes")
  return Plan("explicit", address, count, pid, cluster=name)


def slurm_gpu_problem(env: Mapping[str, str] = os.environ) -> str | None:
  """Why a SLURM job would idle GPUs, or None. jax limits each SLURM task to the GPU numbered
  SLURM_LOCALID, so a task that owns several GPUs (one task per node) would use one of them."""
  if env.get("JAX_LOCAL_DEVICE_IDS") or "SLURM_LOCALID" not in env:
    return None
  try:
    gpus = int(env.get("SLURM_GPUS_ON_NODE", "0"))
  except ValueError:
    return None
  # The step's own count first: srun may start fewer tasks than the job allocated.
  tasks = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or env.get(
      "SLURM_NTASKS_PER_NODE", "")
  match = re.match(r"\d+", tasks)
  if not match or gpus <= int(match.group()):
    return None
  return (f"SLURM gives this node SLURM_GPUS_ON_NODE={gpus} GPUs for {match.group()} task(s), but jax limits each "
          "task to the GPU numbered SLURM_LOCALID, so the rest would idle: run one task per GPU "
          f"(--ntasks-per-node={gpus}, launch/slurm_gpu.sbatch's default), or one task per node with "
          f"JAX_LOCAL_DEVICE_IDS={','.join(map(str, range(gpus)))} (its --per-node mode)")


def initialize(p: Plan, timeouts: ml_collections.ConfigDict) -> bool:
  """Joins the job as `p` says (call before anything touches a device); returns whether it did.

  `timeouts` is config.distributed: how long to wait for every process to join, after how long
  without a heartbeat a process counts as lost, and how long the exit waits for the others.
  """
  if p.kind == "single" or jax.distributed.is_initialized():
    return False
  if p.cluster == "slurm" and (problem := slurm_gpu_problem()):
    raise ValueError(problem)
  jax.distributed.initialize(
      coordinator_address=p.coordinator_address, num_processes=p.num_processes, process_id=p.process_id,
      initialization_timeout=timeouts.initialization_timeout_s, heartbeat_timeout_seconds=timeouts.heartbeat_timeout_s,
      shutdown_timeout_seconds=timeouts.shutdown_timeout_s)
  return True


def startup_line(mesh: jax.sharding.Mesh, global_batch: int) -> str:
  """One line about the job: processes, devices, the mesh and the global batch."""
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  n = jax.process_count()
  per = f" ({global_batch // n} a process)" if n > 1 else ""
  shape = " x ".join(f"{name}={size}" for name, size in mesh.shape.items())
  return (f"mmar-jax train: {n} process{'es' if n > 1 else ''}, {jax.local_device_count()} local / "
          f"{len(devices)} global devices ({', '.join(kinds)}), mesh {shape} ({math.prod(mesh.shape.values())} "
          f"devices), global batch {global_batch}{per}")
