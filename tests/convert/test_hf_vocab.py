"""MMAR's special-token rows at the Hugging Face boundary: the import makes them (growing the table
only when the tokenizer's new ids fall past it), the export writes the original shape back, and
transformers reads it with the original logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, models

from mmar_jax import configs
from mmar_jax.convert import hf_qwen2
from mmar_jax.data import text_tokenizer
from mmar_jax.models import lora
from tests.convert.test_hf_qwen2 import VOCAB, _tensors, hf_logits, make_hf_model

F32 = configs.with_values({"model.dtype": "float32"})  # The parity checks compute in float32.


def write_tokenizer(directory, size):
  """A tokenizer of `size` ids, Qwen2-like: words, then its control tokens as added tokens."""
  controls = (text_tokenizer.PAD, text_tokenizer.IM_START, text_tokenizer.IM_END)
  tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(size - len(controls))}, unk_token="w0"))
  tokenizer.add_special_tokens(list(controls))
  tokenizer.save(str(directory / "tokenizer.json"))


def test_new_ids_follow_every_existing_id(tmp_path):
  write_tokenizer(tmp_path, 90)
  assert text_tokenizer.new_token_ids(str(tmp_path)) == (90, (90, 91, 92))  # <boi>, <eoi>, <mask>.
  ids = text_tokenizer.special_ids(text_tokenizer.load(str(tmp_path)))
  assert (ids.pad, ids.boi, ids.eoi, ids.mask) == (87, 90, 91, 92)


def export_and_reload(cfg, params, path, vocab_size):
  hf_qwen2.save(cfg, params, path, vocab_size=vocab_size)
  return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def batch(high, seed=0):
  ids = np.random.default_rng(seed).integers(0, high, size=(2, 10))
  return ids, np.ones_like(ids), np.broadcast_to(np.arange(10), ids.shape).copy()


@pytest.mark.parametrize("tie", [False, True])
def test_the_table_grows_for_tokens_past_it_and_exports_to_the_original(tmp_path, tie):
  model, src = make_hf_model(tmp_path, tie=tie)
  write_tokenizer(src, VOCAB)  # Every row taken: <boi>, <eoi>, <mask> become 97, 98, 99.
  size, new_ids = text_tokenizer.new_token_ids(str(src))
  cfg, params = hf_qwen2.load(src, config=F32, vocab_size=128, new_rows=new_ids, mean_rows=size)
  original = _tensors(src)
  table = original["model.embed_tokens.weight"]
  assert cfg.vocab_size == 128 and params["embed_tokens"].shape == (128, 64)
  assert params["embed_tokens"][:VOCAB].tobytes() == table.tobytes()  # Original rows bit-exact.
  np.testing.assert_allclose(params["embed_tokens"][VOCAB:], np.broadcast_to(table.mean(0), (128 - VOCAB, 64)),
                             rtol=1e-6, atol=1e-7)
  if not tie:
    head = original["lm_head.weight"]
    assert params["lm_head"].shape == (64, 128) and params["lm_head"][:, :VOCAB].tobytes() == head.T.tobytes()
    np.testing.assert_allclose(params["lm_head"][:, VOCAB:].T, np.broadcast_to(head.mean(0), (128 - VOCAB, 64)),
                               rtol=1e-6, atol=1e-7)
  reloaded = export_and_reload(cfg, params, tmp_path / "out", VOCAB)
  assert {k: v.shape for k, v in _tensors(tmp_path / "out").items()} == {k: v.shape for k, v in original.items()}
  ids, mask, positions = batch(VOCAB)
  np.testing.assert_array_equal(hf_logits(reloaded, ids, mask, positions), hf_logits(model, ids, mask, positions))


def test_tokens_that_fit_take_untrained_padding_rows_as_in_qwen2(tmp_path):
  model, src = make_hf_model(tmp_path, tie=True)
  write_tokenizer(src, 90)  # Rows 90..96 are padding, as Qwen2's 151646..151935.
  size, new_ids = text_tokenizer.new_token_ids(str(src))
  cfg, params = hf_qwen2.load(src, config=F32, new_rows=new_ids, mean_rows=size)
  table = _tensors(src)["model.embed_tokens.weight"]
  assert cfg.vocab_size == VOCAB  # Nothing grows.
  kept = np.setdiff1d(np.arange(VOCAB), new_ids)
  assert params["embed_tokens"][kept].tobytes() == table[kept].tobytes()
  np.testing.assert_allclose(params["embed_tokens"][list(new_ids)], np.broadcast_to(table[:90].mean(0), (3, 64)),
                             rtol=1e-6, atol=1e-7)
  reloaded = export_and_reload(cfg, params, tmp_path / "out", VOCAB)
  ids, mask, positions = batch(90)  # Text of the original tokenizer: same logits on its tokens.
  np.testing.assert_array_equal(hf_logits(reloaded, ids, mask, positions)[..., :90],
                                hf_logits(model, ids, mask, positions)[..., :90])


def test_the_import_never_shrinks_and_the_export_refuses_unmerged_lora(tmp_path):
  _, src = make_hf_model(tmp_path)
  with pytest.raises(hf_qwen2.HFCheckpointError, match="vocab_size=64 is smaller than the checkpoint's 97"):
    hf_qwen2.load(src, config=F32, vocab_size=64)
  cfg, params = hf_qwen2.load(src, config=F32)
  params["layers"]["self_attn"]["q_proj"]["lora_a"] = np.zeros((2, 64, 4), np.float32)
  with pytest.raises(ValueError, match=r"lora\.merge"):
    hf_qwen2.save(cfg, params, tmp_path / "out")
  assert lora.has_lora(params)
