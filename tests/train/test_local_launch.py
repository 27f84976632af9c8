"""launch/local.sh: two real processes of 4 CPU devices train as one process of 8 fed the same batch;
their checkpoint resumes in one process of 8 devices, whose checkpoint two processes resume in turn,
and SIGTERM to the launch makes both save and exit 0. One journey, in the order a user meets it:
each resume names what changed, and every process start costs tens of seconds on 2 cores."""

from __future__ import annotations

import glob
import os
import re
import signal
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from tests.train import tiny

SCRIPT = "launch/local.sh"
STEPS = 4
EXTRA = (f"train.num_steps={STEPS}", "train.log_every=1", "train.checkpoint_every=2")


def launch(n: int, *args: str, devices: int = 4, timeout: float = 900) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHON=sys.executable, MMAR_LOCAL_DEVICES=str(devices))
  return subprocess.run(["bash", SCRIPT, str(n), *args], env=env, capture_output=True, text=True, timeout=timeout)


def tensorboard_scalars(workdir: str) -> tuple[int, dict[str, dict[int, float]]]:
  """(number of event files, {tag: {step: value}}) of a run's TensorBoard directory."""
  files = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  scalars: dict[str, dict[int, float]] = {}
  for path in files:
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc.
      (length,) = struct.unpack_from("<Q", data, pos)
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 16 + length
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return len(files), scalars


def one_process_reference(workdir: str):
  """Per-step losses and final params of one process with this session's 8 devices, fed each step
  the global batch two processes make: host 0's rows then host 1's, each built by the pipeline as
  that host (process_index i of 2). Also the record indices each host's batches held."""
  from mmar_jax.data import pipeline
  from mmar_jax.train import loop, optimizer, sharding
  from mmar_jax.train import step as step_lib
  from jax.sharding import NamedSharding, PartitionSpec
  config = tiny.config(*EXTRA)
  run = loop.setup(config, workdir)
  state = run.fresh_state()
  train_step = step_lib.make_train_step(run.exp.model, run.exp.image_tokenizer, run.tx,
                                        optimizer.learning_rate_schedule(config.train),
                                        step_lib.StepConfig.from_config(config))
  hosts = [iter(pipeline.build_dataset(pipeline.PipelineConfig.from_config(config), run.exp.text_tokenizer,
                                       process_index=i, process_count=2)) for i in range(2)]
  tokenizer_params = jax.device_put(run.exp.image_tokenizer_params(), NamedSharding(run.mesh, PartitionSpec()))
  rules = config.mesh.logical_axis_rules
  with sharding.activate(run.mesh, rules):
    jitted = jax.jit(train_step, in_shardings=(run.state_shardings, pipeline.batch_sharding(run.mesh, rules), None),
                     out_shardings=(run.state_shardings, None), donate_argnums=0)
  losses, records = {}, [set(), set()]
  with sharding.activate(run.mesh, rules):
    for step in range(1, STEPS + 1):
      parts = [next(h) for h in hosts]
      for i, part in enumerate(parts):
        records[i] |= set(part.record_index[part.record_index >= 0].tolist())
      batch = jax.tree.map(lambda *p: np.concatenate(p), *parts)
      state, metrics = jitted(state, pipeline.to_global(batch, run.mesh, rules), tokenizer_params)
      losses[step] = float(metrics["loss"])
  return losses, state, records


