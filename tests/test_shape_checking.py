"""The tests run with shapes checked (tests/conftest.py installs jaxtyping's import hook with
beartype for mmar_jax): a shape or dtype that contradicts the package's annotations fails the
call, eagerly and at trace time under jit, and a Batch checks its fields against each other."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import TypeCheckError

from mmar_jax.batch import Batch
from mmar_jax.models import masks, mmar


def test_a_shape_against_the_annotation_fails_the_call():
  ok = masks.causal_segment_mask(jnp.ones((2, 5), jnp.int32))  # Int[Array, "b l"] -> Bool[Array, "b l l"]
  assert ok.shape == (2, 5, 5)
  with pytest.raises(TypeCheckError):
    masks.causal_segment_mask(jnp.ones((2, 5, 1), jnp.int32))  # Three axes where "b l" says two.
  with pytest.raises(TypeCheckError):
    masks.causal_segment_mask(jnp.ones((2, 5), jnp.float32))  # Floats where Int says integers.
  with pytest.raises(TypeCheckError):
    jax.jit(masks.causal_segment_mask)(np.ones((2, 5, 1), np.int32))  # Checked while tracing.


def test_letters_bind_across_arguments():
  slots, valid = jnp.zeros((2, 1, 4), jnp.int32), jnp.ones((2, 1), bool)
  assert mmar.image_span_ids(slots, valid, 8).shape == (2, 8)
  with pytest.raises(TypeCheckError):
    mmar.image_span_ids(slots, jnp.ones((3, 1), bool), 8)  # b = 2 in image_slots, 3 in image_valid.


def test_a_batch_checks_its_fields_against_each_other():
  batch = Batch.zeros(2, 16, 1, 4, image_size=8, token_dim=3)
  with pytest.raises(TypeCheckError):
    dataclasses.replace(batch, targets=np.zeros((2, 15), np.int32))  # l = 16 in input_ids.
  with pytest.raises(TypeCheckError):
    dataclasses.replace(batch, image_tokens=np.zeros((2, 1, 5, 3), np.float32))  # n = 4 in image_slots.
  with pytest.raises(TypeCheckError):
    dataclasses.replace(batch, images=np.zeros((2, 1, 8, 8, 3), np.float32))  # uint8 pixels.
  # jax rebuilds a batch from its leaves without the check (micro-batches, placeholders).
  stacked = jax.tree.map(lambda x: x[None], batch)
  assert isinstance(stacked, Batch) and stacked.input_ids.shape == (1, 2, 16)
