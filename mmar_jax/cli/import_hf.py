"""mmar-jax import-hf: a Hugging Face Qwen2 directory -> an mmar_jax Orbax checkpoint.

The checkpoint's config is --config (default: the base schema) with its model architecture
replaced by the Hugging Face one, so training can start from it directly. MMAR's special
tokens get their embedding rows here (convert/hf_import.py, shared with init-from-hf): the
tokenizer (--tokenizer, by default the one in --hf-dir) says which ids `<boi>`, `<eoi>`,
`<mask>` take; the table grows only when they fall past the checkpoint's rows, and
config.model.hf_vocab_size records the original row count for export-hf.
"""

from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags

from mmar_jax import checkpoint, configs
from mmar_jax.convert import hf_import

_HF_DIR = flags.DEFINE_string("hf-dir", None, "Hugging Face model directory (config.json + *.safetensors).",
                              required=True)
_OUT = flags.DEFINE_string("out", None, "Checkpoint directory to create (must not exist).", required=True)
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer.json or a directory holding it, whose ids the "
                                 "special tokens follow (default: --hf-dir's, if it has one).")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config whose non-model fields the checkpoint keeps.",
                                          lock_config=True)


def main(argv):
  del argv
  config = _CONFIG.value or configs.base_config()
  tokenizer = _TOKENIZER.value
  if tokenizer is None and os.path.isfile(os.path.join(_HF_DIR.value, "tokenizer.json")):
    tokenizer = _HF_DIR.value
  overrides = config_flags.get_override_values(flags.FLAGS["config"]) if _CONFIG.value else {}
  imported = hf_import.import_backbone(_HF_DIR.value, config, tokenizer, overrides=overrides)
  if tokenizer is None:
    print(f"no tokenizer.json in {_HF_DIR.value} and no --tokenizer")
  print("\n".join(imported.lines))
  config, cfg, params = imported.config, imported.backbone, imported.params
  configs.validate(config)
  checkpoint.save(_OUT.value, {"backbone": params}, config)
  print(f"imported {_HF_DIR.value} -> {_OUT.value}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
        f"vocab {cfg.vocab_size}")
