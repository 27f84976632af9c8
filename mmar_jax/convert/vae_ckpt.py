"""LDM/MAR KL-VAE checkpoints -> Flax params of `models.kl_vae.AutoencoderKL`, and our saved form.

Three inputs are read:
- a MAR-style torch file, `{"model": state_dict}` (MAR's `kl16.ckpt`), read with
  `torch.load(..., weights_only=True)` so no pickled code runs;
- a safetensors file holding the same state dict (LDM key names, torch layouts);
- a directory written by `save` (`mmar-jax convert-vae`): Orbax params + `vae_config.json`,
  which needs no torch.
Loading is strict: every tensor of the file fills exactly one parameter of the right shape, or
`CheckpointMismatchError` lists the missing, unexpected and misshapen tensors by name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
import numpy as np

from mmar_jax.models import kl_vae

CONFIG_FILE = "vae_config.json"
PARAMS_DIR = "params"


class CheckpointMismatchError(ValueError):
  """A checkpoint's tensors do not match the model's parameters; the message names them."""


def torch_key(path: tuple[str, ...]) -> str:
  """The LDM state-dict key of a Flax parameter path.

  ('encoder', 'down_0', 'block_1', 'conv1', 'kernel') -> 'encoder.down.0.block.1.conv1.weight'.
  Inside a level, `block_i`/`attn_i` are list indices; in `mid`, `block_1`/`attn_1` are names.
  """
  parts = []
  for i, name in enumerate(path[:-1]):
    level = re.fullmatch(r"(down|up)_(\d+)", name)
    in_level = i > 0 and re.fullmatch(r"(down|up)_\d+", path[i - 1])
    item = re.fullmatch(r"(block|attn)_(\d+)", name)
    if level:
      parts += [level[1], level[2]]
    elif in_level and item:
      parts += [item[1], item[2]]
    else:
      parts.append(name)
  leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[path[-1]]
  return ".".join(parts + [leaf])


def _to_flax(tensor: np.ndarray) -> np.ndarray:
  """A torch tensor in Flax layout: conv weights [O, I, kh, kw] -> kernels [kh, kw, I, O]."""
  if tensor.ndim == 4:
    tensor = tensor.transpose(2, 3, 1, 0)
  return tensor


def params_from_state_dict(state_dict: dict[str, np.ndarray], config: kl_vae.VAEConfig,
                           ignore_prefixes: tuple[str, ...] = ()):
  """Flax params from an LDM-layout state dict; strict, except keys starting with `ignore_prefixes`."""
  state_dict = {k: v for k, v in state_dict.items() if not k.startswith(tuple(ignore_prefixes))}
  flat = jax.tree_util.tree_flatten_with_path(kl_vae.abstract_params(config))
  leaves, treedef = flat
  missing, misshapen, out = [], [], []
  consumed = set()
  for path, target in leaves:
    names = tuple(p.key for p in path)
    key = torch_key(names)
    if key not in state_dict:
      missing.append(key)
      out.append(None)
      continue
    consumed.add(key)
    value = _to_flax(np.asarray(state_dict[key]))
    if value.shape != target.shape:
      misshapen.append(f"{key}: file {tuple(state_dict[key].shape)}, model expects "
                       f"{_torch_shape(target.shape)}")
      out.append(None)
      continue
    # Parameters are float32 whatever the file stores (fp16 checkpoints upcast exactly).
    out.append(value.astype(np.float32))
  unexpected = sorted(set(state_dict) - consumed)
  if missing or unexpected or misshapen:
    lines = [f"checkpoint does not match the VAE {dataclasses.asdict(config)}:"]
    lines += [f"  missing: {k}" for k in missing] + [f"  unexpected: {k}" for k in unexpected]
    lines += [f"  misshapen: {k}" for k in misshapen]
    if unexpected and not (missing or misshapen):
      lines.append("  (training-only tensors can be dropped with ignore_prefixes, e.g. 'loss.')")
    raise CheckpointMismatchError("\n".join(lines))
  return jax.tree_util.tree_unflatten(treedef, out)


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Name -> numpy array from a torch file (`{"model": sd}` or a bare sd) or a safetensors file."""
  if path.endswith(".safetensors"):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
      return dict(load_file(path))
    except SafetensorError as e:
      raise CheckpointMismatchError(f"{path} is not a readable safetensors file ({e})") from e
  import pickle

  import torch  # Only here: training reads converted checkpoints without torch.
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
    # torch's own hint (retry with weights_only=False) would run arbitrary code, and is no help for a
    # file that is not a checkpoint at all.
    raise CheckpointMismatchError(f"{path} is not a torch checkpoint holding only tensors "
                                  f"(torch.load: {type(e).__name__})") from e
  if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
    obj = obj["model"]  # MAR's layout.
  elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]  # LDM/Lightning's layout.
  if not isinstance(obj, dict):
    raise CheckpointMismatchError(f"{path}: expected a state dict or {{'model': state_dict}}, got {type(obj)}")
  # float() first: numpy has no bfloat16 view of a torch tensor.
  return {k: v.detach().float().numpy() for k, v in obj.items() if hasattr(v, "detach")}


def save(out_dir: str, params, config: kl_vae.VAEConfig, source: str = "") -> None:
  """Writes params (Orbax) and the architecture (JSON) to `out_dir`, which must not exist."""
  import orbax.checkpoint as ocp
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir):
    raise FileExistsError(f"{out_dir} exists; convert-vae writes a new directory")
  os.makedirs(out_dir)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(out_dir, PARAMS_DIR), params)
  checkpointer.wait_until_finished()
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump({"vae": dataclasses.asdict(config), "source": source}, f, indent=2)


def _load_dir(path: str, config: kl_vae.VAEConfig):
  import orbax.checkpoint as ocp
  path = os.path.abspath(path)
  with open(os.path.join(path, CONFIG_FILE)) as f:
    saved = json.load(f)["vae"]
  ours = dataclasses.asdict(config)
  arch_fields = [k for k in ours if k != "dtype"]
  diff = {k: (saved.get(k), ours[k]) for k in arch_fields if _norm(saved.get(k)) != _norm(ours[k])}
  if diff:
    raise CheckpointMismatchError(f"{path} holds a different VAE: field: (saved, config) {diff}")
  target = kl_vae.abstract_params(config)
  return ocp.StandardCheckpointer().restore(os.path.join(path, PARAMS_DIR), target)


def _norm(v):
  return tuple(v) if isinstance(v, (list, tuple)) else v


def load(path: str, config: kl_vae.VAEConfig, ignore_prefixes: tuple[str, ...] = ()):
  """Flax params of the VAE `config` from a convert-vae directory, a torch file or safetensors."""
  if os.path.isdir(path):
    return _load_dir(path, config)
  if not os.path.exists(path):
    raise FileNotFoundError(f"VAE checkpoint {path} does not exist")
  return params_from_state_dict(read_state_dict(path), config, ignore_prefixes)


def tokenizer_params(tokenizer) -> dict:
  """The pretrained parameters an image tokenizer's config names: `{}` for pixel patches, the VAE's
  from config.tokenizer.vae_checkpoint for KL-16."""
  from mmar_jax.models import tokenizers  # The converter stays importable without the tokenizers' jax code.
  if not isinstance(tokenizer, tokenizers.KLVAE):
    return {}
  if not tokenizer.config.vae_checkpoint:
    raise ValueError("config.tokenizer.vae_checkpoint is empty: point it at a convert-vae output dir, "
                     "MAR's kl16.ckpt or a safetensors file")
  return load(tokenizer.config.vae_checkpoint, tokenizer.config.vae)
