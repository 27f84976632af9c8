"""mmar-jax export-hf: any mmar_jax checkpoint's backbone -> a Hugging Face Qwen2 directory.

A training run or step, init-from-hf or import-hf output alike. The result loads with
`transformers.AutoModelForCausalLM.from_pretrained(DIR)` and none of our code, LoRA folded in.
The table keeps the original model's rows (config.model.hf_vocab_size; all of them for a model
trained from scratch) unless --with-image-tokens keeps the <boi>/<eoi>/<mask> rows too; the
tokenizer files written beside it match (convert/hf_export.py). No --weights ema|raw yet: the
checkpoints hold no EMA.
"""

from __future__ import annotations

from absl import flags

from mmar_jax import checkpoint
from mmar_jax.convert import hf_export

_CKPT = flags.DEFINE_string("ckpt", None, "Any mmar_jax checkpoint: a training --workdir, its checkpoints/, a step "
                            "directory checkpoints/<step>, or an import-hf output.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the one --ckpt names, else the newest "
                             "readable).")
_OUT = flags.DEFINE_string("out", None, "Hugging Face directory to write.", required=True)
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "dtype of the written tensors.")
_IMAGE_TOKENS = flags.DEFINE_bool("with-image-tokens", False, "Keep the <boi>/<eoi>/<mask> rows and write a "
                                  "tokenizer that has those tokens.")
_MAX_SHARD = flags.DEFINE_integer("max-shard-bytes", 5 * 2**30, "Shard the safetensors above this size.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")

_WEIGHTS = flags.DEFINE_enum("weights", None, list(checkpoint.WEIGHTS), checkpoint.WEIGHTS_HELP)

def main(argv):
  del argv
  params, config, step = checkpoint.load_params(_CKPT.value, _STEP.value, need_vae=False,
                                                weights=_WEIGHTS.value)
  rows, tokenizer = hf_export.backbone_dir(params, config, _OUT.value, dtype=_DTYPE.value,
                                with_image_tokens=_IMAGE_TOKENS.value, max_shard_bytes=_MAX_SHARD.value,
                                overwrite=_OVERWRITE.value)
  print(f"exported {_CKPT.value} (step {step}) -> {_OUT.value} ({_DTYPE.value}, {rows} table rows); "
        f"tokenizer: {tokenizer}")
