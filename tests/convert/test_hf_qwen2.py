"""Our backbone against transformers' Qwen2ForCausalLM on tiny random-weight models built here."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open

from mmar_jax import configs
from mmar_jax.convert import hf_qwen2
from mmar_jax.infer.generate_text import greedy_decode
from mmar_jax.models.masks import left_padded_positions
from mmar_jax.models.backbone import Backbone

F32 = configs.with_values({"model.dtype": "float32"})  # The parity checks compute in float32.

VOCAB = 97


def make_hf_model(tmp_path, *, tie=False, kv_heads=2, rope_theta=10_000.0, dtype=torch.float32, name="hf"):
  """A tiny random Qwen2, saved with transformers' own save_pretrained."""
  torch.manual_seed(0)
  config = transformers.Qwen2Config(
      vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=kv_heads, rope_theta=rope_theta,
      tie_word_embeddings=tie, max_position_embeddings=128, rms_norm_eps=1e-6)
  model = transformers.Qwen2ForCausalLM(config).eval()
  with torch.no_grad():  # HF zero-inits biases; random ones make the q/k/v bias path count.
    for p in model.parameters():
      p.normal_(0.0, 0.2)
  model = model.to(dtype)
  path = tmp_path / name
  model.save_pretrained(path)
  return model, path


def hf_logits(model, ids, mask, positions):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(positions))
  return out.logits.float().numpy()


def our_logits(cfg, params, ids, mask, positions):
  return np.asarray(Backbone(cfg).apply({"params": params}, jnp.asarray(ids), jnp.asarray(positions),
                                        segment_ids=jnp.asarray(mask, jnp.int32)).logits)


def padded_batch(rng):
  """Two rows, the second left-padded by 5."""
  ids = rng.integers(0, VOCAB, size=(2, 12))
  mask = np.ones((2, 12), np.int64)
  mask[1, :5] = 0
  return ids, mask, np.asarray(left_padded_positions(jnp.asarray(mask)))


@pytest.mark.parametrize("tie,kv_heads,rope_theta,scan", [
    (False, 2, 10_000.0, True),
    (True, 2, 10_000.0, False),
    (False, 1, 10_000.0, False),
    (True, 1, 1_000_000.0, True),
])
def test_logits_match_transformers(tmp_path, tie, kv_heads, rope_theta, scan):
  model, path = make_hf_model(tmp_path, tie=tie, kv_heads=kv_heads, rope_theta=rope_theta)
  cfg, params = hf_qwen2.load(path, config=configs.with_values({"model.dtype": "float32", "model.scan_layers": scan}))
  assert (cfg.tie_word_embeddings, cfg.num_kv_heads, cfg.rope_theta) == (tie, kv_heads, rope_theta)
  ids, mask, positions = padded_batch(np.random.default_rng(0))
  ours, theirs = our_logits(cfg, params, ids, mask, positions), hf_logits(model, ids, mask, positions)
  real = mask.astype(bool)  # Padding rows' logits are meaningless in both.
  np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=0)


def test_greedy_decoding_with_kv_cache_matches_generate(tmp_path):
  model, path = make_hf_model(tmp_path)
  cfg, params = hf_qwen2.load(path, config=F32)
  ids, mask, _ = padded_batch(np.random.default_rng(1))
  ours = greedy_decode(cfg, {"params": params}, jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=20)
  with torch.no_grad():
    theirs = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                            max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)
  np.testing.assert_array_equal(np.asarray(ours), theirs[:, ids.shape[1]:].numpy())


def _tensors(path):
  out = {}
  for file in sorted(path.glob("*.safetensors")):
    with safe_open(file, framework="numpy") as f:
      out.update({k: f.get_tensor(k) for k in f.keys()})
  return out


@pytest.mark.parametrize("tie,dtype,save_dtype", [
    (False, torch.float32, "float32"), (True, torch.float32, "float32"), (False, torch.bfloat16, "bfloat16")])
def test_import_then_export_is_bit_exact(tmp_path, tie, dtype, save_dtype):
  _, src = make_hf_model(tmp_path, tie=tie, dtype=dtype)
  cfg, params = hf_qwen2.load(src, config=F32)
  hf_qwen2.save(cfg, params, tmp_path / "out", dtype=save_dtype, max_shard_bytes=20_000)
  assert (tmp_path / "out" / hf_qwen2.SAFETENSORS_INDEX).exists(), "small max_shard_bytes must shard"
  before, after = _tensors(src), _tensors(tmp_path / "out")
  assert sorted(before) == sorted(after)
  for name in before:
    assert before[name].dtype == after[name].dtype, name
    assert before[name].tobytes() == after[name].tobytes(), name


