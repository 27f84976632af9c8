"""The shared HF import: architecture from config.json, special-token rows at the mean, hf_vocab_size."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from mmar_jax import configs
from mmar_jax.convert import hf_import
from tests.convert.test_hf_qwen2 import VOCAB, make_hf_model
from tests.convert.test_hf_vocab import write_tokenizer


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  _, path = make_hf_model(root)
  write_tokenizer(root, VOCAB)  # Every row taken: <boi>, <eoi>, <mask> become 97, 98, 99, past the table.
  return path, str(root / "tokenizer.json")


def test_the_architecture_comes_from_config_json_and_new_rows_are_the_mean(hf):
  path, tokenizer = hf
  base = configs.base_config()  # Qwen2-0.5B's shape: every architecture field differs from the tiny model's.
  imported = hf_import.import_backbone(str(path), base, tokenizer)
  hf_config = json.loads((path / "config.json").read_text())
  model = imported.config.model
  assert (model.hidden_size, model.intermediate_size, model.num_layers, model.num_heads, model.num_kv_heads,
          model.head_dim, model.rope_theta, model.tie_word_embeddings, model.max_seq_len) == (
              hf_config["hidden_size"], hf_config["intermediate_size"], hf_config["num_hidden_layers"],
              hf_config["num_attention_heads"], hf_config["num_key_value_heads"],
              hf_config["hidden_size"] // hf_config["num_attention_heads"], 10_000.0,  # make_hf_model's rope_theta
              hf_config["tie_word_embeddings"], hf_config["max_position_embeddings"])
  assert (model.vocab_size, model.hf_vocab_size) == (128, VOCAB)  # Grown to a multiple of 128.
  assert base.model.hidden_size == 896  # The given config is left as it was.
  tensors = load_file(str(path / "model.safetensors"))
  for ours, theirs in ((imported.params["embed_tokens"], tensors["model.embed_tokens.weight"]),
                       (imported.params["lm_head"].T, tensors["lm_head.weight"])):
    assert ours.shape == (128, 64)
    np.testing.assert_array_equal(ours[:VOCAB], theirs)  # Trained rows bit-exact.
    np.testing.assert_allclose(ours[VOCAB:], np.broadcast_to(theirs.astype(np.float64).mean(0), (128 - VOCAB, 64)),
                               rtol=0, atol=1e-7)
  assert imported.lines == [f"special tokens take ids [97, 98, 99] (tokenizer {tokenizer}: 97 tokens), set to "
                            "the mean row; the table grows from 97 to 128 rows"]
  added = hf_import.model_overrides(base, imported.config)
  assert "--config.model.hidden_size=64" in added and f"--config.model.hf_vocab_size={VOCAB}" in added
  assert "--config.model.num_kv_heads=2" not in added  # Already the base's value: nothing to repeat.


def test_an_override_that_contradicts_config_json_is_named(hf):
  path, tokenizer = hf
  config = configs.with_values({"model.intermediate_size": 128})
  with pytest.raises(configs.ConfigError, match=r"config.model.intermediate_size=128 but .* has 96"):
    hf_import.import_backbone(str(path), config, tokenizer, overrides={"model.intermediate_size": 128})
  # The same value from the config file itself (not the user's override) is replaced without a word.
  assert hf_import.import_backbone(str(path), config, None).config.model.intermediate_size == 96


def test_ids_inside_the_table_take_padding_rows_at_the_mean_of_the_tokenizers_rows(hf, tmp_path):
  path, _ = hf
  write_tokenizer(tmp_path, 90)  # As Qwen2: 90 tokens, rows 90..96 padding; <boi>, <eoi>, <mask> = 90..92.
  imported = hf_import.import_backbone(str(path), configs.base_config(), str(tmp_path))
  assert (imported.config.model.vocab_size, imported.config.model.hf_vocab_size) == (VOCAB, VOCAB)
  table = load_file(str(path / "model.safetensors"))["model.embed_tokens.weight"]
  ours = imported.params["embed_tokens"]
  np.testing.assert_allclose(ours[90:93], np.broadcast_to(table[:90].astype(np.float64).mean(0), (3, 64)),
                             rtol=0, atol=1e-7)
  np.testing.assert_array_equal(np.delete(ours, [90, 91, 92], axis=0), np.delete(table, [90, 91, 92], axis=0))
  assert imported.lines[0].endswith("set to the mean row; inside its 97 rows")
