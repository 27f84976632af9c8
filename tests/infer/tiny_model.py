"""A tiny MMAR (as tests/models/test_mmar.py's) with a head that is not at its zero init, shared by the infer tests."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmar_jax import configs
from mmar_jax.batch import Batch
from mmar_jax.data.text_tokenizer import SpecialIds
from mmar_jax.models.mmar import MMAR, MMARConfig

SPECIAL = SpecialIds(pad=0, im_start=1, im_end=2, boi=3, eoi=4, mask=5)
VOCAB, N, C = 64, 16, 48  # A 16x16 image in 4x4 patches: 16 tokens of 48.


def tiny_config():
  config = configs.base_config()
  m = config.model
  m.vocab_size, m.hidden_size, m.intermediate_size, m.num_layers = VOCAB, 32, 64, 2
  m.num_heads, m.num_kv_heads, m.max_seq_len, m.init_std = 2, 1, 64, 0.1
  m.tie_word_embeddings = False
  m.adapter_depth, m.adapter_width, m.adapter_heads = 1, 32, 2
  m.dtype = config.head.dtype = "float32"
  config.head.depth, config.head.width, config.head.frequency_dim = 1, 32, 32
  config.tokenizer.kind, config.tokenizer.image_size, config.tokenizer.patch_size = "patch", 16, 4
  config.diffusion.num_sampling_steps = 10  # Few diffusion steps: these tests check the loop, not quality.
  config.diffusion.num_generation_steps = 4
  config.data.seq_len = 32
  configs.validate(config)
  return config


@functools.lru_cache(maxsize=None)
def model_and_params():
  """(MMAR, params): the DiT-style zero-initialised head modulations get small random values, so
  that the sampled tokens depend on z (at init they would not), as after some training."""
  cfg = MMARConfig.from_config(tiny_config(), SPECIAL.mask)
  model = MMAR(cfg)
  length = N + 4
  ids = np.full((1, length), SPECIAL.mask, np.int32)
  batch = dataclasses.replace(
      Batch.zeros(1, length, 1, N), input_ids=ids, targets=ids, segment_ids=np.ones((1, length), np.int32),
      positions=np.arange(length, dtype=np.int32)[None], image_slots=np.arange(1, N + 1, dtype=np.int32)[None, None],
      image_valid=np.ones((1, 1), bool))
  # Jitted: flax's init op by op takes half a minute on a CPU.
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), batch, np.zeros((1, 1, N, C), np.float32),
                                             np.zeros((1, 1, N), bool), jax.random.key(1)))["params"]
  leaves, treedef = jax.tree.flatten(params["head"])
  keys = jax.random.split(jax.random.key(7), len(leaves))
  head = jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  return model, dict(params, head=head)


def full_batch(ids: np.ndarray, mask: np.ndarray, image_slots: np.ndarray) -> Batch:
  """MMAR.__call__'s batch for left-padded rows with one image each at `image_slots` [b, n]."""
  (b, length), n = ids.shape, image_slots.shape[1]
  return dataclasses.replace(
      Batch.zeros(b, length, 1, n), input_ids=ids, targets=ids, segment_ids=mask.astype(np.int32),
      positions=np.maximum(np.cumsum(mask, -1) - 1, 0).astype(np.int32),
      image_slots=image_slots[:, None].astype(np.int32), image_valid=np.ones((b, 1), bool))


@functools.partial(jax.jit, static_argnums=0)
def full_forward(model, params, batch, image_tokens, generate_mask):
  """MMAR.__call__ on the whole sequence: the reference the cached paths must match."""
  return model.apply({"params": params}, batch, image_tokens, generate_mask, jax.random.key(0))


@functools.partial(jax.jit, static_argnums=0, static_argnames=("method", "reserve"))
def apply(model, params, *args, method, reserve=None):
  """`model.apply` of one of MMAR's inference methods, jitted."""
  kwargs = {} if reserve is None else {"reserve": reserve}
  return model.apply({"params": params}, *args, method=method, **kwargs)


def random_tokens(seed: int, batch: int) -> jnp.ndarray:
  return jax.random.normal(jax.random.key(seed), (batch, N, C))
