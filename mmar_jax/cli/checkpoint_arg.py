"""The inference commands' --ckpt: any checkpoint `checkpoint.load_params` reads.

    trained = checkpoint_arg.load(ckpt, step, tokenizer=..., vae=...)   # params, the model from its config

The checkpoint's own config snapshot rebuilds the model, the tokenizers and the defaults of the
generation settings, so a command needs nothing but the directory (its tokenizer copy included);
--tokenizer and --vae override the stored references.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mmar_jax import checkpoint
from mmar_jax.train import experiment

WHAT = checkpoint.WHAT


@dataclasses.dataclass(frozen=True)
class Trained:
  exp: experiment.Experiment
  params: Any
  tokenizer_params: Any
  step: int


def load(ckpt: str | None, step: int | None, *, tokenizer: str | None = None, vae: str | None = None,
         weights: str | None = None) -> Trained:
  """The checkpoint's params (newest readable step unless one is chosen; the EMA unless `weights`
  says "raw", see checkpoint.load_params) and the experiment its config builds."""
  if not ckpt:
    raise ValueError(f"--ckpt is required: {WHAT}")
  try:
    params, config, step = checkpoint.load_params(ckpt, step, tokenizer=tokenizer, vae=vae,
                                                   weights=weights)
  except (FileNotFoundError, ValueError) as e:
    raise type(e)(f"--ckpt={ckpt}: {e}") from None
  exp = experiment.build(config)
  return Trained(exp=exp, params=params, tokenizer_params=exp.image_tokenizer_params(), step=step)
