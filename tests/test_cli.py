"""The `mmar-jax` command as a user runs it: real processes, real files."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open

from mmar_jax import checkpoint
from tests.convert.test_hf_qwen2 import VOCAB, make_hf_model
from tests.convert.test_hf_vocab import write_tokenizer


def mmar_jax(*args, check=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu")  # With the tests' XLA_FLAGS (tests/conftest.py).
  result = subprocess.run([sys.executable, "-m", "mmar_jax.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=300)
  if check and result.returncode != 0:
    raise AssertionError(f"mmar-jax {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
  return result


def test_help_lists_subcommands():
  out = mmar_jax("--help").stdout
  for name in ("info", "import-hf", "export-hf"):
    assert name in out


def test_import_then_export_through_the_cli(tmp_path):
  _, hf_dir = make_hf_model(tmp_path, tie=False)
  write_tokenizer(hf_dir, VOCAB)  # Every row taken: the special tokens' rows grow the table.
  mmar_jax("import-hf", f"--hf-dir={hf_dir}", f"--out={tmp_path / 'ckpt'}", "--config=configs/demo.py")
  config = checkpoint.load_config(tmp_path / "ckpt")
  assert config.name == "demo" and config.model.hidden_size == 64 and not config.model.tie_word_embeddings
  assert (config.model.vocab_size, config.model.hf_vocab_size) == (128, VOCAB)
  params, _ = checkpoint.load(tmp_path / "ckpt")
  assert params["backbone"]["embed_tokens"].shape == (128, 64)
  mmar_jax("export-hf", f"--ckpt={tmp_path / 'ckpt'}", f"--out={tmp_path / 'back'}")
  with safe_open(hf_dir / "model.safetensors", "numpy") as a, safe_open(tmp_path / "back" / "model.safetensors",
                                                                        "numpy") as b:
    assert sorted(a.keys()) == sorted(b.keys())
    for key in a.keys():
      np.testing.assert_array_equal(a.get_tensor(key), b.get_tensor(key))


def test_import_of_a_non_qwen2_directory_names_the_field_and_writes_nothing(tmp_path):
  _, hf_dir = make_hf_model(tmp_path)
  (hf_dir / "config.json").write_text((hf_dir / "config.json").read_text().replace('"qwen2"', '"gpt2"'))
  result = mmar_jax("import-hf", f"--hf-dir={hf_dir}", f"--out={tmp_path / 'ckpt'}", check=False)
  assert result.returncode != 0 and "model_type='gpt2'" in result.stderr
  assert not (tmp_path / "ckpt").exists()


def test_info_prints_the_demo_configs_figures():
  out = mmar_jax("info", "--config=configs/demo.py", "--config.model.num_layers=2").stdout
  # The demo backbone's parameters, counted by hand: width 128, 4 heads of 32 (2 KV heads), MLP 384,
  # vocab 512, tied embeddings. A layer: q (with bias), k and v (64 wide, with bias), o, three MLP
  # matrices, two RMSNorm scales.
  d, kv, mlp, vocab = 128, 2 * 32, 384, 512
  layer = (d * d + d) + 2 * (d * kv + kv) + d * d + 3 * d * mlp + 2 * d
  counts = {name: int(n.replace(",", "")) for name, n in re.findall(r"^  (\w+) +([\d,]+)", out, re.M)}
  assert counts == {"embed_tokens": vocab * d, "layers": 2 * layer, "norm": d, "total": vocab * d + 2 * layer + d}
  assert "config demo: 2 layers, hidden 128, heads 4/2 (q/kv), vocab 512" in out
  assert "mesh {'data': 8, 'fsdp': 1, 'tensor': 1} over 8 cpu device(s)" in out  # The tests' 8 devices.
  forward = re.search(r"forward \(8, 64\) -> logits \(8, 64, 512\) in ([\d.]+) ms \(([\d,]+) tokens/s\); untrained "
                      r"next-token loss ([\d.]+) \(uniform: ([\d.]+)\)", out)
  assert forward, out
  ms, tokens_per_s, loss, uniform = (float(g.replace(",", "")) for g in forward.groups())
  assert tokens_per_s == pytest.approx(8 * 64 / (ms / 1e3), rel=max(0.01, 0.06 / ms))  # ms is printed to 0.1.
  assert uniform == pytest.approx(math.log(512), abs=1e-3)
  # At init (std 0.02) the logits spread by ~0.02 x sqrt(128) = 0.23, which costs ~0.03 nats over uniform.
  assert 0 < loss - uniform < 0.1


def test_export_of_a_missing_checkpoint_names_it(tmp_path):
  result = mmar_jax("export-hf", f"--ckpt={tmp_path / 'nope'}", f"--out={tmp_path / 'x'}", check=False)
  assert result.returncode != 0 and "nope does not exist" in result.stderr


@pytest.mark.parametrize("bad", ["--config.model.num_kv_heads=3"])
def test_info_rejects_a_bad_override(bad):
  result = mmar_jax("info", "--config=configs/demo.py", bad, check=False)
  assert result.returncode != 0 and "num_kv_heads=3" in result.stderr
