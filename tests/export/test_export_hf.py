"""export-hf of a training checkpoint with LoRA: transformers alone reproduces our text logits."""

from __future__ import annotations

import json

import numpy as np
import torch
import transformers

from mmar_jax.models import lora
from tests.export.conftest import ORIGINAL_ROWS, mmar_jax
from tests.export.text import our_text_logits, text_batch, torch_text_logits


def test_a_lora_training_checkpoint_exports_and_transformers_agrees(exported, tmp_path):
  assert lora.has_lora(exported.params["backbone"])
  # The trained LoRA update is not zero, so an export that dropped it would disagree below.
  b = exported.params["backbone"]["layers"]["self_attn"]["q_proj"]["lora_b"]
  assert np.abs(np.asarray(b)).max() > 1e-3
  out = tmp_path / "hf"
  result = mmar_jax("export-hf", f"--ckpt={exported.workdir}", f"--out={out}")
  assert f"{ORIGINAL_ROWS} table rows" in result.stdout
  assert json.loads((out / "config.json").read_text())["vocab_size"] == ORIGINAL_ROWS
  model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  ids, mask = text_batch(np.random.default_rng(0), high=ORIGINAL_ROWS)
  ours = our_text_logits(exported, ids, mask)[..., :ORIGINAL_ROWS]
  theirs = torch_text_logits(model, ids, mask)
  real = mask.astype(bool)
  np.testing.assert_allclose(theirs[real], ours[real], atol=1e-4, rtol=0)


def test_with_image_tokens_keeps_the_special_rows_and_their_tokenizer(exported, tmp_path):
  out = tmp_path / "hf"
  mmar_jax("export-hf", f"--ckpt={exported.workdir}", f"--out={out}", "--with-image-tokens", "--dtype=bfloat16")
  config = json.loads((out / "config.json").read_text())
  assert (config["vocab_size"], config["dtype"]) == (45, "bfloat16")
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert [tokenizer.convert_tokens_to_ids(t) for t in ("<boi>", "<eoi>", "<mask>")] == [42, 43, 44]
  model = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert model.dtype == torch.bfloat16
  table = model.get_input_embeddings().weight.detach().float().numpy()
  ours = np.asarray(exported.params["backbone"]["embed_tokens"][:45], np.float32)
  np.testing.assert_allclose(table, ours, rtol=2**-8, atol=0)
