"""A real pipeline batch through the patch tokenizer and the MMAR forward: the pieces fit together."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmar_jax import configs
from mmar_jax.data import pipeline, sequences, text_tokenizer
from mmar_jax.models import tokenizers
from mmar_jax.models.mmar import MMAR, MMARConfig, MaskRatioConfig, draw_generation_mask


def test_pipeline_batch_trains_both_losses_on_the_drawn_positions():
  # The demo config, shrunk: packed rows of 64 tokens hold up to 3 sequences of 16 image tokens.
  config = configs.load_config("configs/demo.py", [
      "data.seq_len=64", "data.batch_size=4", "data.num_workers=0", "data.synthetic_records=64",
      "model.num_layers=1", "model.max_seq_len=64", "head.depth=1", "model.mask_ratio_min=0.0"])
  tok = text_tokenizer.load(config.data.tokenizer)
  text_tokenizer.check_vocab_size(tok, config.model.vocab_size)
  it = iter(pipeline.build_dataset(pipeline.PipelineConfig.from_config(config), tok, process_index=0,
                                   process_count=1))
  batch = next(it)
  it.close()
  valid = batch.image_valid
  assert (batch.image_task[valid] == sequences.GENERATION).any()
  assert (batch.image_task[valid] == sequences.UNDERSTANDING).any()
  assert batch.text_loss_mask.sum() > 0  # Understanding answers get cross-entropy.

  image_tokenizer = tokenizers.make_tokenizer(tokenizers.TokenizerConfig.from_config(config))
  b, m = valid.shape
  pixels = batch.images.reshape(b * m, *batch.images.shape[2:]).astype(np.float32) / 127.5 - 1.0
  image_tokens = jax.jit(image_tokenizer.encode)({}, pixels).reshape(b, m, image_tokenizer.num_tokens, -1)
  # The draw sees every image's task; padded images are task 0 (understanding) and get nothing.
  generate_mask = draw_generation_mask(jax.random.key(0), jnp.asarray(batch.image_task),
                                       image_tokenizer.num_tokens, MaskRatioConfig.from_config(config))
  generate_mask = np.asarray(generate_mask)
  generation = valid & (batch.image_task == sequences.GENERATION)
  assert (generate_mask.sum(-1) >= 1)[generation].all() and not generate_mask[~generation].any()
  # The drawn tokens sit on image slots that the pipeline marked for the diffusion loss.
  rows = np.broadcast_to(np.arange(b)[:, None, None], generate_mask.shape)
  assert (batch.diffusion_loss_mask[rows[generate_mask], batch.image_slots[generate_mask]] == 1).all()

  cfg = MMARConfig.from_config(config, text_tokenizer.special_ids(tok).mask)
  model = MMAR(cfg)
  inputs = jax.tree.map(jnp.asarray, dataclasses.replace(batch, images=None))

  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(1), inputs, image_tokens, generate_mask,
                                              jax.random.key(2)))

  def v_loss(tokens):
    out = model.apply(params, inputs, tokens, generate_mask, jax.random.key(2))
    return out.v_loss, out

  grad, out = jax.jit(jax.grad(v_loss, has_aux=True))(image_tokens)
  assert np.isfinite([out.loss, out.ce, out.v_loss]).all() and out.ce > 0 and out.v_loss > 0
  # Which tokens the v-loss reads as targets: at init the head's output layer is zero (DiT), so
  # no gradient flows through z and d v_loss / d tokens is nonzero exactly at the targets.
  np.testing.assert_array_equal(np.abs(np.asarray(grad)).max(-1) > 0, generate_mask)
