"""mmar-jax export-torch: any mmar_jax checkpoint -> one directory the PyTorch side (mmar_torch) reads.

    model = mmar_torch.MMARTorch.from_pretrained(DIR, device="cpu", dtype=torch.float32)

DIR is a Hugging Face Qwen2 directory (LoRA folded in, the special tokens' rows kept, their
tokenizer) that `AutoModelForCausalLM` loads alone, plus the adapter, the diffusion head and
(KL-16 models) the VAE as safetensors and mmar_config.json (convert/hf_export.py names every file and key).
"""

from __future__ import annotations

from absl import flags

from mmar_jax import checkpoint
from mmar_jax.convert import hf_export

_CKPT = flags.DEFINE_string("ckpt", None, "Any mmar_jax checkpoint: a training --workdir, its checkpoints/, a step "
                            "directory checkpoints/<step>, or an import-hf output.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the one --ckpt names, else the newest "
                             "readable).")
_OUT = flags.DEFINE_string("out", None, "Directory to write.", required=True)
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                           "dtype of the backbone's and the adapter's tensors (the head stays float32).")
_VAE = flags.DEFINE_string("vae", None, "KL-16 models: the VAE's weights here (default: the checkpoint's "
                           "config.tokenizer.vae_checkpoint).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")

_WEIGHTS = flags.DEFINE_enum("weights", None, list(checkpoint.WEIGHTS), checkpoint.WEIGHTS_HELP)

def main(argv):
  del argv
  params, config, step = checkpoint.load_params(_CKPT.value, _STEP.value, vae=_VAE.value, weights=_WEIGHTS.value)
  hf_export.torch_dir(params, config, _OUT.value, dtype=_DTYPE.value, overwrite=_OVERWRITE.value)
  print(f"exported {_CKPT.value} (step {step}) -> {_OUT.value} ({_DTYPE.value})")
