"""Text tokenizers (Hugging Face `tokenizers`) with MMAR's special tokens added in one place.

Real configs load the Qwen2 tokenizer from a model directory's tokenizer.json; the demo builds a
WordLevel tokenizer from the synthetic grammar's words and saves it as tokenizer.json beside the
checkpoint. Either way `add_special_tokens` is the only place the special tokens are added.
"""

from __future__ import annotations

import dataclasses
import os

from etils import epath
from tokenizers import Encoding, Tokenizer, models, pre_tokenizers

from mmar_jax.data import synthetic

# Qwen2's own control tokens (already in its tokenizer.json, so adding them is a no-op there)
# and MMAR's new ones, whose embeddings are new rows [MMAR.md, task sequences].
PAD = "<|endoftext|>"  # Qwen2 pads and ends documents with it.
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
BOI = "<boi>"
EOI = "<eoi>"
MASK = "<mask>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END, BOI, EOI, MASK)
UNK = "[UNK]"  # Demo tokenizer only: a word outside the synthetic grammar.


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """Ids of the special tokens that task sequences use."""
  pad: int
  im_start: int
  im_end: int
  boi: int
  eoi: int
  mask: int


def add_special_tokens(tokenizer: Tokenizer) -> SpecialIds:
  """Adds MMAR's special tokens (those missing) and returns their ids."""
  tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
  ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
  return SpecialIds(*ids)


def build_demo_tokenizer() -> Tokenizer:
  """A WordLevel tokenizer over the synthetic grammar's words, special tokens included."""
  vocab = {UNK: 0}
  for word in synthetic.vocabulary():
    vocab[word] = len(vocab)
  tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
  # Splits words from punctuation: "circle?" -> "circle", "?".
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  add_special_tokens(tokenizer)
  return tokenizer


def tokenizer_file(spec: str) -> epath.Path:
  """The tokenizer.json that `spec` (a model directory or the file itself, on any epath filesystem) names."""
  path = epath.Path(spec)
  path = path / "tokenizer.json" if path.is_dir() else path
  if not path.is_file():
    raise FileNotFoundError(f"config.data.tokenizer={spec!r}: no tokenizer.json at {path} (give 'demo', a "
                            "model directory with tokenizer.json, or the file itself)")
  return path


def load(spec: str) -> Tokenizer:
  """'demo', a tokenizer.json path, or a model directory holding tokenizer.json; special tokens added."""
  if spec == "demo":
    return build_demo_tokenizer()
  tokenizer = Tokenizer.from_str(tokenizer_file(spec).read_text())
  add_special_tokens(tokenizer)
  return tokenizer


def new_token_ids(spec: str) -> tuple[int, tuple[int, ...]]:
  """(the vocabulary size of `spec`'s tokenizer as shipped, the ids `add_special_tokens` gives it).

  `tokenizers` numbers added tokens after every id the tokenizer has, so for Qwen2 (151646 ids,
  its control tokens included) `<boi>`, `<eoi>`, `<mask>` become 151646..151648, inside the
  model's 151936-row table. The HF import gives exactly these rows their initial values.
  """
  tokenizer = Tokenizer.from_str(tokenizer_file(spec).read_text())
  size = tokenizer.get_vocab_size(with_added_tokens=True)
  ids = dataclasses.astuple(add_special_tokens(tokenizer))
  return size, tuple(sorted(i for i in ids if i >= size))


def save(tokenizer: Tokenizer, directory: str) -> str:
  """Writes directory/tokenizer.json (the demo's goes beside its checkpoint); returns the path."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, "tokenizer.json")
  tokenizer.save(path)
  return path


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
  """The special tokens' ids in a tokenizer that went through `add_special_tokens`."""
  ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
  missing = [t for t, i in zip(SPECIAL_TOKENS, ids) if i is None]
  if missing:
    raise ValueError(f"tokenizer lacks special tokens {missing}; load it through text_tokenizer.load")
  return SpecialIds(*ids)


def check_vocab_size(tokenizer: Tokenizer, vocab_size: int) -> None:
  """Fails unless the model's embedding table (config.model.vocab_size) covers every token id."""
  size = tokenizer.get_vocab_size(with_added_tokens=True)
  if vocab_size < size:
    raise ValueError(f"config.model.vocab_size={vocab_size} is smaller than the tokenizer's vocabulary "
                     f"size {size} (special tokens included); raise config.model.vocab_size to >= {size}")


def unknown_words(tokenizer: Tokenizer, text: str, encoding: Encoding) -> list[str]:
  """The words of `text` that its `encoding` maps to the tokenizer's unknown token (the demo's `[UNK]`).

  The one rule for words outside the vocabulary, in training and in inference alike: the words
  are the same, and neither lets them pass unnoticed. Inference refuses the prompt naming them
  (`encode_words`: the user can rephrase at once); training, which cannot ask, trains the record
  with `[UNK]` in their place and counts it (text_accounting.py). Byte-level BPE (Qwen2's) has no
  unknown token, so with it there are never any.
  """
  unk = getattr(tokenizer.model, "unk_token", None)
  unk_id = tokenizer.token_to_id(unk) if unk else None
  if unk_id is None:
    return []
  return [text[a:b] for i, (a, b) in zip(encoding.ids, encoding.offsets) if i == unk_id]


def encode_words(tokenizer: Tokenizer, text: str, where: str) -> list[int]:
  """The ids of a user's `text` (no special tokens added); fails naming `where` and the words at fault.

  At fault: words the tokenizer can only map to its unknown token (the demo's `[UNK]`; byte-level
  BPE like Qwen2's has none) and special tokens written out (`<boi>`), which only the task
  sequences may place.
  """
  encoding = tokenizer.encode(text, add_special_tokens=False)
  unknown = unknown_words(tokenizer, text, encoding)
  if unknown:
    raise ValueError(f"{where}: the tokenizer does not know the words {unknown} (it would read them as "
                     f"{tokenizer.model.unk_token})")
  special = {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}
  written = [token for i, token in zip(encoding.ids, encoding.tokens) if i in special]
  if written:
    raise ValueError(f"{where}: holds the special tokens {written}; write plain text, the command adds them")
  return encoding.ids
