"""Hugging Face Qwen2 directories (config.json + safetensors) <-> our BackboneConfig and params.

    cfg, params = hf_qwen2.load("/path/to/Qwen2-0.5B")   # float32 numpy params, our layout
    hf_qwen2.save(cfg, params, "/path/out")             # loads in transformers, none of our code

Reading and writing go through safetensors only: neither torch nor transformers is needed.
Each parameter is a transpose/reshape of one HF tensor (`_LAYER_TENSORS`), so an import
followed by an export reproduces the tensors bit for bit.

MMAR's special tokens (`<boi>`, `<eoi>`, `<mask>`) need embedding rows. `load(vocab_size=...,
new_rows=...)` makes them, in this one place: the table (and an untied lm_head) grows to
`vocab_size`, and the rows past the checkpoint's and the `new_rows` inside it start at the mean
of the trained rows. Qwen2's table is padded past its tokenizer (151936 rows for 151646 tokens,
the extra rows never trained, per Qwen's maintainers), so there the special tokens take padding
rows and nothing grows. `save(vocab_size=...)` writes back only the checkpoint's own rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from mmar_jax import configs
from mmar_jax.models.backbone import BackboneConfig


class HFCheckpointError(ValueError):
  """The directory is not a Qwen2 checkpoint we can read; the message names the file and field."""


SAFETENSORS_INDEX = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Tensors some Qwen2 exports carry that hold no parameters (recomputed from the config).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _qkv(heads: Callable[[BackboneConfig], int]):
  """q/k/v: HF weight [n*h, d] <-> kernel [d, n, h]; bias [n*h] <-> [n, h]."""
  kernel = (lambda w, c: w.T.reshape(c.hidden_size, heads(c), c.head_dim),
            lambda k, c: k.reshape(c.hidden_size, heads(c) * c.head_dim).T)
  bias = (lambda b, c: b.reshape(heads(c), c.head_dim), lambda b, c: b.reshape(-1))
  return kernel, bias


_identity = (lambda w, c: w, lambda w, c: w)
_transpose = (lambda w, c: w.T, lambda w, c: w.T)
_q_kernel, _q_bias = _qkv(lambda c: c.num_heads)
_kv_kernel, _kv_bias = _qkv(lambda c: c.num_kv_heads)

# Our path inside one decoder layer -> (HF name inside `model.layers.{i}.`, (to ours, to HF)).
_LAYER_TENSORS: dict[tuple[str, ...], tuple[str, tuple[Callable, Callable]]] = {
    ("self_attn", "q_proj", "kernel"): ("self_attn.q_proj.weight", _q_kernel),
    ("self_attn", "q_proj", "bias"): ("self_attn.q_proj.bias", _q_bias),
    ("self_attn", "k_proj", "kernel"): ("self_attn.k_proj.weight", _kv_kernel),
    ("self_attn", "k_proj", "bias"): ("self_attn.k_proj.bias", _kv_bias),
    ("self_attn", "v_proj", "kernel"): ("self_attn.v_proj.weight", _kv_kernel),
    ("self_attn", "v_proj", "bias"): ("self_attn.v_proj.bias", _kv_bias),
    ("self_attn", "o_proj", "kernel"): ("self_attn.o_proj.weight", (
        lambda w, c: w.T.reshape(c.num_heads, c.head_dim, c.hidden_size),
        lambda k, c: k.reshape(c.num_heads * c.head_dim, c.hidden_size).T)),
    ("mlp", "gate_proj", "kernel"): ("mlp.gate_proj.weight", _transpose),
    ("mlp", "up_proj", "kernel"): ("mlp.up_proj.weight", _transpose),
    ("mlp", "down_proj", "kernel"): ("mlp.down_proj.weight", _transpose),
    ("input_layernorm", "scale"): ("input_layernorm.weight", _identity),
    ("post_attention_layernorm", "scale"): ("post_attention_layernorm.weight", _identity),
}
# Our top-level path -> (HF name, (to ours, to HF)).
_TOP_TENSORS = {
    ("embed_tokens",): ("model.embed_tokens.weight", _identity),
    ("norm", "scale"): ("model.norm.weight", _identity),
    ("lm_head",): ("lm_head.weight", _transpose),
}


# ----------------------------------------------------------------------------- config


def model_fields_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> dict[str, Any]:
  """The architecture fields of config.model that an HF Qwen2 config dict fixes."""
  def field(name, default=None):
    if name in hf and hf[name] is not None:
      return hf[name]
    if default is None:
      raise HFCheckpointError(f"{source}: field {name!r} is missing")
    return default

  if hf.get("model_type") != "qwen2":
    raise HFCheckpointError(f"{source}: model_type={hf.get('model_type')!r}, expected 'qwen2' "
                            f"(architectures={hf.get('architectures')})")
  if field("hidden_act", "silu") != "silu":
    raise HFCheckpointError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported (Qwen2 uses 'silu')")
  if hf.get("use_sliding_window"):
    raise HFCheckpointError(f"{source}: use_sliding_window=true is not supported")
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    raise HFCheckpointError(f"{source}: rope_type={rope_type!r} is not supported (only 'default')")
  rope_theta = rope.get("rope_theta", hf.get("rope_theta"))
  if rope_theta is None:
    raise HFCheckpointError(f"{source}: field 'rope_theta' (or rope_parameters.rope_theta) is missing")
  hidden, heads = field("hidden_size"), field("num_attention_heads")
  return dict(
      vocab_size=field("vocab_size"), hidden_size=hidden, intermediate_size=field("intermediate_size"),
      num_layers=field("num_hidden_layers"), num_heads=heads,
      num_kv_heads=field("num_key_value_heads", heads), head_dim=hf.get("head_dim") or hidden // heads,
      rope_theta=float(rope_theta), rms_norm_eps=float(field("rms_norm_eps")),
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_seq_len=field("max_position_embeddings", 32768))


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json",
                   config: ml_collections.ConfigDict | None = None) -> BackboneConfig:
  """The backbone view of `config` (default: the schema's) with the architecture of an HF config
  dict; the rest (dtype, scan_layers, remat, LoRA, ...) is `config`'s."""
  values = {f"model.{k}": v for k, v in model_fields_from_hf(hf, source).items()}
  return BackboneConfig.from_config(configs.with_values(values, config))


def config_to_hf(cfg: BackboneConfig, dtype: str = "float32") -> dict[str, Any]:
  """The config.json that transformers' Qwen2 reads back to the same architecture."""
  return {
      "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim, "rms_norm_eps": cfg.rms_norm_eps,
      "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
      "tie_word_embeddings": cfg.tie_word_embeddings, "max_position_embeddings": cfg.max_seq_len,
      "use_sliding_window": False, "attention_dropout": 0.0, "initializer_range": cfg.init_std,
      "dtype": dtype, "use_cache": True,
  }


# ----------------------------------------------------------------------------- tensors


def _expected_shapes(cfg: BackboneConfig) -> dict[str, tuple[int, ...]]:
  d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  per_layer = {
      "self_attn.q_proj.weight": (q, d), "self_attn.q_proj.bias": (q,),
      "self_attn.k_proj.weight": (kv, d), "self_attn.k_proj.bias": (kv,),
      "self_attn.v_proj.weight": (kv, d), "self_attn.v_proj.bias": (kv,),
      "self_attn.o_proj.weight": (d, q), "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d),
      "mlp.down_proj.weight": (d, f), "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
  }
  shapes = {f"model.layers.{i}.{name}": s for i in range(cfg.num_layers) for name, s in per_layer.items()}
  shapes["model.embed_tokens.weight"] = (v, d)
  shapes["model.norm.weight"] = (d,)
  if not cfg.tie_word_embeddings:
    shapes["lm_head.weight"] = (v, d)
  return shapes


def _tensor_files(path: Path) -> dict[str, Path]:
  """HF tensor name -> the safetensors file holding it (single file or sharded with an index)."""
  index = path / SAFETENSORS_INDEX
  if index.exists():
    weight_map = json.loads(index.read_text())["weight_map"]
    files = {name: path / file for name, file in weight_map.items()}
    for file in set(files.values()):
      if not file.exists():
        raise HFCheckpointError(f"{index}: names shard {file.name}, which does not exist")
    return files
  single = path / SINGLE_FILE
  if not single.exists():
    raise HFCheckpointError(f"{path}: neither {SINGLE_FILE} nor {SAFETENSORS_INDEX} found "
                            "(only safetensors checkpoints are read; convert .bin files with transformers first)")
  with safe_open(single, framework="numpy") as f:
    return {name: single for name in f.keys()}


def read_tensors(path: str | os.PathLike, cfg: BackboneConfig) -> dict[str, np.ndarray]:
  """Every tensor of the checkpoint, checked against the shapes `cfg` implies, in float32."""
  path = Path(path)
  files = _tensor_files(path)
  expected = _expected_shapes(cfg)
  names = {n for n in files if not n.endswith(_IGNORED_SUFFIXES)}
  if cfg.tie_word_embeddings:
    names.discard("lm_head.weight")  # Some tied exports still write it; the embedding is authoritative.
  missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
  if missing or unexpected:
    raise HFCheckpointError(f"{path}: tensors missing: {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
                            f"unexpected: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
  tensors = {}
  by_file: dict[Path, list[str]] = {}
  for name in expected:
    by_file.setdefault(files[name], []).append(name)
  for file, file_names in by_file.items():
    with safe_open(file, framework="numpy") as f:
      for name in file_names:
        shape = tuple(f.get_slice(name).get_shape())
        if shape != expected[name]:
          raise HFCheckpointError(f"{file.name}: tensor {name} has shape {shape}, config.json implies {expected[name]}")
        tensors[name] = f.get_tensor(name).astype(np.float32)
  return tensors


def params_from_hf(tensors: Mapping[str, np.ndarray], cfg: BackboneConfig) -> dict[str, Any]:
  """HF tensors -> our params tree (layers stacked on axis 0 when cfg.scan_layers)."""
  params: dict[str, Any] = {}
  for path, (name, (to_ours, _)) in _TOP_TENSORS.items():
    if name in tensors and not (path == ("lm_head",) and cfg.tie_word_embeddings):
      _set(params, path, to_ours(tensors[name], cfg))
  layers = [{} for _ in range(cfg.num_layers)]
  for i, layer in enumerate(layers):
    for path, (name, (to_ours, _)) in _LAYER_TENSORS.items():
      _set(layer, path, to_ours(tensors[f"model.layers.{i}.{name}"], cfg))
  if cfg.scan_layers:
    params["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
  else:
    params.update({f"layers_{i}": layer for i, layer in enumerate(layers)})
  return params


def params_to_hf(params: Mapping[str, Any], cfg: BackboneConfig) -> dict[str, np.ndarray]:
  """Our params tree -> HF tensor name -> array (float32, or whatever dtype params hold)."""
  if any("lora_a" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)):
    raise ValueError("params hold LoRA factors, which Qwen2 has no tensors for; fold them in first with "
                     "mmar_jax.models.lora.merge(params, cfg)")
  params = jax.tree.map(np.asarray, params)
  tensors = {}
  for path, (name, (_, to_hf)) in _TOP_TENSORS.items():
    if path == ("lm_head",) and cfg.tie_word_embeddings:
      continue
    tensors[name] = to_hf(_get(params, path), cfg)
  for i in range(cfg.num_layers):
    layer = jax.tree.map(lambda x: x[i], params["layers"]) if cfg.scan_layers else params[f"layers_{i}"]
    for path, (name, (_, to_hf)) in _LAYER_TENSORS.items():
      tensors[f"model.layers.{i}.{name}"] = to_hf(_get(layer, path), cfg)
  return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


# ----------------------------------------------------------------------------- vocabulary


def resize_vocab(cfg: BackboneConfig, params: Mapping[str, Any], vocab_size: int, *, new_rows=(),
                 mean_rows: int | None = None) -> tuple[BackboneConfig, dict[str, Any]]:
  """Grows `embed_tokens` [v, d] (and an untied `lm_head` [d, v]) to `vocab_size` rows.

  Rows past the old size, and the ids in `new_rows` (tokens the checkpoint never trained, such
  as Qwen2's padding rows that MMAR's special tokens take), are set to the mean of the first
  `mean_rows` rows (default: all old rows), in both tables. A new token then starts as an average
  token rather than as noise whose norm is unlike any real token's (Hewitt, "Initializing New
  Word Embeddings for Pretrained Language Models", 2021, common practice since) [ours].
  Every other row is kept bit for bit.
  """
  old = cfg.vocab_size
  if vocab_size < old:
    raise HFCheckpointError(f"vocab_size={vocab_size} is smaller than the checkpoint's {old} rows; the import "
                            "only grows the table (export drops rows)")
  mean_rows = old if mean_rows is None else mean_rows
  rows = sorted(set(range(old, vocab_size)) | {int(i) for i in new_rows})
  if rows and not (0 < mean_rows <= old and rows[-1] < vocab_size):
    raise HFCheckpointError(f"new rows {rows[0]}..{rows[-1]} or mean_rows={mean_rows} do not fit a table of "
                            f"{old} rows grown to {vocab_size}")

  def grow(table: np.ndarray) -> np.ndarray:  # [v, d], rows are tokens.
    table = np.asarray(table)
    out = np.concatenate([table, np.zeros((vocab_size - old, table.shape[1]), table.dtype)])
    out[rows] = table[:mean_rows].astype(np.float64).mean(axis=0).astype(table.dtype)
    return out

  params = dict(params, embed_tokens=grow(params["embed_tokens"]))
  if not cfg.tie_word_embeddings:
    params["lm_head"] = grow(np.asarray(params["lm_head"]).T).T
  return dataclasses.replace(cfg, vocab_size=vocab_size), params


def truncate_vocab(cfg: BackboneConfig, params: Mapping[str, Any], vocab_size: int
                   ) -> tuple[BackboneConfig, dict[str, Any]]:
  """The first `vocab_size` rows of the table (and columns of an untied lm_head): the HF shape."""
  if not 0 < vocab_size <= cfg.vocab_size:
    raise ValueError(f"vocab_size={vocab_size} must be in [1, {cfg.vocab_size}] (the table's rows)")
  params = dict(params, embed_tokens=params["embed_tokens"][:vocab_size])
  if not cfg.tie_word_embeddings:
    params["lm_head"] = params["lm_head"][:, :vocab_size]
  return dataclasses.replace(cfg, vocab_size=vocab_size), params


# ----------------------------------------------------------------------------- load / save


def load(path: str | os.PathLike, *, config: ml_collections.ConfigDict | None = None, vocab_size: int | None = None,
         new_rows=(), mean_rows: int | None = None) -> tuple[BackboneConfig, dict[str, Any]]:
  """Reads an HF Qwen2 directory: its architecture, with the other backbone fields from `config`
  (default: the schema's).

  With `vocab_size` or `new_rows`, the table is resized for new tokens (`resize_vocab`); the
  returned config's vocab_size is then the new one.
  """
  path = Path(path)
  config_file = path / "config.json"
  if not config_file.exists():
    raise HFCheckpointError(f"{config_file}: not found; is {path} a Hugging Face model directory?")
  cfg = config_from_hf(json.loads(config_file.read_text()), source=str(config_file), config=config)
  params = params_from_hf(read_tensors(path, cfg), cfg)
  if vocab_size is not None or len(new_rows):
    cfg, params = resize_vocab(cfg, params, vocab_size or cfg.vocab_size, new_rows=new_rows, mean_rows=mean_rows)
  return cfg, params


SAVE_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def save(cfg: BackboneConfig, params: Mapping[str, Any], path: str | os.PathLike, *,
         dtype: str = "float32", max_shard_bytes: int = 5 * 2**30, overwrite: bool = False,
         vocab_size: int | None = None) -> None:
  """Writes an HF Qwen2 directory, sharded above `max_shard_bytes`.

  `vocab_size` (config.model.hf_vocab_size after an import) keeps only the table's first rows,
  the original checkpoint's shape, so the original tokenizer and HF tooling load it unchanged.
  The files are written to a temporary directory beside `path` and renamed into place, so a
  failure leaves nothing half-written at `path`.
  """
  if dtype not in SAVE_DTYPES:
    raise ValueError(f"dtype={dtype!r} must be one of {sorted(SAVE_DTYPES)}")
  path = Path(path)
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
  if path.exists() and not path.is_dir():
    raise FileExistsError(f"{path} is a file, not a model directory; --overwrite replaces only a directory")
  if vocab_size is not None:
    cfg, params = truncate_vocab(cfg, params, vocab_size)
  tensors = {k: v.astype(SAVE_DTYPES[dtype]) for k, v in params_to_hf(params, cfg).items()}
  path.parent.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
  try:
    _write_shards(tensors, staging, max_shard_bytes)
    (staging / "config.json").write_text(json.dumps(config_to_hf(cfg, dtype), indent=2) + "\n")
    if path.exists():
      shutil.rmtree(path)
    os.rename(staging, path)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def _write_shards(tensors: Mapping[str, np.ndarray], path: Path, max_shard_bytes: int) -> None:
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, tensor in tensors.items():
    if shards[-1] and size + tensor.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = tensor
    size += tensor.nbytes
  metadata = {"format": "pt"}  # transformers refuses safetensors files without a format tag.
  if len(shards) == 1:
    save_file(shards[0], path / SINGLE_FILE, metadata=metadata)
    return
  weight_map = {}
  for i, shard in enumerate(shards, 1):
    file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, path / file, metadata=metadata)
    weight_map.update(dict.fromkeys(shard, file))
  index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
  (path / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")


# ----------------------------------------------------------------------------- tree helpers


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree
