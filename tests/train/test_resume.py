"""Exact resume: interrupted runs (SIGKILL, SIGTERM, a mesh change) end where an uninterrupted one does,
and a resume says where it started: "resumed from step K", with the saves it lost and the steps it set aside.

The interrupted runs are stopped once a checkpoint appears on disk (not after a delay), and each
test asserts that the stop came before the last step and that the second run started from it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from tests.train import tiny

# Each test starts several training processes (a compile each): over a minute on 2 cores.
pytestmark = pytest.mark.slow

N = 20  # Steps of the compared runs; the interrupted ones are stopped at their first checkpoint.
FIRST = 5  # That checkpoint: N - FIRST steps left, time enough for a signal to land first.
TMP = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  tiny.run(workdir, f"train.num_steps={N}")
  step, params = tiny.saved_params(workdir)
  assert step == N
  return params


def resumed_from(out: str) -> int:
  found = re.findall(r"^resumed from step (\d+)", out, re.M)
  assert len(found) == 1, out
  return int(found[0])


def kill_after_first_checkpoint(workdir: str, *extra: str) -> int:
  """Starts a run, SIGKILLs it once step FIRST is on disk; returns the newest finished step, asserted < N."""
  proc = tiny.start(workdir, f"train.num_steps={N}", f"train.checkpoint_every={FIRST}", *extra)
  tiny.wait_for_step(workdir, FIRST, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps = tiny.finished_steps(workdir)
  assert FIRST <= steps[-1] < N, f"the run reached step {steps[-1]} before the kill"
  return steps[-1]


def test_sigkill_then_resume_is_bit_identical_and_on_another_mesh_within_float_tolerance(tmp_path, uninterrupted):
  workdir, elsewhere = str(tmp_path / "same"), str(tmp_path / "other_mesh")
  last = kill_after_first_checkpoint(workdir, "mesh.data=8")
  shutil.copytree(workdir, elsewhere)  # The same interrupted run, resumed twice.

  out = tiny.run(workdir, f"train.num_steps={N}")
  assert resumed_from(out) == last
  assert f"finished at step {N}" in out
  step, params = tiny.saved_params(workdir)
  assert step == N
  tiny.assert_trees_equal(params, uninterrupted)

  out = tiny.run(elsewhere, f"train.num_steps={N}", "mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2")
  assert resumed_from(out) == last
  assert (f"checkpoint step {last} was written with mesh data=8,fsdp=1,tensor=1 (now data=1,fsdp=4,tensor=2): "
          "parameters, optimizer state, step, RNG and the data order restored exactly") in out
  step, params = tiny.saved_params(elsewhere)
  # The compared parameters are those the run on the other mesh trained and saved.
  assert step == N and tiny.saved_run(elsewhere, N)["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
  tiny.assert_trees_equal(params, uninterrupted, atol=1e-5)


def test_a_save_killed_mid_write_is_named_on_resume_and_sigterm_then_saves(tmp_path):
  """SIGKILL the moment Orbax's temporary step directory appears; the resume names that step; SIGTERM
  to the resumed run saves a checkpoint and exits 0."""
  workdir = str(tmp_path)
  directory = os.path.join(workdir, "checkpoints")
  for _ in range(3):  # The rename can win the race against the kill; then try again (a resume).
    proc = tiny.start(workdir, "train.num_steps=100000", "train.checkpoint_every=1")
    before = tiny.finished_steps(workdir)
    in_flight = []
    while not in_flight:  # Polled without a pause: the directory lives for milliseconds.
      assert proc.poll() is None, proc.stdout.read()
      names = os.listdir(directory) if os.path.isdir(directory) else []
      # Once a step of this run is finished (one to resume from), catch the next save in flight.
      if [n for n in names if n.isdigit() and int(n) not in before]:
        in_flight = [int(m.group(1)) for n in names if (m := TMP.match(n))]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = [int(m.group(1)) for n in os.listdir(directory) if (m := TMP.match(n))]
    if left:
      break
  assert left, "no save was caught in flight in 3 tries"
  last = tiny.finished_steps(workdir)[-1]
  assert left == [last + 1]
  # The resumed run goes on until a scheduler's SIGTERM: it saves at the next step and exits 0.
  proc = tiny.start(workdir, "train.num_steps=100000", "train.checkpoint_every=1")
  tiny.wait_for_step(workdir, last + 2, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert re.search(rf"^resumed from step {last}; later save of step {last + 1} never finished$", out, re.M), out
  assert not [n for n in os.listdir(directory) if TMP.match(n)]  # Orbax cleaned it up.
  step = int(re.search(r"preempted \(SIGTERM\) at step (\d+); checkpoint saved", out).group(1))
  assert last + 2 <= step < 100000 and tiny.finished_steps(workdir)[-1] == step


def corrupt(workdir: str, step: int) -> None:
  """Truncates every file of a step's train_state item, as a disk or copy failure would."""
  for root, _, files in os.walk(os.path.join(workdir, "checkpoints", str(step), "train_state")):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(0)


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory) -> str:
  """A run trained in this process to step 4, checkpointed at 2 and 4; tests copy it."""
  from mmar_jax.train import loop
  workdir = str(tmp_path_factory.mktemp("four") / "run")
  loop.train(tiny.config("train.checkpoint_every=2", "train.num_steps=4"), workdir)
  return workdir


