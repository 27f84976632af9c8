"""mmar-jax init-from-hf: start a training run from Qwen2 weights (backbone) with a fresh adapter and head.

Writes step 0 of `--workdir` (the full train state, data iterator and config). The model's
architecture comes from --hf-dir's config.json and the special tokens' embedding rows are set
exactly as import-hf sets them (convert/hf_import.py), for the ids of the tokenizer training reads
(config.data.tokenizer; the demo's own tokenizer leaves the table as it is). An override of an
architecture field that contradicts config.json fails naming it. `mmar-jax train` builds its model
from --config, so the command prints the train command to run: the same --config and overrides
plus the architecture fields that config.json changed.
"""

from __future__ import annotations

import shlex

import jax
from absl import flags
from ml_collections import config_flags

from mmar_jax import configs
from mmar_jax.convert import hf_import
from mmar_jax.train import loop
from mmar_jax.train import state as state_lib

_HF_DIR = flags.DEFINE_string("hf-dir", None, "Hugging Face Qwen2 directory (config.json + *.safetensors).",
                              required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "New training run directory.", required=True)
_CONFIG = config_flags.DEFINE_config_file("config", None, "The training config, e.g. configs/mmar_0p5b.py.",
                                          lock_config=True)


def train_command(config_file: str, workdir: str, overrides: dict, added: list[str]) -> str:
  """The `mmar-jax train` line that rebuilds this model: the user's overrides (but those the import
  replaced) and the import's architecture fields."""
  replaced = {a.split("=", 1)[0].removeprefix("--config.") for a in added}
  kept = [f"--config.{k}={v}" for k, v in overrides.items() if k not in replaced]
  return shlex.join(["mmar-jax", "train", f"--config={config_file}", f"--workdir={workdir}", *kept, *added])


def main(argv):
  del argv
  given = _CONFIG.value
  if given is None:
    raise flags.ValidationError("--config is required, e.g. --config=configs/mmar_0p5b.py")
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  tokenizer = None if given.data.tokenizer == "demo" else given.data.tokenizer
  imported = hf_import.import_backbone(_HF_DIR.value, given, tokenizer, overrides=overrides)
  config = imported.config
  configs.validate(config, num_devices=jax.device_count())
  run = loop.setup(config, _WORKDIR.value)
  if run.mngr.all_steps():
    raise FileExistsError(f"{_WORKDIR.value} already holds checkpoints {run.mngr.all_steps()}; choose a new --workdir")
  state = run.fresh_state()
  state = state.replace(params=dict(state.params, backbone=state_lib.overlay(state.params["backbone"], imported.params, "backbone")))
  run.save(state, force=True)
  run.mngr.wait_until_finished()
  cfg = imported.backbone
  if tokenizer is None:
    print("config.data.tokenizer='demo' (not the model's tokenizer)")
  print("\n".join(imported.lines))
  print(f"initialised {_WORKDIR.value} step 0 from {_HF_DIR.value}: backbone from Qwen2 ({cfg.num_layers} layers, "
        f"hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, hf_vocab_size {config.model.hf_vocab_size}), "
        "adapter and head fresh")
  added = hf_import.model_overrides(given, config)
  print("train it with (train builds the model from --config; these flags give it config.json's architecture):")
  print("  " + train_command(config_flags.get_config_filename(flags.FLAGS["config"]), _WORKDIR.value, overrides,
                             added))
