"""mmar-jax import-torch: an export-torch directory (fine-tuned in PyTorch or not) -> an mmar_jax checkpoint.

The checkpoint (one step directory, as import-hf writes) holds the exported config with LoRA
folded in, which generate, describe, export-hf and export-torch read like any other.
A tensor that is missing or misshapen is named (exit 2); nothing is written then.
"""

from __future__ import annotations

from absl import flags

from mmar_jax import checkpoint
from mmar_jax.convert import torch_import

_IN = flags.DEFINE_string("in", None, "An `mmar-jax export-torch` directory.", required=True)
_OUT = flags.DEFINE_string("out", None, "Checkpoint directory to write (must not exist).", required=True)


def main(argv):
  del argv
  params, config = torch_import.load(_IN.value)
  checkpoint.save(_OUT.value, params, config)
  print(f"imported {_IN.value} -> {_OUT.value}")
