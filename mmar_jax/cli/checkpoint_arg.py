"""The inference commands' --ckpt: a training run, its checkpoints/ directory, or one step in it.

    trained = checkpoint_arg.load(ckpt, step)   # params, the model built from the checkpoint's config

The checkpoint's own config snapshot rebuilds the model, the tokenizers and the defaults of the
generation settings, so a command needs nothing but the directory.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from mmar_jax.train import checkpointing, experiment

WHAT = "a training --workdir (holding checkpoints/), its checkpoints/ directory or a step directory checkpoints/<step>"


@dataclasses.dataclass(frozen=True)
class Trained:
  exp: experiment.Experiment
  params: Any
  tokenizer_params: Any
  step: int


def locate(ckpt: str | None, step: int | None) -> tuple[str, int | None]:
  """(workdir, step) for `checkpointing.load_params`: a step directory chooses its own step."""
  if not ckpt:
    raise ValueError(f"--ckpt is required: {WHAT}")
  path = os.path.abspath(ckpt)
  name, parent = os.path.basename(path), os.path.dirname(path)
  if name.isdigit() and os.path.basename(parent) == "checkpoints" and os.path.isdir(parent):
    # A step directory, or one that is missing: load_params then lists the steps there are.
    if step is not None and step != int(name):
      raise ValueError(f"--ckpt={ckpt} is step {int(name)} but --step={step}: give one of them")
    return os.path.dirname(parent), int(name)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"--ckpt={ckpt} does not exist (give {WHAT})")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return path, step
  if name == "checkpoints":
    return parent, step
  raise FileNotFoundError(f"--ckpt={ckpt} is not {WHAT}")


def load(ckpt: str | None, step: int | None) -> Trained:
  """The checkpoint's params (newest readable step unless one is chosen) and the experiment its config builds."""
  workdir, step = locate(ckpt, step)
  try:
    params, config, step = checkpointing.load_params(workdir, step)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"--ckpt={ckpt}: {e}") from None
  exp = experiment.build(config)
  return Trained(exp=exp, params=params, tokenizer_params=exp.image_tokenizer_params(), step=step)

