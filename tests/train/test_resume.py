"""Exact resume: interrupted runs (SIGKILL, SIGTERM, a mesh change) end where an uninterrupted one does."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.train import tiny

# Each test starts several training processes (a compile each): over a minute on 2 cores.
pytestmark = pytest.mark.slow

N = 6


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  tiny.run(workdir)
  step, params = tiny.saved_params(workdir)
  assert step == N
  return params


def test_sigkill_after_checkpoint_then_resume_is_bit_identical(tmp_path, uninterrupted):
  workdir = str(tmp_path)
  # Killed (no chance to clean up) once step N/2 is on disk, wherever it then is.
  proc = tiny.start(workdir, f"train.checkpoint_every={N // 2}")
  tiny.wait_for_step(workdir, N // 2, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  out = tiny.run(workdir)
  assert "finished at step 6" in out
  step, params = tiny.saved_params(workdir)
  assert step == N
  tiny.assert_trees_equal(params, uninterrupted)


def test_resume_on_another_mesh_matches_within_float_tolerance(tmp_path, uninterrupted):
  workdir = str(tmp_path)
  proc = tiny.start(workdir, "mesh.data=8")
  tiny.wait_for_step(workdir, N // 2, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  tiny.run(workdir, "mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2")
  step, params = tiny.saved_params(workdir)
  assert step == N
  tiny.assert_trees_equal(params, uninterrupted, atol=1e-5)


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path):
  workdir = str(tmp_path)
  proc = tiny.start(workdir, "train.num_steps=400", "train.checkpoint_every=1000")
  # The TensorBoard directory appears once training is set up; then let a few steps run.
  while not os.path.isdir(os.path.join(workdir, "tensorboard")):
    assert proc.poll() is None, proc.stdout.read()
    time.sleep(0.05)
  time.sleep(3)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert "preempted (SIGTERM) at step" in out
  step, _ = tiny.saved_params(workdir)
  assert 0 < step < 400
  out = tiny.run(workdir, f"train.num_steps={step + 2}")
  assert f"finished at step {step + 2}" in out


def test_unreadable_newest_step_falls_back_to_the_previous_one(tmp_path, capsys):
  from mmar_jax.train import loop
  workdir = str(tmp_path)
  config = tiny.config("train.checkpoint_every=2", "train.num_steps=4")
  loop.train(config, workdir, max_steps=4)
  # Corrupt step 4: truncate every file of its state item (as a disk or copy failure would).
  state_dir = os.path.join(workdir, "checkpoints", "4", "state")
  for root, _, files in os.walk(state_dir):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(0)
  result = loop.train(tiny.config("train.checkpoint_every=2", "train.num_steps=5"), workdir)
  assert "checkpoint step 4" in capsys.readouterr().out
  assert (result.start_step, result.step) == (2, 5)
