"""The training commands end to end in real processes: init-from-hf -> train -> evaluate."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.convert.test_hf_qwen2 import VOCAB, make_hf_model
from tests.train import tiny

# Each test starts several training processes (a compile each): over a minute on 2 cores.
pytestmark = pytest.mark.slow

# The tiny HF model's architecture, as config overrides (vocab: the demo tokenizer fits in VOCAB).
HF_ARCH = ("model.hidden_size=64", "model.intermediate_size=96", "model.num_layers=2", "model.num_heads=4",
           "model.num_kv_heads=2", "model.rope_theta=10000.0", "model.tie_word_embeddings=False",
           f"model.vocab_size={VOCAB}")


def mmar_jax(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "mmar_jax.cli.main", *args], capture_output=True, text=True,
                        timeout=300)


def test_init_from_hf_then_train_then_evaluate(tmp_path):
  _, hf_dir = make_hf_model(tmp_path)
  workdir = str(tmp_path / "run")
  overrides = [f"--config.{o}" for o in tiny.OVERRIDES + HF_ARCH + ("train.num_steps=2",)]
  out = mmar_jax("init-from-hf", f"--hf-dir={hf_dir}", f"--workdir={workdir}", "--config=configs/demo.py",
                 *overrides)
  assert out.returncode == 0, out.stderr
  step, params = tiny.saved_params(workdir)
  assert step == 0
  hf = load_file(os.path.join(hf_dir, "model.safetensors"))
  np.testing.assert_array_equal(params["backbone"]["embed_tokens"], hf["model.embed_tokens.weight"])

  out = mmar_jax("train", "--config=configs/demo.py", f"--workdir={workdir}", *overrides)
  assert out.returncode == 0, out.stderr
  assert "finished at step 2" in out.stdout
  out = mmar_jax("evaluate", f"--workdir={workdir}", "--samples=4")
  assert out.returncode == 0, out.stderr
  assert "questions answered exactly" in out.stdout
  assert os.path.isfile(os.path.join(workdir, "eval", "final_step_2_unseen.png"))


def test_init_from_hf_names_an_architecture_mismatch(tmp_path):
  _, hf_dir = make_hf_model(tmp_path)
  overrides = [f"--config.{o}" for o in tiny.OVERRIDES + HF_ARCH + ("model.intermediate_size=128",)]
  out = mmar_jax("init-from-hf", f"--hf-dir={hf_dir}", f"--workdir={tmp_path / 'run'}", "--config=configs/demo.py",
                 *overrides)
  assert out.returncode == 2
  assert "config.model.intermediate_size=128" in out.stderr
