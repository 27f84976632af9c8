"""What the README says of a run's end: the last keep_checkpoints steps are kept, time_limit_s
stops with a checkpoint, and --noresume refuses a workdir that has checkpoints."""

from __future__ import annotations

import subprocess
import sys

from mmar_jax.train import loop
from tests.train import tiny


def test_retention_time_limit_and_noresume(tmp_path):
  workdir = str(tmp_path / "run")
  result = loop.train(tiny.config("train.checkpoint_every=1", "train.keep_checkpoints=2", "train.num_steps=4"),
                      workdir)
  assert result.reason == "done" and tiny.finished_steps(workdir) == [3, 4]

  # A time limit spent by the first step (its compile included): the run stops after that step,
  # saves it although it is no checkpoint_every step, and still keeps only the last two.
  result = loop.train(tiny.config("train.checkpoint_every=100", "train.keep_checkpoints=2", "train.num_steps=1000",
                                  "train.time_limit_s=1e-6"), workdir)
  assert (result.start_step, result.step, result.reason) == (4, 5, "time_limit")
  assert tiny.finished_steps(workdir) == [4, 5]

  args = [sys.executable, "-m", "mmar_jax.cli.main", *tiny.cli_args(workdir), "--noresume"]
  refused = subprocess.run(args, capture_output=True, text=True, timeout=300)
  assert refused.returncode == 2, refused.stderr
  assert refused.stderr.strip().splitlines()[-1].startswith("mmar-jax train: error: --noresume but ")
  assert "holds steps [4, 5]" in refused.stderr and "Traceback" not in refused.stderr
  assert tiny.finished_steps(workdir) == [4, 5]  # Nothing trained, nothing removed.
