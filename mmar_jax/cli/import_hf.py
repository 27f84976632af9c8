"""mmar-jax import-hf: a Hugging Face Qwen2 directory -> an mmar_jax Orbax checkpoint.

The checkpoint's config is --config (default: the base schema) with its model architecture
replaced by the Hugging Face one, so training can start from it directly. MMAR's special
tokens get their embedding rows here (hf_qwen2.resize_vocab): the tokenizer (--tokenizer, by
default the one in --hf-dir) says which ids `<boi>`, `<eoi>`, `<mask>` take; the table grows
only when they fall past the checkpoint's rows, and config.model.hf_vocab_size records the
original row count for export-hf.
"""

from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags

from mmar_jax import checkpoint, configs
from mmar_jax.convert import hf_qwen2
from mmar_jax.data import text_tokenizer

_HF_DIR = flags.DEFINE_string("hf-dir", None, "Hugging Face model directory (config.json + *.safetensors).",
                              required=True)
_OUT = flags.DEFINE_string("out", None, "Checkpoint directory to create (must not exist).", required=True)
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer.json or a directory holding it, whose ids the "
                                 "special tokens follow (default: --hf-dir's, if it has one).")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config whose non-model fields the checkpoint keeps.",
                                          lock_config=True)

ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                       "num_kv_heads", "head_dim", "rope_theta", "rms_norm_eps", "tie_word_embeddings",
                       "max_seq_len")
# A grown table is padded to a multiple of this (Megatron's make-vocab-size-divisible-by), so
# that it still shards over a tensor axis [ours].
VOCAB_MULTIPLE = 128


def main(argv):
  del argv
  config = _CONFIG.value or configs.base_config()
  tokenizer = _TOKENIZER.value
  if tokenizer is None and os.path.isfile(os.path.join(_HF_DIR.value, "tokenizer.json")):
    tokenizer = _HF_DIR.value
  cfg, params = hf_qwen2.load(_HF_DIR.value, config=config)
  hf_vocab = cfg.vocab_size
  if tokenizer is None:
    print(f"no tokenizer.json in {_HF_DIR.value} and no --tokenizer: the table keeps its {hf_vocab} rows and "
          "no special-token rows are initialised")
  else:
    original_size, new_ids = text_tokenizer.new_token_ids(tokenizer)
    vocab = hf_vocab
    if new_ids and new_ids[-1] >= hf_vocab:
      vocab = -(-(new_ids[-1] + 1) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    cfg, params = hf_qwen2.resize_vocab(cfg, params, vocab, new_rows=new_ids, mean_rows=min(original_size, hf_vocab))
    print(f"special tokens take ids {list(new_ids)} (tokenizer {tokenizer}: {original_size} tokens); rows "
          f"{hf_vocab} -> {vocab}")
  for field in ARCHITECTURE_FIELDS:
    config.model[field] = getattr(cfg, field)
  config.model.hf_vocab_size = hf_vocab
  configs.validate(config)
  checkpoint.save(_OUT.value, {"backbone": params}, config)
  print(f"imported {_HF_DIR.value} -> {_OUT.value}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
        f"vocab {cfg.vocab_size}")
