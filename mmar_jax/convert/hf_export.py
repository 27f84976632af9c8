"""Any checkpoint out: the backbone as a Hugging Face Qwen2 directory, the whole model for mmar_torch.

    backbone_dir(params, config, out, dtype="float32", with_image_tokens=False)   # export-hf
    torch_dir(params, config, out, dtype="float32")                               # export-torch

`params` and `config` are what `checkpoint.load_params` returns for any checkpoint (a training
run or step, init-from-hf, import-hf). LoRA factors are folded into the kernels (lora.merge).

Rows of the table: by default the original model's (config.model.hf_vocab_size after an HF
import, the whole table for a model trained from scratch), so the original tokenizer fits it;
`with_image_tokens` keeps the `<boi>`/`<eoi>`/`<mask>` rows too, and the tokenizer written
beside it carries those tokens. The tokenizer files come from the checkpoint (the workdir's
`tokenizer/` copy, or the demo tokenizer rebuilt from code).

The torch directory is the backbone directory plus, with documented names:
  mmar_adapter.safetensors  the adapter as mmar_torch.ImageAdapter's state_dict, and
                            `image_position_embedding` [N, d] when the model has one
  mmar_head.safetensors     the diffusion head as mmar_torch.DiffusionHead's state_dict
  mmar_vae.safetensors      KL-16 models only: the VAE as mmar_torch.vae.AutoencoderKL's state_dict
                            (MAR's keys), float32
  mmar_config.json          everything mmar_torch needs (`torch_config` lists the keys)
  mmar_jax_config.json      mmar_jax's config (LoRA folded in), for import-torch only
The torch directory keeps the whole table, so that import-torch gives every row back.
Torch names follow the flax ones (`blocks_0` -> `blocks.0`, `kernel` -> `weight`, transposed
to torch's [out, in]; a LayerNorm's `scale` -> `weight`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from safetensors.numpy import save_file

from mmar_jax import configs
from mmar_jax.convert import hf_qwen2
from mmar_jax.data import text_tokenizer
from mmar_jax.convert import vae_ckpt
from mmar_jax.models import kl_vae, lora, tokenizers
from mmar_jax.models.backbone import BackboneConfig

ADAPTER_FILE, HEAD_FILE, MMAR_CONFIG = "mmar_adapter.safetensors", "mmar_head.safetensors", "mmar_config.json"
JAX_CONFIG = "mmar_jax_config.json"
VAE_FILE = "mmar_vae.safetensors"
POSITIONS = "image_position_embedding"
TORCH_FORMAT = 1  # mmar_config.json's "format"; bump when a key's meaning changes.
_COPIED_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                           "added_tokens.json")


def special_ids(config: ml_collections.ConfigDict) -> text_tokenizer.SpecialIds:
  return text_tokenizer.special_ids(text_tokenizer.load(config.data.tokenizer))


def table_rows(config: ml_collections.ConfigDict, with_image_tokens: bool) -> int:
  """Rows of the embedding table the export keeps (see the module docstring)."""
  rows = config.model.hf_vocab_size or config.model.vocab_size
  if with_image_tokens:
    ids = special_ids(config)
    rows = max(rows, max(ids.boi, ids.eoi, ids.mask) + 1)
  return rows


def merged_backbone(params: Mapping[str, Any], config: ml_collections.ConfigDict) -> tuple[BackboneConfig, Any]:
  """The backbone's config with LoRA off and its params with every LoRA update folded in."""
  cfg = BackboneConfig.from_config(config)
  backbone = jax.tree.map(np.asarray, params["backbone"])
  if lora.has_lora(backbone):
    backbone = lora.merge(backbone, cfg)
  return dataclasses.replace(cfg, lora_rank=0), jax.tree.map(np.asarray, backbone)


def backbone_dir(params: Mapping[str, Any], config: ml_collections.ConfigDict, out: str | os.PathLike, *,
                 dtype: str = "float32", with_image_tokens: bool = False, max_shard_bytes: int = 5 * 2**30,
                 overwrite: bool = False, rows: int | None = None) -> tuple[int, str]:
  """Writes the HF directory with its tokenizer files; returns (table rows written, the tokenizer's note).

  `rows` overrides `table_rows`."""
  cfg, backbone = merged_backbone(params, config)
  rows = rows or table_rows(config, with_image_tokens)
  hf_qwen2.save(cfg, backbone, out, dtype=dtype, max_shard_bytes=max_shard_bytes, overwrite=overwrite,
                vocab_size=rows)
  return rows, write_tokenizer(config, Path(out), with_image_tokens)


