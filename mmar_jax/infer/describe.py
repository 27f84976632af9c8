"""Image understanding: answer a question about image tokens, one prefill then one jitted decode loop.

    answers = describe(model, params, image_tokens, question_ids, special_ids, max_new_tokens=32)

`model` is an `MMAR`; `params` its parameter tree (or the `{'params': ...}` variables);
`image_tokens` [b, n, c] clean tokens from the image tokenizer; `question_ids` one list of token
ids per image, without special tokens (`[]` asks for a caption, as training's caption-only
records do); `special_ids` from `text_tokenizer.special_ids`. Returns each row's answer ids,
cut before the first `<|im_end|>` (or `max_new_tokens` long). `temperature` 0 is greedy;
otherwise softmax sampling at that temperature within the top-p nucleus, from `rng`.

The sequence is training's understanding layout, `<boi> [image] <eoi> question`, left-padded
(so every row's answer starts at the same cache slot), with the image clean and fully visible
[paper]. The prefill fills the KV cache; a `lax.while_loop` then feeds one token a step and
stops as soon as every row has produced `<|im_end|>`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from mmar_jax.data.text_tokenizer import SpecialIds
from mmar_jax.infer import prompts
from mmar_jax.models.mmar import MMAR, MMARConfig, as_variables


def sample_logits(rng: PRNGKeyArray, logits: Float[ArrayLike, "b v"], temperature: Float[ArrayLike, ""] | float,
                  top_p: Float[ArrayLike, ""] | float) -> Int[Array, " b"]:
  """A token per row from softmax(logits / temperature), restricted to the top-p nucleus.

  The nucleus is the fewest most-likely tokens whose mass reaches top_p; it always holds the top one.
  """
  logits = logits.astype(jnp.float32) / temperature  # float32: a bfloat16 softmax flattens close logits.
  sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  # A token is in the nucleus if the mass of the tokens above it is still short of top_p.
  inside = (jnp.cumsum(probs, axis=-1) - probs) < top_p
  cutoff = jnp.min(jnp.where(inside, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jax.random.categorical(rng, jnp.where(logits >= cutoff, logits, -jnp.inf), axis=-1).astype(jnp.int32)


def understanding_prompts(question_ids: Sequence[Sequence[int]], num_tokens: int, special_ids: SpecialIds
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Left-padded `<boi> [n <mask> slots] <eoi> question` rows, their mask, and each row's image slots [b, n]."""
  reserved = {special_ids.boi, special_ids.eoi, special_ids.mask, special_ids.im_end}
  rows = []
  for i, q in enumerate(question_ids):
    bad = sorted(set(q) & reserved)
    if bad:
      raise ValueError(f"question {i} holds special token ids {bad}: pass the question's own ids only")
    rows.append([special_ids.boi, *[special_ids.mask] * num_tokens, special_ids.eoi, *q])
  ids, mask, starts = prompts.left_pad(rows, special_ids.pad)
  return ids, mask, (starts[:, None] + 1 + np.arange(num_tokens)).astype(np.int32)


def describe(model: MMAR, params, image_tokens: Float[ArrayLike, "b n c"], question_ids: Sequence[Sequence[int]],
             special_ids: SpecialIds, *, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             rng: PRNGKeyArray | None = None) -> list[list[int]]:
  """Each image's answer token ids (without the closing `<|im_end|>`); see the module docstring."""
  batch, num_tokens = image_tokens.shape[:2]
  if len(question_ids) != batch:
    raise ValueError(f"{len(question_ids)} questions for {batch} images: give one list of ids per image")
  if max_new_tokens <= 0:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be positive")
  greedy = float(temperature) == 0.0
  if not greedy and rng is None:
    raise ValueError(f"temperature={temperature} samples: pass rng")
  ids, mask, slots = understanding_prompts(question_ids, num_tokens, special_ids)
  out = _decode(model.cfg, as_variables(params), ids, mask, jnp.asarray(image_tokens), slots,
                jax.random.key(0) if rng is None else rng, jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p),
                special_ids.im_end, special_ids.pad, max_new_tokens=max_new_tokens, greedy=greedy)
  answers = []
  for row in np.asarray(out).tolist():
    answers.append(row[:row.index(special_ids.im_end)] if special_ids.im_end in row else row)
  return answers


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "greedy"))
def _decode(cfg: MMARConfig, variables, ids: Int[ArrayLike, "b l"], mask: Int[ArrayLike, "b l"],
            image_tokens: Float[ArrayLike, "b n c"], image_slots: Int[ArrayLike, "b n"], rng: PRNGKeyArray,
            temperature: Float[ArrayLike, ""], top_p: Float[ArrayLike, ""], stop_id: Int[ArrayLike, ""],
            fill_id: Int[ArrayLike, ""], *, max_new_tokens: int, greedy: bool) -> Int[Array, "b t"]:
  """Prefill, then up to max_new_tokens - 1 decode steps; rows that stopped are filled with `fill_id`."""
  model = MMAR(cfg)
  logits, cache, position = model.apply(variables, ids, mask, image_tokens, image_slots, reserve=max_new_tokens,
                                        method=MMAR.understanding_prefill)

  def pick(logits, i):
    if greedy:
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return sample_logits(jax.random.fold_in(rng, i), logits, temperature, top_p)

  first = pick(logits, 0)
  out = jnp.full((ids.shape[0], max_new_tokens), fill_id, jnp.int32).at[:, 0].set(first)

  def unfinished(state):
    i, _, _, _, _, done = state
    return (i < max_new_tokens) & ~jnp.all(done)

  def step(state):
    i, token, position, cache, out, done = state
    logits, cache = model.apply(variables, token, position, cache, method=MMAR.decode_step)
    token = jnp.where(done, fill_id, pick(logits, i))  # Finished rows keep running, their tokens are dropped.
    out = jax.lax.dynamic_update_slice(out, token[:, None], (0, i))
    return i + 1, token, position + 1, cache, out, done | (token == stop_id)

  state = (jnp.int32(1), first, position, cache, out, first == stop_id)
  return jax.lax.while_loop(unfinished, step, state)[4]
