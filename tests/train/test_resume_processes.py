"""Resume at another process count: two real processes joined by jax.distributed on localhost (4 CPU
devices each) train and save; one process with 8 devices resumes at the next step and continues;
then two processes resume that one's checkpoint. Each resume names what changed."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.train import tiny

# Five training processes, each compiling; two pairs wait for each other: minutes on 2 cores.
pytestmark = pytest.mark.slow


def env(devices: int) -> dict[str, str]:
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  return dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
              XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def train(workdir: str, processes: int, *extra: str) -> str:
  """`mmar-jax train` in `processes` processes (8 CPU devices in all); process 0's output."""
  args = [sys.executable, "-m", "mmar_jax.cli.main", *tiny.cli_args(workdir, "train.checkpoint_every=2", *extra)]
  if processes == 1:
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(8))]
  else:
    address = f"localhost:{free_port()}"
    procs = [subprocess.Popen(args + [f"--coordinator-address={address}", f"--num-processes={processes}",
                                      f"--process-id={i}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env(8 // processes)) for i in range(processes)]
  outs = []
  try:
    for proc in procs:
      outs.append(proc.communicate(timeout=900)[0])
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  for i, (proc, out) in enumerate(zip(procs, outs)):
    assert proc.returncode == 0, f"process {i} of {processes} failed ({proc.returncode}):\n{out}"
  return outs[0]


def test_two_processes_then_one_then_two_resume_at_the_next_step(tmp_path):
  from mmar_jax import checkpoint
  workdir = str(tmp_path)
  out = train(workdir, 2, "train.num_steps=4")
  assert "finished at step 4" in out
  names = os.listdir(os.path.join(workdir, "checkpoints", "4", "data"))
  assert sorted(n for n in names if n.startswith("process_")) == ["process_0-of-2.json", "process_1-of-2.json"]
  assert tiny.saved_run(workdir, 4)["process_count"] == 2

  # The two-process checkpoint opens in this one process, onto its first device.
  params, _, step = checkpoint.load_params(workdir)
  assert step == 4 and all(x.devices() == {jax.devices()[0]} for x in jax.tree.leaves(params))

  out = train(workdir, 1, "train.num_steps=6")
  assert re.search(r"^resumed from step 4$", out, re.M), out
  # Step 4 of 8 rows: 32 records into the shuffled order, all of them in one process's slice now.
  assert ("checkpoint step 4 was written with processes 2 (now 1): parameters, optimizer state, step and RNG "
          "restored exactly; the data iterator's per-process state does not map onto 1 process(es), so each "
          "host's stream restarts at record 32 of its slice") in out
  assert "finished at step 6" in out
  assert tiny.saved_run(workdir, 6) == {"process_count": 1, "device_count": 8, "global_batch": 8, "data_start": 32,
                                        "mesh": {"data": 8, "fsdp": 1, "tensor": 1}}
  resumed, _, _ = checkpoint.load_params(os.path.join(workdir, "checkpoints", "6"))
  before, _, _ = checkpoint.load_params(os.path.join(workdir, "checkpoints", "4"))
  assert not np.array_equal(jax.tree.leaves(resumed)[0], jax.tree.leaves(before)[0])  # It trained on.

  out = train(workdir, 2, "train.num_steps=8")
  assert re.search(r"^resumed from step 6$", out, re.M), out
  assert "checkpoint step 6 was written with processes 1 (now 2)" in out and "restarts at record 24 " in out
  assert "finished at step 8" in out
  assert tiny.saved_run(workdir, 8)["data_start"] == 24