def write_tokenizer(config: ml_collections.ConfigDict, out: Path, with_image_tokens: bool) -> str:
  """tokenizer.json (and the other HF tokenizer files the checkpoint has) into `out`; says what it wrote."""
  spec = config.data.tokenizer
  if spec == "demo":
    if config.model.hf_vocab_size and not with_image_tokens:
      # The original rows are an imported model's, whose tokenizer the demo's is not.
      return "no tokenizer written (the checkpoint's config names the demo tokenizer, not the imported model's)"
    # Built from code with the special tokens as part of its vocabulary: there is no "original".
    text_tokenizer.build_demo_tokenizer().save(os.fspath(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": text_tokenizer.UNK,
         "pad_token": text_tokenizer.PAD, "eos_token": text_tokenizer.IM_END}, indent=2) + "\n")
    return "the demo tokenizer"
  try:
    source = text_tokenizer.tokenizer_file(spec)
  except FileNotFoundError as e:
    if with_image_tokens:
      raise
    return f"no tokenizer written ({e})"
  for name in _COPIED_TOKENIZER_FILES:
    if (source.parent / name).is_file():
      (out / name).write_bytes((source.parent / name).read_bytes())
  if with_image_tokens:
    text_tokenizer.load(spec).save(os.fspath(out / "tokenizer.json"))  # The special tokens added.
    return f"{source} with <boi>, <eoi>, <mask> added"
  (out / "tokenizer.json").write_bytes(source.read_bytes())
  return f"{source} as it is"


# ----------------------------------------------------------------------------- the whole model


