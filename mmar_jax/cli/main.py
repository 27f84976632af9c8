"""`mmar-jax SUBCOMMAND [flags]`: one command, one module a subcommand.

Each subcommand module defines its absl flags at import and a `main(argv)`; only the chosen
one is imported, so flags of different subcommands never collide and start-up stays fast.
absl parses the flags (grain's worker processes need parsed absl flags).
"""

from __future__ import annotations

import importlib
import sys

from absl import app

# name -> (module, one-line description shown by `mmar-jax --help`)
SUBCOMMANDS = {
    "convert-vae": ("mmar_jax.cli.convert_vae", "MAR/LDM KL-VAE checkpoint (torch or safetensors) -> our VAE dir"),
    "prepare-data": ("mmar_jax.cli.prepare_data", "encode a JSONL image manifest to cached VAE latents (ArrayRecord)"),
    "info": ("mmar_jax.cli.info", "print a config's parameter counts and run one sharded forward pass"),
    "import-hf": ("mmar_jax.cli.import_hf", "Hugging Face Qwen2 directory -> Orbax checkpoint"),
    "export-hf": ("mmar_jax.cli.export_hf", "Orbax checkpoint -> Hugging Face Qwen2 directory"),
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
  app.run(module.main, argv=[f"mmar-jax {name}"] + argv[2:])


if __name__ == "__main__":
  main()
