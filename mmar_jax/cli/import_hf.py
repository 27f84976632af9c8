"""mmar-jax import-hf: a Hugging Face Qwen2 directory -> an mmar_jax Orbax checkpoint.

The checkpoint's config is --config (default: the base schema) with its model architecture
replaced by the Hugging Face one, so training can start from it directly.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from mmar_jax import checkpoint, configs
from mmar_jax.convert import hf_qwen2

_HF_DIR = flags.DEFINE_string("hf-dir", None, "Hugging Face model directory (config.json + *.safetensors).",
                              required=True)
_OUT = flags.DEFINE_string("out", None, "Checkpoint directory to create (must not exist).", required=True)
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config whose non-model fields the checkpoint keeps.",
                                          lock_config=True)

ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                       "num_kv_heads", "head_dim", "rope_theta", "rms_norm_eps", "tie_word_embeddings",
                       "max_seq_len")


def main(argv):
  del argv
  config = _CONFIG.value or configs.base_config()
  cfg, params = hf_qwen2.load(_HF_DIR.value, scan_layers=config.model.scan_layers)
  for field in ARCHITECTURE_FIELDS:
    config.model[field] = getattr(cfg, field)
  configs.validate(config)
  checkpoint.save(_OUT.value, {"backbone": params}, config)
  print(f"imported {_HF_DIR.value} -> {_OUT.value}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
        f"vocab {cfg.vocab_size}")
