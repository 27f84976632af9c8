"""An export-torch directory (possibly fine-tuned in PyTorch) back to mmar_jax params and config.

    params, config = torch_import.load(DIR)   # then checkpoint.save(out, params, config)

The config is the exported snapshot (mmar_jax_config.json, LoRA folded in); the backbone is read
as an HF Qwen2 directory (hf_qwen2.load), the adapter and the head by inverting the export's
names and layouts (hf_export.flax_from_torch) onto the shapes the config implies. Every tensor
is checked: one missing or misshapen is named. float32 exports come back bit for bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from safetensors.numpy import load_file

from mmar_jax import configs
from mmar_jax.convert import hf_export, hf_qwen2
from mmar_jax.train import experiment


def load(path: str | os.PathLike) -> tuple[dict[str, Any], ml_collections.ConfigDict]:
  path = Path(path)
  snapshot = path / hf_export.JAX_CONFIG
  if not snapshot.is_file():
    raise FileNotFoundError(f"{snapshot}: not found; is {path} an `mmar-jax export-torch` directory?")
  config = configs.from_dict(json.loads(snapshot.read_text()))
  if config.data.tokenizer != "demo":
    config.data.tokenizer = os.fspath(path)  # The exported tokenizer.json, special tokens included.
  cfg, backbone = hf_qwen2.load(path, config=config)
  if cfg.vocab_size != config.model.vocab_size:
    raise ValueError(f"{path / 'config.json'}: vocab_size={cfg.vocab_size}, {snapshot.name} says "
                     f"model.vocab_size={config.model.vocab_size}")
  exp = experiment.build(config)
  target = nn.unbox(jax.eval_shape(exp.init_params, jax.random.key(0)))
  adapter = _read(path / hf_export.ADAPTER_FILE)
  params = {"backbone": jax.tree.map(lambda x, t: np.asarray(x).astype(t.dtype), backbone, target["backbone"]),
            "adapter": hf_export.flax_from_torch(adapter, target["adapter"], file=hf_export.ADAPTER_FILE),
            "head": hf_export.flax_from_torch(_read(path / hf_export.HEAD_FILE), target["head"],
                                              file=hf_export.HEAD_FILE)}
  if hf_export.POSITIONS in target:
    shape = tuple(target[hf_export.POSITIONS].shape)
    found = adapter.get(hf_export.POSITIONS)
    if found is None or found.shape != shape:
      raise ValueError(f"{hf_export.ADAPTER_FILE}: tensor {hf_export.POSITIONS} is "
                       f"{'missing' if found is None else f'of shape {found.shape}'}, the config implies {shape}")
    params[hf_export.POSITIONS] = found.astype(target[hf_export.POSITIONS].dtype)
  return params, config


def _read(file: Path) -> dict[str, np.ndarray]:
  if not file.is_file():
    raise FileNotFoundError(f"{file}: not found (export-torch writes it)")
  return load_file(file)
