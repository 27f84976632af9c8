"""mmar-jax convert-vae: MAR's kl16.ckpt (or an LDM-layout safetensors) -> our VAE checkpoint dir.

The output (Orbax params + vae_config.json) is what `config.tokenizer.vae_checkpoint` should
name for training: reading it needs no torch. The architecture comes from --config's
tokenizer section (default: the base schema, MAR's KL-16).
"""

from __future__ import annotations

import jax
from absl import flags
from ml_collections import config_flags

from mmar_jax import configs
from mmar_jax.convert import vae_ckpt
from mmar_jax.models import tokenizers

_IN = flags.DEFINE_string("in", None, "MAR-style torch file ({'model': state_dict}) or safetensors.", required=True)
_OUT = flags.DEFINE_string("out", None, "Directory to create (must not exist).", required=True)
_IGNORE = flags.DEFINE_multi_string("ignore-prefix", [], "Drop tensors whose key starts with this (e.g. 'loss.' "
                                    "for a training checkpoint's discriminator); every other tensor must match.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config whose tokenizer section gives the architecture.",
                                          lock_config=True)


def main(argv):
  del argv
  config = _CONFIG.value or configs.base_config()
  configs.validate_tokenizer(config.tokenizer)
  vae_config = tokenizers.TokenizerConfig.from_config(config).vae
  params = vae_ckpt.load(_IN.value, vae_config, tuple(_IGNORE.value))
  vae_ckpt.save(_OUT.value, params, vae_config, source=_IN.value)
  count = sum(x.size for x in jax.tree.leaves(params))
  print(f"converted {_IN.value} -> {_OUT.value}: {count / 1e6:.2f}M parameters")
