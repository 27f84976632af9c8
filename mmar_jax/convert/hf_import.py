"""A Hugging Face Qwen2 directory as the backbone of a config: what import-hf and init-from-hf share.

The architecture comes from the directory's config.json (`hf_qwen2.load`), not from the config,
so a run needs no architecture flags. MMAR's special tokens get their embedding rows here: the
tokenizer says which ids `<boi>`, `<eoi>`, `<mask>` take; the table grows (to a multiple of
VOCAB_MULTIPLE) only when they fall past the checkpoint's rows; those rows, and any new ones,
start at the mean of the trained rows (`hf_qwen2.resize_vocab`). config.model.hf_vocab_size
records the original row count for export-hf.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from mmar_jax import configs
from mmar_jax.convert import hf_qwen2
from mmar_jax.data import text_tokenizer
from mmar_jax.models.backbone import BackboneConfig

# The config.model fields an HF directory fixes (hf_vocab_size too, set apart).
ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                       "num_kv_heads", "head_dim", "rope_theta", "rms_norm_eps", "tie_word_embeddings",
                       "max_seq_len")
# A grown table is padded to a multiple of this (Megatron's make-vocab-size-divisible-by), so
# that it still shards over a tensor axis [ours].
VOCAB_MULTIPLE = 128


@dataclasses.dataclass(frozen=True)
class Imported:
  config: ml_collections.ConfigDict  # the given config, its architecture and hf_vocab_size the directory's
  backbone: BackboneConfig
  params: dict[str, Any]             # the backbone's, float32 numpy, the table grown
  lines: list[str]                   # what was done, for the console


def _value(model: ml_collections.ConfigDict, field: str):
  return configs.head_dim(model) if field == "head_dim" else model[field]


def import_backbone(hf_dir: str, config: ml_collections.ConfigDict, tokenizer: str | None, *,
                    overrides: Mapping[str, Any] = ()) -> Imported:
  """`config` with the architecture of `hf_dir` and the backbone's parameters, rows set for `tokenizer`.

  `tokenizer` (a tokenizer.json or a directory holding one) gives the special tokens' ids; None
  keeps the table as it is. `overrides` are the user's own `--config.*` values: one that sets an
  architecture field to another value than the directory's is an error naming both.
  """
  config = config.copy_and_resolve_references()
  cfg, params = hf_qwen2.load(hf_dir, config=config)
  hf_vocab = cfg.vocab_size
  for key, value in dict(overrides).items():
    field = key.removeprefix("model.")
    # vocab_size is left out: the table may grow past the directory's, so either value can be meant.
    if key.startswith("model.") and field in ARCHITECTURE_FIELDS and field != "vocab_size":
      if _value(config.model, field) != getattr(cfg, field):
        raise configs.ConfigError(f"config.model.{field}={value!r} but {hf_dir} has {getattr(cfg, field)!r}; "
                                  "drop the override (the architecture comes from config.json)")
  if tokenizer is None:
    lines = [f"the table keeps its {hf_vocab} rows; no special-token rows are initialised (no tokenizer)"]
  else:
    original_size, new_ids = text_tokenizer.new_token_ids(tokenizer)
    vocab = hf_vocab
    if new_ids and new_ids[-1] >= hf_vocab:
      vocab = -(-(new_ids[-1] + 1) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    cfg, params = hf_qwen2.resize_vocab(cfg, params, vocab, new_rows=new_ids, mean_rows=min(original_size, hf_vocab))
    rows = f"the table grows from {hf_vocab} to {vocab} rows" if vocab > hf_vocab else f"inside its {hf_vocab} rows"
    lines = [f"special tokens take ids {list(new_ids)} (tokenizer {tokenizer}: {original_size} tokens), set to "
             f"the mean row; {rows}"]
  for field in ARCHITECTURE_FIELDS:
    config.model[field] = getattr(cfg, field)
  config.model.hf_vocab_size = hf_vocab
  return Imported(config=config, backbone=cfg, params=params, lines=lines)


def model_overrides(before: ml_collections.ConfigDict, after: ml_collections.ConfigDict) -> list[str]:
  """`--config.model.F=V` for each field the import changed: what a later command given `before`'s
  config file must add to build the same model."""
  fields = [f for f in ARCHITECTURE_FIELDS + ("hf_vocab_size",) if before.model[f] != after.model[f]]
  return [f"--config.model.{f}={after.model[f]}" for f in fields]
