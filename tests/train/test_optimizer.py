"""The optimizer as the README states it: weight decay off norms and biases (by what a parameter is,
on a preset's real tree), warmup + cosine values, clipping by global norm, Adam's betas."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmar_jax import configs
from mmar_jax.models import tokenizers
from mmar_jax.models.mmar import MMAR, MMARConfig
from mmar_jax.train import experiment, loop, optimizer
from tests.train import tiny


def preset_params(name: str, *overrides: str):
  """The preset's parameter tree as ShapeDtypeStructs (nothing materialised), with logical axes.

  Built without the text tokenizer (the Qwen2 files need not be here): any id serves as the mask id."""
  config = configs.load_config(f"configs/{name}.py", ["data.num_workers=0", *overrides])
  model = MMAR(MMARConfig.from_config(config, config.model.vocab_size - 1))
  image = tokenizers.make_tokenizer(tokenizers.TokenizerConfig.from_config(config))
  exp = experiment.Experiment(config=config, text_tokenizer=None, special_ids=None, model=model,
                              image_tokenizer=image)
  boxed = jax.eval_shape(exp.init_params, jax.random.key(0))
  is_boxed = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
  names = {jax.tree_util.keystr(p): b.names for p, b in jax.tree_util.tree_leaves_with_path(boxed, is_leaf=is_boxed)}
  return nn.meta.unbox(boxed), names


@pytest.mark.parametrize("lora_rank", [128, 0])
def test_weight_decay_mask_on_the_real_tree_of_mmar_0p5b(lora_rank):
  params, axes = preset_params("mmar_0p5b", f"model.lora.rank={lora_rank}")
  mask = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(optimizer.weight_decay_mask(params))}
  shapes = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(params)}
  layer = "['backbone']['layers']"
  # The leaves the old `ndim >= 2` rule decayed by mistake: nn.scan stacks them over the 24 layers,
  # and the adapter's q/k/v biases are [heads, head_dim] even unstacked.
  stacked_not_decayed = [f"{layer}['input_layernorm']['scale']", f"{layer}['post_attention_layernorm']['scale']",
                         f"{layer}['self_attn']['q_proj']['bias']", f"{layer}['self_attn']['k_proj']['bias']",
                         f"{layer}['self_attn']['v_proj']['bias']", "['adapter']['blocks_0']['q_proj']['bias']"]
  for path in stacked_not_decayed:
    assert len(shapes[path]) >= 2 and mask[path] is False, (path, shapes[path])
  assert shapes[f"{layer}['input_layernorm']['scale']"] == (24, 896)
  assert shapes[f"{layer}['self_attn']['q_proj']['bias']"] == (24, 14, 64)
  # Every leaf, decided from what the test reads independently: a norm's parameters carry the
  # logical axis 'norm'; a bias is the `bias` beside a module's `kernel`; everything else is a
  # weight matrix, a LoRA factor or an embedding table and decays.
  for path, decays in mask.items():
    is_norm = "norm" in axes[path]
    is_bias = path.endswith("['bias']") and path.replace("['bias']", "['kernel']") in shapes
    assert decays == (not (is_norm or is_bias)), (path, axes[path], decays)
  decayed = sorted(p for p, m in mask.items() if m)
  assert f"{layer}['self_attn']['q_proj']['kernel']" in decayed and "['backbone']['embed_tokens']" in decayed
  assert any("lora_a" in p for p in decayed) == (lora_rank > 0)
  assert sum(not m for m in mask.values()) == sum(p.endswith(("['scale']", "['bias']")) for p in mask)


def test_weight_decay_mask_refuses_a_parameter_it_cannot_classify():
  with pytest.raises(ValueError, match=r"\['head'\]\['mystery'\]"):
    optimizer.weight_decay_mask({"head": {"mystery": jnp.zeros((2, 2))}})


@pytest.fixture(scope="module")
def tiny_params():
  config = tiny.config("model.lora.rank=4")
  exp = experiment.build(config)
  params = jax.jit(lambda key: _nonzero_like(nn.meta.unbox(exp.init_params(key))))(jax.random.key(0))
  return config, exp, params


def _nonzero_like(params):
  # Fresh LoRA B factors and biases are zero, where decay could not show: give every leaf values.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return treedef.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


@pytest.mark.parametrize("lora", [False, True])
def test_adamw_step_with_zero_gradient_decays_exactly_the_masked_leaves(tiny_params, lora):
  """With a zero gradient Adam's step is 0, so the update is -lr * weight_decay * p where decay
  applies and exactly 0 elsewhere (and on LoRA's frozen base weights)."""
  config, exp, params = tiny_params
  t = config.train
  tx = (loop.build_optimizer(exp, config) if lora else optimizer.make_optimizer(t))
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(zeros, params)
  lr0 = t.learning_rate / t.warmup_steps  # The first step's rate (the schedule is shifted by one).
  for path, u in jax.tree_util.tree_leaves_with_path(updates):
    name = jax.tree_util.keystr(path)
    p = np.asarray(_at(params, path))
    frozen = lora and name.startswith("['backbone']") and "lora_" not in name and "embed_tokens" not in name
    if name.endswith(("['scale']", "['bias']")) or frozen:
      assert np.all(np.asarray(u) == 0), name
    elif "embed_tokens" in name and lora:
      rows = [exp.special_ids.boi, exp.special_ids.eoi, exp.special_ids.mask]
      np.testing.assert_allclose(np.asarray(u)[rows], -lr0 * t.weight_decay * p[rows], rtol=1e-5, err_msg=name)
    else:
      np.testing.assert_allclose(np.asarray(u), -lr0 * t.weight_decay * p, rtol=1e-5, atol=1e-12, err_msg=name)


def _at(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


def test_learning_rate_is_linear_warmup_then_cosine_to_the_end_fraction():
  config = configs.load_config("configs/demo.py", ["train.learning_rate=0.01", "train.warmup_steps=10",
                                                   "train.num_steps=110", "train.end_lr_fraction=0.1"])
  schedule = optimizer.learning_rate_schedule(config.train)
  peak, end, warmup, total = 0.01, 0.001, 10, 110

  def reference(step):  # Written out: step k applies the rate of count k + 1.
    c = step + 1
    if c < warmup:
      return peak * c / warmup
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * (c - warmup) / (total - warmup)))

  for step in (0, 1, 4, 8, 9, 10, 30, 59, 60, 100, 108, 109):
    np.testing.assert_allclose(float(schedule(step)), reference(step), rtol=1e-5, err_msg=str(step))
  assert float(schedule(0)) == pytest.approx(peak / warmup)  # The first step learns.
  assert float(schedule(9)) == pytest.approx(peak)
  assert float(schedule(109)) == pytest.approx(end)


def test_gradient_is_clipped_by_global_norm_before_adam_with_the_configured_betas():
  """Adam's moments after one step are (1 - b1) g and (1 - b2) g^2 of the *clipped* gradient."""
  config = configs.load_config("configs/demo.py", ["train.grad_clip_norm=1.0", "train.adam_b1=0.8",
                                                   "train.adam_b2=0.9", "train.weight_decay=0.0"])
  params = {"a": {"kernel": jnp.ones((3, 4))}, "b": {"bias": jnp.ones((5,))}}
  grads = {"a": {"kernel": jnp.full((3, 4), 2.0)}, "b": {"bias": jnp.full((5,), -3.0)}}
  norm = math.sqrt(12 * 4.0 + 5 * 9.0)
  assert norm > 1.0
  tx = optimizer.make_optimizer(config.train)
  _, opt_state = tx.update(grads, tx.init(params), params)
  mu = optax.tree_utils.tree_get(opt_state, "mu")
  nu = optax.tree_utils.tree_get(opt_state, "nu")
  for key, leaf in (("a", "kernel"), ("b", "bias")):
    clipped = np.asarray(grads[key][leaf]) / norm
    np.testing.assert_allclose(np.asarray(mu[key][leaf]), 0.2 * clipped, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(nu[key][leaf]), 0.1 * clipped**2, rtol=1e-6)
  # Below the threshold the gradient passes unchanged.
  small = jax.tree.map(lambda g: g / (2 * norm), grads)
  _, opt_state = tx.update(small, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(optax.tree_utils.tree_get(opt_state, "mu")["a"]["kernel"]),
                             0.2 * np.asarray(small["a"]["kernel"]), rtol=1e-6)
