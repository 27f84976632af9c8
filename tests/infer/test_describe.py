"""Understanding: cached decoding equals re-running the full sequence, stopping, sampling."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mmar_jax.infer import describe as describe_lib
from mmar_jax.infer.describe import describe
from tests.infer.tiny_model import N, SPECIAL, full_batch, full_forward, model_and_params, random_tokens

QUESTIONS = [[40, 41, 42], [43]]  # Different lengths: left padding differs per row.
STEPS = 12


def full_recompute_greedy(model, params, image_tokens, questions, steps, special=SPECIAL, pick=None):
  """`steps` greedy tokens per row, each from MMAR.__call__ over the whole sequence so far (no cache, no stop).

  `pick(logits [b, v], j)` chooses step j's tokens instead of the argmax (to sample as describe does).
  """
  n = image_tokens.shape[1]
  ids, mask, slots = describe_lib.understanding_prompts(questions, n, special)
  length = ids.shape[1]
  ids = np.concatenate([ids, np.full((len(questions), steps), special.pad, np.int32)], 1)
  mask = np.concatenate([mask, np.zeros((len(questions), steps), np.int32)], 1)
  no_generation = np.zeros((len(questions), 1, n), bool)
  for j in range(steps):
    # Tokens right of the last real one are padding: causal attention never reads them.
    logits = full_forward(model, params, full_batch(ids, mask, slots), image_tokens[:, None], no_generation).logits
    last = logits[:, length + j - 1]
    ids[:, length + j] = np.argmax(np.asarray(last), -1) if pick is None else np.asarray(pick(last, j))
    mask[:, length + j] = 1
  return ids[:, length:].tolist()


def cut(row, stop):
  return row[:row.index(stop)] if stop in row else row


def test_cached_greedy_decoding_equals_full_recompute_and_stops_per_row():
  model, params = model_and_params()
  image_tokens = random_tokens(0, 2)
  reference = full_recompute_greedy(model, params, image_tokens, QUESTIONS, STEPS)
  answers = describe(model, params, image_tokens, QUESTIONS, SPECIAL, max_new_tokens=STEPS)
  assert answers == [cut(r, SPECIAL.im_end) for r in reference]
  assert all(isinstance(t, int) for row in answers for t in row)

  # Stopping: call the token row 0 emits at step k (its first time) <|im_end|>: row 0 stops there,
  # row 1 only where (if ever) it emits that token.
  row = reference[0]
  k = next(k for k in range(1, STEPS) if row[k] not in row[:k] and row[k] > SPECIAL.mask
           and row[k] not in sum(QUESTIONS, []) and SPECIAL.im_end not in row[:k])
  special = dataclasses.replace(SPECIAL, im_end=row[k])
  answers = describe(model, params, image_tokens, QUESTIONS, special, max_new_tokens=STEPS)
  assert answers[0] == row[:k]
  assert answers[1] == cut(reference[1], row[k])


def test_sampling_is_deterministic_and_a_tiny_nucleus_is_greedy():
  model, params = model_and_params()
  image_tokens = random_tokens(1, 2)
  greedy = describe(model, params, image_tokens, QUESTIONS, SPECIAL, max_new_tokens=STEPS)
  sample = lambda seed, top_p=1.0: describe(model, params, image_tokens, QUESTIONS, SPECIAL,  # noqa: E731
                                            max_new_tokens=STEPS, temperature=1.0, top_p=top_p,
                                            rng=jax.random.key(seed))
  assert sample(0) == sample(0)
  assert sample(0) != sample(1)
  assert sample(2, top_p=1e-6) == greedy


def test_nucleus_keeps_the_fewest_tokens_that_reach_top_p():
  probs = jnp.array([[0.5, 0.3, 0.15, 0.05]])
  logits = jnp.log(probs).repeat(4000, 0)
  draws = np.asarray(describe_lib.sample_logits(jax.random.key(0), logits, 1.0, 0.7))
  assert set(draws.tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.8: the first two.
  assert abs((draws == 0).mean() - 0.5 / 0.8) < 0.03  # Renormalised inside the nucleus (~4 sigma).
  hot = np.asarray(describe_lib.sample_logits(jax.random.key(1), logits, 2.0, 1.0))
  assert abs((hot == 3).mean() - np.sqrt(0.05) / np.sqrt(probs).sum()) < 0.03  # Temperature 2: p ** (1/2).