def test_export_loads_in_transformers_and_agrees(tmp_path):
  model, src = make_hf_model(tmp_path, tie=True)
  cfg, params = hf_qwen2.load(src, config=F32)
  hf_qwen2.save(cfg, params, tmp_path / "out")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
  assert type(reloaded).__name__ == "Qwen2ForCausalLM"
  ids, mask, positions = padded_batch(np.random.default_rng(2))
  np.testing.assert_array_equal(hf_logits(reloaded, ids, mask, positions), hf_logits(model, ids, mask, positions))


def test_sharded_directories_both_ways(tmp_path):
  """A directory transformers sharded (index + model-*-of-*.safetensors) loads here; our sharded
  export loads in transformers; both give the original model's logits."""
  model, _ = make_hf_model(tmp_path)
  model.save_pretrained(tmp_path / "hf_sharded", max_shard_size="20KB")
  assert len(list((tmp_path / "hf_sharded").glob("model-*-of-*.safetensors"))) > 1
  assert (tmp_path / "hf_sharded" / hf_qwen2.SAFETENSORS_INDEX).exists()
  cfg, params = hf_qwen2.load(tmp_path / "hf_sharded", config=F32)
  ids, mask, positions = padded_batch(np.random.default_rng(3))
  ours, theirs = our_logits(cfg, params, ids, mask, positions), hf_logits(model, ids, mask, positions)
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=0)

  hf_qwen2.save(cfg, params, tmp_path / "ours_sharded", max_shard_bytes=20_000)
  assert len(list((tmp_path / "ours_sharded").glob("model-*-of-*.safetensors"))) > 1
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours_sharded", dtype=torch.float32).eval()
  np.testing.assert_array_equal(hf_logits(reloaded, ids, mask, positions), theirs)


def _rewrite_config(path, **changes):
  config = json.loads((path / "config.json").read_text())
  config.update(changes)
  (path / "config.json").write_text(json.dumps(config))


def test_other_architecture_is_refused_by_name(tmp_path):
  _, path = make_hf_model(tmp_path)
  _rewrite_config(path, model_type="llama", architectures=["LlamaForCausalLM"])
  with pytest.raises(hf_qwen2.HFCheckpointError, match="model_type='llama'"):
    hf_qwen2.load(path, config=F32)


def test_shape_mismatch_names_the_tensor(tmp_path):
  _, path = make_hf_model(tmp_path)
  _rewrite_config(path, intermediate_size=128)
  with pytest.raises(hf_qwen2.HFCheckpointError, match=r"model\.layers\.0\.mlp\.(gate|up|down)_proj\.weight has shape"):
    hf_qwen2.load(path, config=F32)


def test_missing_tensor_is_named(tmp_path):
  _, path = make_hf_model(tmp_path)
  tensors = _tensors(path)
  del tensors["model.layers.1.self_attn.k_proj.bias"]
  from safetensors.numpy import save_file
  save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(hf_qwen2.HFCheckpointError, match=r"model\.layers\.1\.self_attn\.k_proj\.bias"):
    hf_qwen2.load(path, config=F32)


def test_save_refuses_to_overwrite_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
  _, src = make_hf_model(tmp_path)
  cfg, params = hf_qwen2.load(src, config=F32)
  (tmp_path / "dest").mkdir()
  (tmp_path / "dest" / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="dest"):
    hf_qwen2.save(cfg, params, tmp_path / "dest")

  real_save_file, calls = hf_qwen2.save_file, []

  def disk_fills_on_second_shard(tensors, filename, metadata):
    calls.append(filename)
    if len(calls) == 2:
      raise OSError("No space left on device")
    real_save_file(tensors, filename, metadata=metadata)

  monkeypatch.setattr(hf_qwen2, "save_file", disk_fills_on_second_shard)
  with pytest.raises(OSError, match="No space"):
    hf_qwen2.save(cfg, params, tmp_path / "dest", overwrite=True, max_shard_bytes=20_000)
  assert len(calls) == 2
  assert (tmp_path / "dest" / "keep.txt").read_text() == "mine", "the old directory must survive"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "hf"], "no staging directory may remain"
