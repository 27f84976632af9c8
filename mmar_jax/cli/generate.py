"""mmar-jax generate: images from captions with a trained checkpoint, as a PNG grid and one PNG each.

    mmar-jax generate --ckpt=runs/demo --prompt="a red circle at the left" --num-images=4 --out=gen/red.png

--ckpt is a training --workdir, its checkpoints/ directory, or one step checkpoints/<k>.
Captions come from --prompt (repeatable) and --prompts-file (one a line, blank lines skipped);
`--prompt=""` draws unconditional images. --out is the grid: every image with its caption under
it, one row a caption when --num-images is 2 to 8. Each image is also written alone beside it as
<stem>_<i>.png, i counting in grid order (caption p's image j is i = p * num_images + j).
Sampling flags left unset take the checkpoint's config.diffusion values. Images go through the
model --batch-size at a time, batch i drawn from fold_in(key(seed), i): the same --seed and
--batch-size give the same PNG bytes.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import tqdm
from absl import flags
from PIL import Image

from mmar_jax import checkpoint
from mmar_jax.cli import checkpoint_arg
from mmar_jax.data import text_tokenizer
from mmar_jax.infer import generate_image, image_io

_CKPT = flags.DEFINE_string("ckpt", None, "Training --workdir, its checkpoints/ directory, or checkpoints/<step>.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the one --ckpt names, else the newest "
                             "readable).")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A caption (repeat the flag for several).")
_PROMPTS_FILE = flags.DEFINE_string("prompts-file", None, "A UTF-8 text file of captions, one a line.")
_NUM_IMAGES = flags.DEFINE_integer("num-images", 4, "Images per caption.")
_CFG = flags.DEFINE_float("cfg", None, "Classifier-free guidance scale, 1 unguided (default "
                          "config.diffusion.cfg_scale).")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Diffusion sampling temperature (default "
                                  "config.diffusion.temperature).")
_STEPS = flags.DEFINE_integer("steps", None, "AR steps, at most the image's tokens (default "
                              "config.diffusion.num_generation_steps).")
_SAMPLING_STEPS = flags.DEFINE_integer("sampling-steps", None, "Diffusion sampler steps for each token (default "
                                       "config.diffusion.num_sampling_steps).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Text tokenizer (a tokenizer.json or a directory holding it) "
                                 "instead of the checkpoint's (its workdir's copy, else the stored path).")
_VAE = flags.DEFINE_string("vae", None, "VAE weights (kl16 tokenizer) instead of the path the checkpoint stores.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_OUT = flags.DEFINE_string("out", None, "The grid PNG to write; the single images go beside it.")
_BATCH_SIZE = flags.DEFINE_integer("batch-size", 16, "Images a generate call (guidance runs twice the rows).")

GRID_COLUMNS = 4  # When one caption does not make a row.
MAX_ROW = 8  # Widest grid row: one caption's images, if no more.

_WEIGHTS = flags.DEFINE_enum("weights", None, list(checkpoint.WEIGHTS), checkpoint.WEIGHTS_HELP)

def main(argv):
  del argv
  check_flags()
  prompts = read_prompts(_PROMPT.value, _PROMPTS_FILE.value)
  trained = checkpoint_arg.load(_CKPT.value, _STEP.value, tokenizer=_TOKENIZER.value, vae=_VAE.value,
                              weights=_WEIGHTS.value)
  exp = trained.exp
  overrides = dict(cfg_scale=_CFG.value, temperature=_TEMPERATURE.value, num_steps=_STEPS.value,
                   num_sampling_steps=_SAMPLING_STEPS.value)
  settings = generate_image.generation_settings(exp.config, **{k: v for k, v in overrides.items() if v is not None})
  caption_ids = [prompt_ids(exp, where, text, settings["num_tokens"]) for where, text in prompts]
  num_images = _NUM_IMAGES.value
  images = generate(trained, [ids for ids in caption_ids for _ in range(num_images)], settings, seed=_SEED.value,
                    batch_size=_BATCH_SIZE.value)

  out = _OUT.value
  size = exp.config.tokenizer.image_size
  columns = num_images if 1 < num_images <= MAX_ROW else GRID_COLUMNS
  image_io.grid_png(images, [text for _, text in prompts for _ in range(num_images)], out,
                      scale=max(1, 128 // size), columns=columns)
  stem = os.path.splitext(out)[0]
  for i, image in enumerate(images):
    Image.fromarray(image).save(f"{stem}_{i}.png")
  print(f"wrote {out} ({len(images)} images: {len(prompts)} captions x {num_images}, checkpoint step "
        f"{trained.step}) and each image as {stem}_<i>.png, i = 0..{len(images) - 1}")


def check_flags() -> None:
  """The flags' own checks, before anything loads."""
  for name, value in (("num-images", _NUM_IMAGES.value), ("steps", _STEPS.value),
                      ("sampling-steps", _SAMPLING_STEPS.value), ("batch-size", _BATCH_SIZE.value)):
    if value is not None and value < 1:
      raise ValueError(f"--{name}={value} must be at least 1")
  if _CFG.value is not None and _CFG.value <= 0:
    raise ValueError(f"--cfg={_CFG.value} must be positive (1 is unguided)")
  if _TEMPERATURE.value is not None and _TEMPERATURE.value < 0:
    raise ValueError(f"--temperature={_TEMPERATURE.value} must be >= 0")
  if not _OUT.value:
    raise ValueError("--out is required: the grid PNG to write, e.g. --out=generated.png")
  if not _OUT.value.lower().endswith(".png"):
    raise ValueError(f"--out={_OUT.value} must end in .png")