def flax_to_torch(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  """A flax Dense/LayerNorm tree (the adapter's or the head's) as a torch state_dict."""
  out = {}
  for key, value in tree.items():
    name = _torch_name(key)
    if isinstance(value, Mapping):
      out.update(flax_to_torch(value, f"{prefix}{name}."))
      continue
    value = np.asarray(value, np.float32)
    if key == "kernel":
      if value.ndim == 3 and prefix.endswith("o_proj."):  # [d, h, e] read as "bnhe,dhe->bnd".
        value = value.reshape(value.shape[0], -1)
      else:  # [in, out] or the adapter's q/k/v [d, h, e] read as "bnd,dhe->bnhe".
        value = value.reshape(value.shape[0], -1).T
      out[prefix + "weight"] = value
    elif key == "scale":
      out[prefix + "weight"] = value
    else:
      out[prefix + name] = value.reshape(-1)
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def vae_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The KL VAE's flax params as mmar_torch.vae.AutoencoderKL's state_dict (MAR's keys, NCHW kernels)."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    value = np.asarray(leaf, np.float32)
    out[vae_ckpt.torch_key(tuple(p.key for p in path))] = np.ascontiguousarray(
        value.transpose(3, 2, 0, 1) if value.ndim == 4 else value)  # [kh, kw, I, O] -> [O, I, kh, kw]
  return out


def _torch_name(key: str) -> str:
  head, _, tail = key.rpartition("_")
  return f"{head}.{tail}" if head and tail.isdigit() else key


def torch_config(config: ml_collections.ConfigDict, rows: int) -> dict[str, Any]:
  """mmar_config.json: what mmar_torch reads besides the tensors."""
  m, t, d, h = config.model, config.tokenizer, config.diffusion, config.head
  ids = special_ids(config)
  tokenizer = {"kind": t.kind, "image_size": t.image_size, "num_tokens": configs.num_image_tokens(config),
               "token_dim": configs.image_token_dim(config)}
  if t.kind == "patch":
    tokenizer |= {"patch_size": t.patch_size, "patch_scale": t.patch_scale}
  else:  # kl16: the VAE's architecture; its weights are VAE_FILE.
    v = kl_vae.VAEConfig.from_config(config)
    tokenizer |= {"latent_patch": t.latent_patch, "scale_factor": t.scale_factor,
                  "vae": {"channels": v.channels, "channel_mult": list(v.channel_mult),
                          "num_res_blocks": v.num_res_blocks, "z_channels": v.z_channels,
                          "norm_groups": v.norm_groups, "encoder_attn_levels": list(v.encoder_attn_levels)}}
  return {
      "format": TORCH_FORMAT,
      "tokenizer": tokenizer,
      "text": {"vocab_rows": rows, "special_ids": dataclasses.asdict(ids),
               # The <mask> embedding is this row of the backbone's table (models/mmar.py).
               "mask_embedding_row": ids.mask},
      "adapter": {"token_dim": configs.image_token_dim(config), "depth": m.adapter_depth, "width": m.adapter_width,
                  "heads": m.adapter_heads, "out_width": m.hidden_size, "norm_eps": m.rms_norm_eps,
                  "image_position_embedding": bool(m.image_position_embedding)},
      "head": {"depth": h.depth, "width": h.width, "token_channels": configs.image_token_dim(config),
               "frequency_dim": h.frequency_dim, "norm_eps": h.norm_eps},
      "diffusion": {"schedule": d.schedule, "num_train_steps": d.num_train_steps, "prediction": d.prediction,
                    "num_sampling_steps": d.num_sampling_steps, "sampler": d.sampler, "ddim_eta": d.ddim_eta,
                    "temperature": d.temperature, "cfg_scale": d.cfg_scale, "cfg_schedule": d.cfg_schedule,
                    "num_generation_steps": d.num_generation_steps},
  }


def torch_dir(params: Mapping[str, Any], config: ml_collections.ConfigDict, out: str | os.PathLike, *,
              dtype: str = "float32", overwrite: bool = False) -> None:
  """Writes the directory mmar_torch.MMARTorch.from_pretrained reads (module docstring)."""
  mmar = torch_config(config, config.model.vocab_size)  # Fails before anything is written.
  out = Path(out)
  # The whole table (special rows and any padding rows past them): import-torch gets every row back.
  rows, _ = backbone_dir(params, config, out, dtype=dtype, with_image_tokens=True, overwrite=overwrite,
                         rows=config.model.vocab_size)
  try:
    adapter = flax_to_torch(params["adapter"])
    if POSITIONS in params:
      adapter[POSITIONS] = np.asarray(params[POSITIONS], np.float32)
    cast = hf_qwen2.SAVE_DTYPES[dtype]
    save_file({k: v.astype(cast) for k, v in adapter.items()}, out / ADAPTER_FILE, metadata={"format": "pt"})
    # The head stays float32 whatever --dtype: the samplers divide by its output's small differences.
    save_file(flax_to_torch(params["head"]), out / HEAD_FILE, metadata={"format": "pt"})
    if config.tokenizer.kind == "kl16":  # The frozen VAE, from config.tokenizer.vae_checkpoint; float32.
      image_tokenizer = tokenizers.make_tokenizer(tokenizers.TokenizerConfig.from_config(config))
      save_file(vae_state_dict(vae_ckpt.tokenizer_params(image_tokenizer)), out / VAE_FILE,
                metadata={"format": "pt"})
    mmar["text"]["vocab_rows"] = rows
    mmar["dtype"] = dtype
    (out / MMAR_CONFIG).write_text(json.dumps(mmar, indent=2) + "\n")
    # mmar_jax's own config, LoRA folded in, for import-torch (mmar_torch never reads it).
    snapshot = ml_collections.ConfigDict(config.to_dict())
    snapshot.model.lora.rank = 0
    (out / JAX_CONFIG).write_text(json.dumps(snapshot.to_dict(), indent=2) + "\n")
  except BaseException:
    shutil.rmtree(out, ignore_errors=True)
    raise


# ----------------------------------------------------------------------------- back from torch


def flax_from_torch(state: Mapping[str, np.ndarray], target: Mapping[str, Any], prefix: str = "",
                    file: str = "") -> dict[str, Any]:
  """The inverse of `flax_to_torch`: `state` laid out as `target` (a tree of shaped leaves) says.

  Fails naming a tensor that is missing or whose size does not fit its place in `target`.
  """
  out = {}
  for key, leaf in target.items():
    name = _torch_name(key)
    if isinstance(leaf, Mapping):
      out[key] = flax_from_torch(state, leaf, f"{prefix}{name}.", file)
      continue
    torch_name = prefix + ("weight" if key in ("kernel", "scale") else name)
    if torch_name not in state:
      raise ValueError(f"{file}: tensor {torch_name} is missing")
    value, shape = np.asarray(state[torch_name]), tuple(leaf.shape)
    transposed = key == "kernel" and not (len(shape) == 3 and prefix.endswith("o_proj."))
    if key == "kernel":
      flat = (shape[0], int(np.prod(shape[1:])))
      expected = flat[::-1] if transposed else flat
    else:
      expected = (int(np.prod(shape)),)
    if value.shape != expected:
      raise ValueError(f"{file}: tensor {torch_name} has shape {value.shape}, the config implies {expected}")
    if transposed:
      value = value.T
    out[key] = np.ascontiguousarray(value.reshape(shape)).astype(leaf.dtype)
  return out
