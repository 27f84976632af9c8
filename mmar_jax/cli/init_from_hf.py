"""mmar-jax init-from-hf: start a training run from Qwen2 weights (backbone) with a fresh adapter and head.

Writes step 0 of `--workdir` (the full train state, data iterator and config), so that
`mmar-jax train --config=SAME --workdir=SAME` continues from it like from any checkpoint.
The config's model architecture must be the checkpoint's; a mismatch names the field.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from mmar_jax import configs
from mmar_jax.convert import hf_qwen2
from mmar_jax.train import loop

_HF_DIR = flags.DEFINE_string("hf-dir", None, "Hugging Face Qwen2 directory (config.json + *.safetensors).",
                              required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "New training run directory.", required=True)
_CONFIG = config_flags.DEFINE_config_file("config", None, "The training config, e.g. configs/mmar_0p5b.py.",
                                          lock_config=True)

ARCHITECTURE_FIELDS = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                       "rope_theta", "rms_norm_eps", "tie_word_embeddings")


def overlay(params, pretrained, where: str = "backbone"):
  """`params` with every leaf that `pretrained` has replaced (same shape, placed on the same
  shards); leaves only ours has (LoRA factors) stay fresh. Shape mismatches fail by name."""
  if isinstance(pretrained, dict):
    missing = set(pretrained) - set(params)
    if missing:
      raise ValueError(f"{where}: the pretrained checkpoint has {sorted(missing)} that this model lacks")
    return {k: overlay(v, pretrained[k], f"{where}.{k}") if k in pretrained else v for k, v in params.items()}
  if tuple(params.shape) != tuple(np.shape(pretrained)):
    raise ValueError(f"{where}: pretrained shape {tuple(np.shape(pretrained))} != model shape {tuple(params.shape)}")
  return jax.device_put(np.asarray(pretrained, params.dtype), params.sharding)


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    raise flags.ValidationError("--config is required, e.g. --config=configs/mmar_0p5b.py")
  configs.validate(config, num_devices=jax.device_count())
  cfg, backbone = hf_qwen2.load(_HF_DIR.value, config=config)
  for field in ARCHITECTURE_FIELDS:
    ours = configs.head_dim(config.model) if field == "head_dim" else config.model[field]
    if getattr(cfg, field) != ours:
      raise configs.ConfigError(f"config.model.{field}={ours!r} but {_HF_DIR.value} has {getattr(cfg, field)!r}")
  run = loop.setup(config, _WORKDIR.value)
  if run.mngr.all_steps():
    raise FileExistsError(f"{_WORKDIR.value} already holds checkpoints {run.mngr.all_steps()}; choose a new --workdir")
  state = run.fresh_state()
  state = state.replace(params=dict(state.params, backbone=overlay(state.params["backbone"], backbone)))
  run.save(state, force=True)
  run.mngr.wait_until_finished()
  print(f"initialised {_WORKDIR.value} step 0 from {_HF_DIR.value}: backbone from Qwen2 ({cfg.num_layers} layers, "
        f"hidden {cfg.hidden_size}), adapter and head fresh")
