"""mmar-jax export-hf: an mmar_jax checkpoint's backbone -> a Hugging Face Qwen2 directory.

The result loads with `transformers.AutoModelForCausalLM.from_pretrained(DIR)` and none of our code.
LoRA factors are folded into the weights (lora.merge), and the table keeps only the imported
checkpoint's rows (config.model.hf_vocab_size), so the original tokenizer still fits it.
"""

from __future__ import annotations

from absl import flags

from mmar_jax import checkpoint
from mmar_jax.convert import hf_qwen2
from mmar_jax.models import lora
from mmar_jax.models.backbone import BackboneConfig

_CKPT = flags.DEFINE_string("ckpt", None, "Any mmar_jax checkpoint: a training --workdir, its checkpoints/, a step "
                            "directory checkpoints/<step>, or an import-hf output.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the one --ckpt names, else the newest "
                             "readable).")
_OUT = flags.DEFINE_string("out", None, "Hugging Face directory to write.", required=True)
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "dtype of the written tensors.")
_MAX_SHARD = flags.DEFINE_integer("max-shard-bytes", 5 * 2**30, "Shard the safetensors above this size.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")


def main(argv):
  del argv
  params, config, step = checkpoint.load_params(_CKPT.value, _STEP.value, need_vae=False)
  cfg = BackboneConfig.from_config(config)
  backbone = params["backbone"]
  if lora.has_lora(backbone):
    backbone = lora.merge(backbone, cfg)
  hf_qwen2.save(cfg, backbone, _OUT.value, dtype=_DTYPE.value, max_shard_bytes=_MAX_SHARD.value,
                overwrite=_OVERWRITE.value, vocab_size=config.model.hf_vocab_size or None)
  print(f"exported {_CKPT.value} (step {step}) -> {_OUT.value} ({_DTYPE.value})")
