"""Text tokenizers: the demo WordLevel tokenizer, loading a tokenizer.json, special tokens, vocab check."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from mmar_jax import configs
from mmar_jax.data import synthetic, text_tokenizer


def test_demo_tokenizer_round_trips_the_grammar(tmp_path):
  tok = text_tokenizer.build_demo_tokenizer()
  record = synthetic.SyntheticShapesSource(synthetic.SyntheticConfig(5, 32))[4]
  for text in [record["caption"]] + [q + " " + a for q, a in record["qa"]]:
    ids = tok.encode(text).ids
    assert tok.token_to_id(text_tokenizer.UNK) not in ids, text
    assert tok.decode(ids).replace(" ?", "?").replace(" .", ".") == text
  assert text_tokenizer.save(tok, str(tmp_path)) == str(tmp_path / "tokenizer.json")
  again = text_tokenizer.load(str(tmp_path))
  assert again.get_vocab(with_added_tokens=True) == tok.get_vocab(with_added_tokens=True)
  assert text_tokenizer.special_ids(again) == text_tokenizer.special_ids(tok)


def test_special_tokens_added_once_and_atomic(tmp_path):
  # A tiny Qwen2-like tokenizer.json: it already has the chat tokens, not the image ones.
  base = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
  base.pre_tokenizer = pre_tokenizers.Whitespace()
  base.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
  base.save(str(tmp_path / "tokenizer.json"))
  tok = text_tokenizer.load(str(tmp_path / "tokenizer.json"))
  assert tok.get_vocab_size(with_added_tokens=True) == 3 + 6  # Only <boi>, <eoi>, <mask> are new.
  ids = text_tokenizer.special_ids(tok)
  assert ids.pad == 3 and ids.im_start == 4 and ids.im_end == 5
  assert len({ids.boi, ids.eoi, ids.mask}) == 3 and min(ids.boi, ids.eoi, ids.mask) >= 6
  text_tokenizer.add_special_tokens(tok)  # Adding again changes nothing.
  assert tok.get_vocab_size(with_added_tokens=True) == 9
  # Special tokens stay single tokens inside text.
  assert tok.encode("hello<boi>world").ids == [1, ids.boi, 2]


def test_demo_config_vocab_covers_the_demo_tokenizer():
  config = configs.load_config("configs/demo.py")
  text_tokenizer.check_vocab_size(text_tokenizer.load(config.data.tokenizer), config.model.vocab_size)


def test_vocab_size_check_names_both_sizes(tmp_path):
  tok = text_tokenizer.build_demo_tokenizer()
  size = tok.get_vocab_size(with_added_tokens=True)
  text_tokenizer.check_vocab_size(tok, size)
  with pytest.raises(ValueError, match=rf"config.model.vocab_size={size - 1} .* {size}"):
    text_tokenizer.check_vocab_size(tok, size - 1)
  with pytest.raises(FileNotFoundError, match="config.data.tokenizer"):
    text_tokenizer.load(str(tmp_path / "nothing"))
