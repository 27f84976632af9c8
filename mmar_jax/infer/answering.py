"""Answering questions about image files with a loaded checkpoint: the requests, their checks, the batched answers.

Shared by `mmar-jax describe` and `mmar-jax eval-vqa`. A request's image becomes pixels as
training's input pipeline makes them (data/images.py with the checkpoint's config.data image
settings), scaled to [-1, 1]; its question's words are checked against the vocabulary (an unknown
word is an error naming the request, as generate's prompts are) and against the context.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
import tqdm
from PIL import Image

from mmar_jax.data import images, text_tokenizer
from mmar_jax.infer import describe


@dataclasses.dataclass(frozen=True)
class Request:
  where: str  # What names it in an error: "--image" or "FILE line N".
  image: str  # The image's path.
  question: str
  record: dict  # The JSONL line as read (empty for --image).


def question_tokens(exp, request: Request, max_new_tokens: int) -> list[int]:
  """The question's ids, checked against the vocabulary and against the context with image and answer."""
  ids = text_tokenizer.encode_words(exp.text_tokenizer, request.question, f"{request.where} question")
  n, context = exp.num_image_tokens, exp.config.model.max_seq_len
  length = 2 + n + len(ids) + max_new_tokens  # <boi> [image] <eoi> question answer
  if length > context:
    raise ValueError(f"{request.where}: {len(ids)} question tokens + {n} image tokens + 2 special + "
                     f"--max-new-tokens={max_new_tokens} = {length} exceed the model's context "
                     f"config.model.max_seq_len={context}")
  return ids


def load_pixels(request: Request, image: images.ImageConfig) -> np.ndarray:
  """The request's image as float32 [s, s, 3] in [-1, 1], made as the training pipeline makes it."""
  try:
    pixels = images.load_image(request.image, image).pixels
  except images.TooSmall as e:
    raise ValueError(f"{request.where}: {request.image} is too small: {e}") from None
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL's ways to fail
    raise ValueError(f"{request.where}: {request.image} is not a readable image ({type(e).__name__}: {e})"
                     ) from None
  return pixels.astype(np.float32) / 127.5 - 1.0


def answer(trained: Any, requests: list[Request], question_ids: list[list[int]], *,
           batch_size: int, seed: int, progress: bool, **sampling) -> list[str]:
  """Each request's answer text (`trained`: cli/checkpoint_arg.py's Trained), batch_size images at a time (read batch by batch); `sampling` is
  `describe`'s max_new_tokens, temperature and top_p."""
  exp = trained.exp
  encode = jax.jit(exp.image_tokenizer.encode)
  image = images.ImageConfig.from_config(exp.config)
  size = min(batch_size, len(requests))
  answers = []
  starts = range(0, len(requests), size)
  for i, start in enumerate(tqdm.tqdm(starts, desc="describe", unit="batch", dynamic_ncols=True,
                                      disable=not progress)):
    batch = requests[start:start + size]
    pixels = np.stack([load_pixels(r, image) for r in batch])
    questions = question_ids[start:start + size]
    pad = size - len(batch)  # Every batch one shape: one compile.
    pixels = np.concatenate([pixels, np.repeat(pixels[:1], pad, axis=0)])
    ids = describe.describe(exp.model, trained.params, encode(trained.tokenizer_params, pixels),
                            questions + questions[:1] * pad, exp.special_ids,
                            rng=jax.random.fold_in(jax.random.key(seed), i), **sampling)
    answers += [exp.text_tokenizer.decode(a, skip_special_tokens=True).strip() for a in ids[:len(batch)]]
  return answers
