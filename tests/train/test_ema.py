"""The params' EMA (train/ema.py): the closed form, LoRA's pruning, the checkpoint item, --weights."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmar_jax.train import ema
from tests.train import tiny


def test_ema_after_k_updates_is_the_closed_form():
  rng = np.random.default_rng(0)
  decay, k = 0.9, 7
  history = [{"a": {"kernel": rng.normal(size=(3, 2)).astype(np.float32)}, "b": rng.normal(size=4).astype(np.float32)}
             for _ in range(k + 1)]
  average = ema.prune(history[0], lambda _: True)
  step = jax.jit(lambda e, p: ema.update(e, p, decay))
  for params in history[1:]:
    average = step(average, params)
  for path in (("a", "kernel"), ("b",)):
    leaf = lambda t: t[path[0]][path[1]] if len(path) == 2 else t[path[0]]  # noqa: E731
    expected = decay ** k * leaf(history[0]) + sum(
        (1 - decay) * decay ** (k - i) * leaf(history[i]) for i in range(1, k + 1))
    np.testing.assert_allclose(np.asarray(leaf(average)), expected, rtol=1e-5, atol=1e-6)
  # A skipped (non-finite) update leaves the average where it was.
  kept = ema.update(average, history[0], decay, keep=jnp.asarray(False))
  tiny.assert_trees_equal(kept, average)


def test_only_the_trainable_leaves_are_averaged_and_merge_puts_them_back():
  params = {"backbone": {"q": {"kernel": np.ones((2, 2)), "lora_a": np.ones((2, 1))}}, "head": {"bias": np.zeros(2)}}
  mask = {"backbone": {"q": {"kernel": False, "lora_a": True}}, "head": {"bias": True}}
  average = ema.prune(params, ema.trainable_paths(mask).__contains__)
  assert set(average["backbone"]["q"]) == {"lora_a"} and "head" in average
  moved = jax.tree.map(lambda x: x + 1, params)
  merged = ema.merge(moved, average)
  assert np.array_equal(merged["backbone"]["q"]["kernel"], moved["backbone"]["q"]["kernel"])  # frozen: raw
  assert np.array_equal(merged["backbone"]["q"]["lora_a"], params["backbone"]["q"]["lora_a"])  # the EMA's


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
  workdir = str(tmp_path_factory.mktemp("ema_run"))
  tiny.run(workdir, "train.ema_decay=0.5")
  return workdir


def test_checkpoint_has_the_ema_and_weights_raw_reads_the_params(trained):
  from mmar_jax import checkpoint
  raw, _, step = checkpoint.load_params(trained, weights="raw")
  default, _, _ = checkpoint.load_params(trained)
  averaged, _, _ = checkpoint.load_params(trained, weights="ema")
  assert step == 6 and checkpoint.has_ema(checkpoint.path_of(trained) / "checkpoints" / "6")
  tiny.assert_trees_equal(default, averaged)
  _, saved = tiny.saved_params(trained)
  tiny.assert_trees_equal(raw, saved)
  assert any(not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(raw), jax.tree.leaves(default)))


def test_without_ema_the_checkpoint_has_none_and_weights_ema_is_one_line(tmp_path):
  from mmar_jax import checkpoint
  tiny.run(str(tmp_path), "train.ema_decay=0.0", "train.num_steps=3")
  assert not checkpoint.has_ema(checkpoint.path_of(tmp_path) / "checkpoints" / "3")
  for weights, says in (("ema", "holds no EMA"), ("best", "--weights")):
    out = subprocess.run([sys.executable, "-m", "mmar_jax.cli.main", "evaluate", f"--workdir={tmp_path}",
                          f"--weights={weights}", "--samples=1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert says in out.stderr and "Traceback" not in out.stderr
