"""What a workdir needs besides its checkpoints to be used elsewhere: the tokenizer's files.

At set-up (so before the first save) the files of config.data.tokenizer are copied to
`<workdir>/tokenizer/`; `checkpoint.load_params` prefers that copy to the stored path, so
generate, describe, evaluate and export work from any directory and after the workdir moves.
The demo tokenizer is built from code and has no files. The VAE's weights are large and stay
where they are: the config snapshot stores their absolute path (checkpointing.snapshot).
"""

from __future__ import annotations

import ml_collections
from etils import epath

from mmar_jax import checkpoint
from mmar_jax.data import text_tokenizer

# A Hugging Face tokenizer directory's files; tokenizer.json alone is what we read.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json")


def copy_tokenizer(config: ml_collections.ConfigDict, workdir: str) -> epath.Path | None:
  """Copies the tokenizer's files into `<workdir>/tokenizer/` unless they are there; returns the directory."""
  spec = config.data.tokenizer
  if spec == "demo":
    return None
  dest = checkpoint.path_of(workdir) / checkpoint.TOKENIZER_DIR
  if (dest / "tokenizer.json").exists():
    return dest
  source = text_tokenizer.tokenizer_file(spec)
  dest.mkdir(parents=True, exist_ok=True)
  for name in TOKENIZER_FILES:
    found = source.parent / name
    if found.is_file():
      (dest / name).write_bytes(found.read_bytes())
  # Whatever the source file's name; written aside and renamed, so a present tokenizer.json is whole.
  partial = dest / "tokenizer.json.partial"
  partial.write_bytes(source.read_bytes())
  partial.replace(dest / "tokenizer.json")
  return dest
