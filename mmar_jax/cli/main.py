"""`mmar-jax SUBCOMMAND [flags]`: one command, one module a subcommand.

Each subcommand module defines its absl flags at import and a `main(argv)`; only the chosen
one is imported, so flags of different subcommands never collide and start-up stays fast.
absl parses the flags (grain's worker processes need parsed absl flags).
"""

from __future__ import annotations

import importlib
import sys

from absl import app, flags, logging

from mmar_jax.configs import ConfigError

# Errors that mean bad input (a file, a flag, a config field), each with a message naming it.
USER_ERRORS = (ConfigError, FileNotFoundError, FileExistsError, ValueError)

# name -> (module, one-line description shown by `mmar-jax --help`)
SUBCOMMANDS = {
    "train": ("mmar_jax.cli.train", "train or resume a model from a config (checkpoints, metrics, evaluation)"),
    "evaluate": ("mmar_jax.cli.evaluate", "held-out evaluation of a training run: images judged, questions scored"),
    "generate": ("mmar_jax.cli.generate", "images from captions with a checkpoint: a PNG grid and one PNG each"),
    "describe": ("mmar_jax.cli.describe", "answer questions about images with a checkpoint (one, or a JSONL batch)"),
    "info": ("mmar_jax.cli.info", "print a config's parameter counts and run one sharded forward pass"),
    "init-from-hf": ("mmar_jax.cli.init_from_hf", "start a training run (step 0) from Qwen2 weights, adapter and head fresh"),
    "import-hf": ("mmar_jax.cli.import_hf", "Hugging Face Qwen2 directory -> Orbax checkpoint"),
    "export-hf": ("mmar_jax.cli.export_hf", "Orbax checkpoint -> Hugging Face Qwen2 directory"),
    "convert-vae": ("mmar_jax.cli.convert_vae", "MAR/LDM KL-VAE checkpoint (torch or safetensors) -> our VAE dir"),
    "prepare-data": ("mmar_jax.cli.prepare_data", "encode a JSONL image manifest to cached VAE latents (ArrayRecord)"),
}


def usage() -> str:
  width = max(map(len, SUBCOMMANDS))
  lines = ["usage: mmar-jax SUBCOMMAND [--flags]  (mmar-jax SUBCOMMAND --help for its flags)", "", "subcommands:"]
  lines += [f"  {name.ljust(width)}  {about}" for name, (_, about) in SUBCOMMANDS.items()]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage())
    return
  name = argv[1]
  if name not in SUBCOMMANDS:
    print(f"mmar-jax: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
    sys.exit(2)
  module = importlib.import_module(SUBCOMMANDS[name][0])
  if any(arg in ("-h", "--help", "--helpshort") for arg in argv[2:]):
    # absl's own --help shows __main__'s docstring and flags (this file's); show the subcommand's.
    print(f"{module.__doc__.strip()}\n\nflags:\n{flags.FLAGS.module_help(module.__name__)}")
    return

  def run(sub_argv):
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # jax's backend probing logs at INFO on every start.
    try:
      return module.main(sub_argv)
    except USER_ERRORS as e:  # The user's input is at fault: say what, without a traceback.
      print(f"mmar-jax {name}: error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(run, argv=[f"mmar-jax {name}"] + argv[2:])


if __name__ == "__main__":
  main()
