"""Training from the latent cache: the same step-0 loss as on the fly, exact resume, the CLI path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mmar_jax.train import loop
from tests.data import test_latent_source as data
from tests.train import tiny

KL16 = tuple(f"{k}={v}" for k, v in data.VAE.items()) + ("data.seq_len=40", "model.dtype=float32", "head.dtype=float32")


def config(root, *extra):
  return tiny.config(*KL16, f"tokenizer.vae_checkpoint={root / 'vae'}", "data.source=latents",
                     f"data.latents_dir={root / 'latents'}", f"data.manifest={root / 'manifest.jsonl'}", *extra)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  root = tmp_path_factory.mktemp("cache")
  data.write_dataset(root)
  data.make_cache(root, config(root))
  return root


def test_cache_and_on_the_fly_give_the_same_step_0_loss_with_the_posterior_mean(cache, tmp_path):
  """The same records, tasks and mask draws; only where the moments come from differs. Float32
  throughout; relative tolerance 1e-6, for the cached encoder's batch of 4 against the step's batch
  of 8 (measured here: 0.0, bit-identical loss, CE and v-loss)."""
  mean = ("tokenizer.sample_posterior=False", "data.latents_flip=False")
  cached = loop.train(config(cache, *mean), str(tmp_path / "cached"), max_steps=1).last_metrics
  fly = loop.train(config(cache, *mean, "data.source=manifest"), str(tmp_path / "fly"), max_steps=1).last_metrics
  assert cached["ce"] > 0 and cached["v_loss"] > 0
  for key in ("loss", "ce", "v_loss"):
    assert abs(cached[key] - fly[key]) <= 1e-6 * abs(fly[key]), (key, cached[key], fly[key])
  # The sample differs from the mean: the switch reaches the cache's moments.
  sampled = loop.train(config(cache, "data.latents_flip=False"), str(tmp_path / "sampled"), max_steps=1).last_metrics
  assert abs(sampled["v_loss"] - cached["v_loss"]) > 1e-4


@pytest.mark.slow  # Three training runs, one with a grain worker: over a minute on 2 cores.
def test_resume_through_the_cache_source_is_bit_exact(cache, tmp_path):
  """8 steps of 8 rows over 6 records (about 10 epochs, so flips and reshuffles) straight, against
  4 steps, a checkpoint, and 4 more in a new run; grain workers in the interrupted runs."""
  straight = str(tmp_path / "straight")
  loop.train(config(cache, "train.num_steps=8", "train.checkpoint_every=4"), straight)
  resumed = str(tmp_path / "resumed")
  workers = config(cache, "train.num_steps=8", "train.checkpoint_every=4", "data.num_workers=1")
  assert loop.train(workers, resumed, max_steps=4).step == 4
  result = loop.train(workers, resumed)
  assert (result.start_step, result.step) == (4, 8)
  step_a, a = tiny.saved_params(straight)
  step_b, b = tiny.saved_params(resumed)
  assert step_a == step_b == 8
  tiny.assert_trees_equal(a, b)


@pytest.mark.slow
def test_prepare_data_then_train_from_the_cache_on_the_command_line(tmp_path):
  data.write_dataset(tmp_path)
  data.write_vae(config(tmp_path))
  vae = [f"--config.{o}" for o in KL16[:-3]] + [f"--config.tokenizer.vae_checkpoint={tmp_path / 'vae'}"]
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  prep = subprocess.run([sys.executable, "-m", "mmar_jax.cli.main", "prepare-data", "--cache-latents",
                         f"--manifest={tmp_path / 'manifest.jsonl'}", f"--out={tmp_path / 'latents'}", "--batch-size=8",
                         "--config=configs/demo.py", *vae], capture_output=True, text=True, env=env, timeout=300)
  assert prep.returncode == 0, prep.stderr[-3000:]
  out = tiny.run(str(tmp_path / "run"), *KL16, f"tokenizer.vae_checkpoint={tmp_path / 'vae'}", "data.source=latents",
                 f"data.latents_dir={tmp_path / 'latents'}", "train.num_steps=3")
  assert "finished at step 3" in out and "Traceback" not in out
  # Pointing the manifest at the cache says how to train from it (one line, exit 2).
  wrong = subprocess.run([sys.executable, "-m", "mmar_jax.cli.main",
                          *tiny.cli_args(str(tmp_path / "wrong"), *KL16, f"tokenizer.vae_checkpoint={tmp_path / 'vae'}",
                                         f"data.manifest={tmp_path / 'latents'}", "data.source=manifest")],
                         capture_output=True, text=True, env=env, timeout=300)
  assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
  assert "it is a latent cache: train from it with --config.data.source=latents" in wrong.stderr
