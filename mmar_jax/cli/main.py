"""`mmar-jax SUBCOMMAND [flags]`: one command, one module a subcommand.

Each subcommand module defines its absl flags at import and a `main(argv)`; only the chosen
one is imported, so flags of different subcommands never collide and start-up stays fast.
absl parses the flags (grain's worker processes need parsed absl flags).
"""

from __future__ import annotations

import importlib
import re
import sys

from absl import app, flags, logging

from mmar_jax.configs import ConfigError

# Errors that mean bad input (a file, a flag, a config field), each with a message naming it.
USER_ERRORS = (ConfigError, FileNotFoundError, FileExistsError, ValueError, flags.Error)
# What ml_collections' config flag raises for an override of a field the config lacks.
_OVERRIDE_ERRORS = (AttributeError, KeyError, TypeError)

# name -> (module, one-line description shown by `mmar-jax --help`)
SUBCOMMANDS = {
    "train": ("mmar_jax.cli.train", "train or resume a model from a config (checkpoints, metrics, evaluation)"),
    "evaluate": ("mmar_jax.cli.evaluate", "held-out evaluation of a training run: images judged, questions scored"),
    "generate": ("mmar_jax.cli.generate", "images from captions with a checkpoint: a PNG grid and one PNG each"),
    "describe": ("mmar_jax.cli.describe", "answer questions about images with a checkpoint (one, or a JSONL batch)"),
    "eval-vqa": ("mmar_jax.cli.eval_vqa", "score a checkpoint's answers on a VQA set (VQAv2 accuracy, MMBench choices)"),
    "info": ("mmar_jax.cli.info", "print a config's parameter counts and run one sharded forward pass"),
    "init-from-hf": ("mmar_jax.cli.init_from_hf", "start a training run (step 0) from Qwen2 weights, adapter and head fresh"),
    "import-hf": ("mmar_jax.cli.import_hf", "Hugging Face Qwen2 directory -> Orbax checkpoint"),
    "export-hf": ("mmar_jax.cli.export_hf", "any checkpoint's backbone -> Hugging Face Qwen2 directory (LoRA merged)"),
    "export-torch": ("mmar_jax.cli.export_torch", "any checkpoint -> a directory the PyTorch side mmar_torch loads"),
    "import-torch": ("mmar_jax.cli.import_torch", "export-torch directory (fine-tuned in PyTorch or not) -> checkpoint"),
    "convert-vae": ("mmar_jax.cli.convert_vae", "MAR/LDM KL-VAE checkpoint (torch or safetensors) -> our VAE dir"),
    "prepare-data": ("mmar_jax.cli.prepare_data", "encode a JSONL image manifest to cached VAE latents (ArrayRecord)"),
}


def usage() -> str:
  width = max(map(len, SUBCOMMANDS))
  lines = ["usage: mmar-jax SUBCOMMAND [--flags]  (mmar-jax SUBCOMMAND --help for its flags)", "", "subcommands:"]
  lines += [f"  {name.ljust(width)}  {about}" for name, (_, about) in SUBCOMMANDS.items()]
  return "\n".join(lines)


def _one_line(error: BaseException) -> str:
  text = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
  if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # A repr()'d message: unwrap it.
    text = text[1:-1].replace("\\n", "\n").replace("\\'", "'")
  return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def parse_flags(name: str, argv: list[str]) -> list[str]:
  """absl's parse of `argv`, with any bad flag or config override reported in one line (exit 2).

  absl's own parser (inside `app.run`) prints a usage dump or, for an ml_collections override of a
  field that does not exist, a traceback; neither names the argument at fault.
  """
  try:
    remaining = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS["config"].present:
      flags.FLAGS["config"].value.keys()  # ml_collections defers a config file's load error to first use.
    return remaining
  except flags.Error as e:
    message = _one_line(e)
  except OSError as e:  # ml_collections' failure to load the --config file.
    paths = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
    message = f"--config={paths[0] if paths else ''}: cannot load the config file ({_one_line(e).split(';')[-1].strip()})"
  except _OVERRIDE_ERRORS as e:
    missing = re.match(r"'?([^'\n]+)'?", _one_line(e))
    key = missing[1] if missing else ""
    culprit = next((a for a in argv[1:] if a.startswith("--config.") and key in re.split(r"[.=]", a[2:])), None)
    message = f"{culprit or 'a --config override'}: {_one_line(e)}" if key else _one_line(e)
    if culprit:
      message = f"{culprit.split('=')[0]}: the config has no field {key!r}" + "".join(
          f" ({m[0].lower()}{m[1:]})" for m in re.findall(r"Did you mean [^?]*\?", _one_line(e)))
  print(f"mmar-jax {name}: error: {message}", file=sys.stderr)
  sys.exit(2)


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

  app.run(run, argv=[f"mmar-jax {name}"] + argv[2:], flags_parser=lambda args: parse_flags(name, args))


if __name__ == "__main__":
  main()