@pytest.mark.slow
def test_two_local_processes_train_as_one_then_resume_in_one_and_back_in_two(tmp_path):
  from mmar_jax import checkpoint
  workdir = str(tmp_path / "two")
  result = launch(2, *tiny.cli_args(workdir, *EXTRA)[1:])
  assert result.returncode == 0, result.stdout + result.stderr
  logs = [open(os.path.join(workdir, "launch_logs", f"process_{i}.log")).read() for i in range(2)]
  assert f"finished at step {STEPS}" in logs[0]
  # Only process 0 shows the bar and writes TensorBoard (one event file, one writer).
  assert "train: 100%" in logs[0] and "train:" not in logs[1] and "finished at step" not in logs[1]
  files, scalars = tensorboard_scalars(workdir)
  assert files == 1
  # The scalars the README lists (no MFU: a CPU has no peak), each at every logged step.
  listed = {"loss", "ce", "v_loss", "grad_norm", "learning_rate", "ce_weight", "diffusion_weight", "skipped",
            "total_skips", "tokens_per_s_per_device", "images_per_s_per_device", "step_time_s",
            "model_tflops_per_s_per_device"}
  assert listed <= set(scalars) and "mfu" not in scalars, sorted(scalars)
  assert all(sorted(scalars[tag]) == list(range(1, STEPS + 1)) for tag in listed)
  names = os.listdir(os.path.join(workdir, "checkpoints", str(STEPS), "data"))
  assert sorted(n for n in names if n.startswith("process_")) == ["process_0-of-2.json", "process_1-of-2.json"]
  assert tiny.saved_run(workdir, STEPS)["process_count"] == 2

  losses, state, records = one_process_reference(str(tmp_path / "one"))
  # The hosts' parts are disjoint: every record of a global batch comes from one host only.
  assert records[0] and records[1] and not records[0] & records[1]
  # The two processes' losses are the reference's, fed host 0's then host 1's part: had they
  # read the same part, or not their own, the global batch and so the loss would differ.
  assert sorted(scalars["loss"]) == list(range(1, STEPS + 1))
  for step, loss in losses.items():
    assert abs(scalars["loss"][step] - loss) <= 1e-5, (step, scalars["loss"][step], loss)
  # The two-process checkpoint opens in this one process, onto its first device.
  saved, _, step = checkpoint.load_params(workdir, weights="raw")
  assert step == STEPS and all(x.devices() == {jax.devices()[0]} for x in jax.tree.leaves(saved))
  tiny.assert_trees_equal(jax.device_get(saved), jax.device_get(state.params), atol=1e-5)
  ema, _, _ = checkpoint.load_params(workdir)  # The EMA, which evaluate and export read, too.
  tiny.assert_trees_equal(jax.device_get(ema), jax.device_get(state.ema), atol=1e-5)

  # One process with 8 devices resumes it at the next step, not 0.
  out = tiny.run(workdir, *EXTRA, f"train.num_steps={STEPS + 2}")
  assert re.search(rf"^resumed from step {STEPS}$", out, re.M), out
  # Step 4 of 8 rows: 32 records into the shuffled order, all of them in one process's slice now.
  assert (f"checkpoint step {STEPS} was written with processes 2 (now 1): parameters, optimizer state, step and RNG "
          "restored exactly; the data iterator's per-process state does not map onto 1 process(es), so each "
          "host's stream restarts at record 32 of its slice") in out
  assert f"finished at step {STEPS + 2}" in out
  assert tiny.saved_run(workdir, STEPS + 2) == {"process_count": 1, "device_count": 8, "global_batch": 8,
                                                "data_start": 32, "mesh": {"data": 8, "fsdp": 1, "tensor": 1}}
  resumed, _, _ = checkpoint.load_params(os.path.join(workdir, "checkpoints", str(STEPS + 2)), weights="raw")
  assert not np.array_equal(jax.tree.leaves(resumed)[0], jax.tree.leaves(saved)[0])  # It trained on.

  # Two processes resume that (the other way round) and run until a scheduler's SIGTERM reaches
  # local.sh: through each supervisor to its child; both save and exit 0.
  proc = subprocess.Popen(["bash", SCRIPT, "2", *tiny.cli_args(workdir, *EXTRA, "train.num_steps=10000")[1:]],
                          env=dict(os.environ, PYTHON=sys.executable, MMAR_LOCAL_DEVICES="4"),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    tiny.wait_for_step(workdir, STEPS + 4, proc, timeout=600)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, out
  log = open(os.path.join(workdir, "launch_logs", "process_0.log")).read()
  assert re.search(rf"^resumed from step {STEPS + 2}$", log, re.M), log
  assert f"checkpoint step {STEPS + 2} was written with processes 1 (now 2)" in log and "restarts at record 24 " in log
  match = re.search(r"preempted \(SIGTERM\) at step (\d+); checkpoint saved", log)
  assert match, log
  saved_at = int(match.group(1))
  assert saved_at >= STEPS + 4 and tiny.saved_run(workdir, saved_at)["data_start"] == 24


@pytest.mark.parametrize("args, says", [
    ((), "missing N"),
    (("two", "--workdir=/tmp/x", "--config=configs/demo.py"), "N=two must be a positive number"),
    (("2", "--config=configs/demo.py"), "missing --workdir"),
    (("2", "--workdir=/tmp/x"), "missing --config"),
    (("2", "--workdir=/tmp/x", "--config=configs/demo.py", "--num-processes=2"), "--num-processes is set by this"),
])
def test_local_launch_checks_its_arguments(args, says):
  result = subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHON=sys.executable))
  assert result.returncode == 2
  assert says in result.stderr and "usage: launch/local.sh N" in result.stderr


def test_local_launch_parses():
  assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0
