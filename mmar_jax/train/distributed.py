"""Multi-process start-up: `jax.distributed.initialize()` once, only when there are several processes.

jax's own cluster detection (TPU pod metadata, SLURM, Open MPI, ...) fills in the coordinator,
process count and id; explicit values (flags, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID) override it. A single process never initializes, so one CPU or GPU needs nothing.
"""

from __future__ import annotations

import os

import jax


def multi_process_environment(env: os._Environ | dict = os.environ) -> bool:
  """Whether the environment says this job has several processes."""
  def count(name):
    try:
      return int(env.get(name, "1"))
    except ValueError:
      return 1
  return (count("JAX_NUM_PROCESSES") > 1 or count("SLURM_NTASKS") > 1 or count("OMPI_COMM_WORLD_SIZE") > 1
          or "," in env.get("TPU_WORKER_HOSTNAMES", "") or count("MEGASCALE_NUM_SLICES") > 1
          or bool(env.get("JAX_COORDINATOR_ADDRESS")))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Initializes jax.distributed when needed (call before anything touches a device); returns
  whether it did."""
  if jax.distributed.is_initialized():
    return False
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  if not explicit and not multi_process_environment():
    return False
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  return True
