"""Heads trained once per test session on the toy mixture, one per parameterisation."""

from __future__ import annotations

import functools

import pytest

from mmar_jax.diffusion import toy
from mmar_jax.diffusion.schedule import cosine_schedule


@pytest.fixture(scope="session")
def trained_head():
  schedule = cosine_schedule(1000)

  @functools.cache
  def train(prediction: str, steps: int = 1500):
    params, losses = toy.train_head(toy.head_config(), schedule, prediction=prediction, steps=steps)
    return params, losses

  return train