def test_unreadable_newest_step_is_moved_aside_and_recomputed(tmp_path, capsys, four_steps):
  from mmar_jax import checkpoint
  from mmar_jax.train import loop
  workdir = str(tmp_path / "run")
  shutil.copytree(four_steps, workdir)
  capsys.readouterr()
  corrupt(workdir, 4)
  result = loop.train(tiny.config("train.checkpoint_every=2", "train.num_steps=5"), workdir)
  out = capsys.readouterr().out
  assert (result.start_step, result.step) == (2, 5)
  aside = os.listdir(os.path.join(workdir, "checkpoints", "corrupt"))
  assert len(aside) == 1 and aside[0].startswith("4-")
  assert re.search(rf"^resumed from step 2; unreadable step 4 \(moved to .*corrupt/{aside[0]}\)$", out, re.M), out
  # The recomputed step 4 is saved under its number and loads; the corrupt one is kept aside.
  assert tiny.finished_steps(workdir) == [2, 4, 5]
  _, _, step = checkpoint.load_params(os.path.join(workdir, "checkpoints", "4"))
  assert step == 4
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "corrupt", aside[0], "train_state"))


def test_no_readable_step_is_an_error_naming_each_unless_starting_over(tmp_path, four_steps):
  workdir = str(tmp_path / "run")
  shutil.copytree(four_steps, workdir)
  corrupt(workdir, 2)
  corrupt(workdir, 4)
  args = [sys.executable, "-m", "mmar_jax.cli.main", *tiny.cli_args(workdir, "train.num_steps=4", "train.checkpoint_every=2")]
  result = subprocess.run(args, capture_output=True, text=True, timeout=600)
  assert result.returncode == 2, result.stderr
  error = result.stderr.strip().splitlines()[-1]
  assert error.startswith("mmar-jax train: error: ") and "none is readable" in error
  assert re.search(r"step 4: \w+", error) and re.search(r"step 2: \w+", error) and "--start-over" in error
  assert tiny.finished_steps(workdir) == [2, 4]  # Nothing moved, nothing trained.

  result = subprocess.run(args + ["--start-over"], capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  assert "starting over (--start-over)" in result.stdout and "finished at step 4" in result.stdout
  assert sorted(n.split("-")[0] for n in os.listdir(os.path.join(workdir, "checkpoints", "corrupt"))) == ["2", "4"]
  assert tiny.finished_steps(workdir) == [2, 4]  # Retrained from step 0.
