"""Periodic evaluation (config.train.eval_every): the hook the training CLI installs runs at every
eval_every step and at the last, and what it writes (eval/step_K_{unseen,seen}.png, step_K.json,
the eval/<set>/ TensorBoard scalars) is the evaluation of that step's parameters."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from mmar_jax import checkpoint
from mmar_jax.infer import image_io
from mmar_jax.train import evaluation, experiment, loop
from tests.train import tiny
from tests.train.test_local_launch import tensorboard_scalars

SAMPLES = 2  # Of each set.

# ~45 s of CPU (two compiles: the train step, then generation and answering); minutes on a busy box.
pytestmark = pytest.mark.slow


def test_periodic_evaluation_at_its_steps_logs_that_steps_evaluation(tmp_path):
  workdir = str(tmp_path / "run")
  # Steps 2 and 4 by eval_every, and 5, the last, although off the grid; checkpoints at the same
  # steps so that step 4 can be evaluated again here. Few sampling steps: the compile is the cost.
  config = tiny.config("train.num_steps=5", "train.eval_every=2", "train.checkpoint_every=2",
                       f"train.eval_samples={SAMPLES}", "diffusion.num_sampling_steps=3")
  result = loop.train(config, workdir, eval_fn=loop.default_eval_fn(config, workdir))
  assert (result.step, result.reason) == (5, "done")

  eval_dir = os.path.join(workdir, "eval")
  assert sorted(os.listdir(eval_dir)) == sorted(f"step_{k}{suffix}" for k in (2, 4, 5)
                                                for suffix in (".json", "_unseen.png", "_seen.png"))
  _, scalars = tensorboard_scalars(workdir)
  with open(os.path.join(eval_dir, "step_4.json")) as f:
    logged = json.load(f)
  assert set(logged) == {"unseen", "seen"}
  for name in logged:
    # Every score, the image grid and the answers' text, at exactly the evaluated steps.
    tags = [f"eval/{name}/{k}" for k in logged[name]["summary"]] + [f"eval/{name}/generated",
                                                                    f"eval/{name}/answers/text_summary"]
    assert {t: sorted(scalars.get(t, {})) for t in tags} == {t: [2, 4, 5] for t in tags}

  # Step 4's checkpoint evaluated again, here, on the same records: the same images (in the PNG),
  # answers (in the JSON) and scores (in TensorBoard) as the hook logged at step 4.
  params, saved_config, step = checkpoint.load_params(workdir, 4)
  assert step == 4
  exp = experiment.build(saved_config)
  for name, records in evaluation.evaluation_sets(config, SAMPLES).items():
    again = evaluation.evaluate(exp, params, records, seed=config.seed)
    expected_grid = image_io.grid_png(again["images"], [r["caption"] for r in records],
                                      str(tmp_path / f"again_{name}.png"))
    assert np.array_equal(np.asarray(Image.open(os.path.join(eval_dir, f"step_4_{name}.png")).convert("RGB")),
                          expected_grid)
    assert [u["answer"] for u in logged[name]["understanding"]] == [u["answer"] for u in again["understanding"]]
    for key, value in again["summary"].items():
      assert scalars[f"eval/{name}/{key}"][4] == pytest.approx(value, abs=1e-6), (name, key)
