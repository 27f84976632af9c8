"""The pieces a run is made of, built from one config: text and image tokenizers, the model.

Training, evaluation and the inference commands all build their model through `build`, so a
checkpoint's config snapshot rebuilds exactly the model that wrote it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tokenizers import Tokenizer

from mmar_jax.batch import Batch
from mmar_jax.convert import vae_ckpt
from mmar_jax.data import sequences, text_tokenizer
from mmar_jax.models import tokenizers
from mmar_jax.models.mmar import MMAR, MMARConfig


@dataclasses.dataclass(frozen=True)
class Experiment:
  config: ml_collections.ConfigDict
  # None where only the model matters (a preset's compile or parameter tree, no tokenizer file).
  text_tokenizer: Tokenizer | None
  special_ids: text_tokenizer.SpecialIds | None
  model: MMAR
  image_tokenizer: tokenizers.ImageTokenizer

  @property
  def num_image_tokens(self) -> int:
    return self.image_tokenizer.num_tokens

  def dummy_inputs(self, batch: int = 1) -> tuple[Batch, np.ndarray]:
    """Zero inputs of the training shapes (batch rows), for init and for compiling without data:
    the batch, with image tokens (as a latent cache gives them), and a generation mask."""
    seq = sequences.SequenceConfig.from_config(self.config)
    inputs = Batch.zeros(batch, seq.seq_len, seq.max_images, self.num_image_tokens,
                         token_dim=self.image_tokenizer.token_dim)
    return inputs, np.zeros(inputs.image_slots.shape, bool)

  def init_params(self, key: jax.Array) -> Any:
    """The model's fresh params, boxed with their logical axes (for `state.create`)."""
    inputs, generate_mask = self.dummy_inputs()
    init_key, loss_key = jax.random.split(key)
    inputs = jax.tree.map(jnp.asarray, inputs)
    return self.model.init(init_key, inputs, inputs.image_tokens, jnp.asarray(generate_mask), loss_key)["params"]

  def image_tokenizer_params(self) -> Any:
    """The frozen tokenizer's weights (the VAE's; `{}` for patches), loaded as the config says."""
    return vae_ckpt.tokenizer_params(self.image_tokenizer)


def build(config: ml_collections.ConfigDict) -> Experiment:
  text = text_tokenizer.load(config.data.tokenizer)
  text_tokenizer.check_vocab_size(text, config.model.vocab_size)
  ids = text_tokenizer.special_ids(text)
  model = MMAR(MMARConfig.from_config(config, ids.mask))
  image = tokenizers.make_tokenizer(tokenizers.TokenizerConfig.from_config(config))
  return Experiment(config=config, text_tokenizer=text, special_ids=ids, model=model, image_tokenizer=image)