def read_prompts(prompts: list[str], prompts_file: str | None) -> list[tuple[str, str]]:
  """(where, caption) of every --prompt, then of every non-blank line of --prompts-file."""
  found = [(f"--prompt={p!r}", p.strip()) for p in prompts]
  if prompts_file is not None:
    if not os.path.isfile(prompts_file):
      raise FileNotFoundError(f"--prompts-file={prompts_file} does not exist")
    with open(prompts_file, encoding="utf-8") as f:
      lines = [(f"--prompts-file={prompts_file} line {n}", line.strip()) for n, line in enumerate(f, 1)]
    lines = [(where, text) for where, text in lines if text]
    if not lines:
      raise ValueError(f"--prompts-file={prompts_file} holds no captions (one a line)")
    found += lines
  if not found:
    raise ValueError("give --prompt (repeatable) or --prompts-file (one caption a line)")
  return found


def prompt_ids(exp, where: str, text: str, num_tokens: int) -> list[int]:
  """The caption's ids, checked against the vocabulary and against the context with the image's tokens."""
  ids = text_tokenizer.encode_words(exp.text_tokenizer, text, where)
  context = exp.config.model.max_seq_len
  length = len(ids) + 2 + num_tokens  # <|im_start|> caption <boi> [image]
  if length > context:
    raise ValueError(f"{where}: {len(ids)} caption tokens + 2 special + {num_tokens} image tokens = {length} "
                     f"exceed the model's context config.model.max_seq_len={context}")
  return ids


def generate(trained: checkpoint_arg.Trained, rows: list[list[int]], settings: dict, *, seed: int,
             batch_size: int) -> np.ndarray:
  """uint8 images [len(rows), s, s, 3], one for each caption's ids, in batches of at most batch_size."""
  exp = trained.exp
  decode = jax.jit(exp.image_tokenizer.decode)
  size = min(batch_size, len(rows))
  images = []
  starts = range(0, len(rows), size)
  for i, start in enumerate(tqdm.tqdm(starts, desc="generate", unit="batch", dynamic_ncols=True)):
    batch = rows[start:start + size]
    padded = batch + [batch[0]] * (size - len(batch))  # Every batch one shape: one compile.
    tokens = generate_image.generate(exp.model, trained.params, padded, exp.special_ids,
                                     jax.random.fold_in(jax.random.key(seed), i), **settings)
    images.append(image_io.to_uint8(jax.device_get(decode(trained.tokenizer_params, tokens)))[:len(batch)])
  return np.concatenate(images)
