"""The training commands end to end in real processes: init-from-hf -> train -> evaluate."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from mmar_jax import checkpoint
from mmar_jax.train import evaluation, experiment
from tests.convert.test_hf_qwen2 import VOCAB, make_hf_model
from tests.convert.test_hf_vocab import write_tokenizer
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
  check_evaluate_output(workdir, 2, 4, out.stdout)


def check_evaluate_output(workdir: str, step: int, samples: int, stdout: str) -> None:
  """evaluate's JSON is an in-process evaluation of the same checkpoint (each set), its tables print
  the JSON's numbers, and each set's PNG holds its generated images (4x, nearest, a 4-column grid)."""
  path = os.path.join(workdir, "eval", f"final_step_{step}")
  with open(f"{path}.json", encoding="utf-8") as f:
    written = json.load(f)
  params, config, loaded_step = checkpoint.load_params(workdir, None)
  assert loaded_step == step
  exp = experiment.build(config)
  sets = evaluation.evaluation_sets(config, samples)
  references = evaluation.evaluation_sets(config, samples, draw=1)
  assert set(written) == set(sets) == {"unseen", "seen"}
  for name, records in sets.items():
    result = evaluation.evaluate(exp, params, records, seed=0, reference_records=references[name])
    assert written[name] == json.loads(json.dumps({k: v for k, v in result.items() if k != "images"})), name
    s = written[name]["summary"]
    table = stdout[stdout.index(evaluation.TITLES[name]):]  # This set's table and what follows it.
    for key in ("colour", "shape", "position", "size", "all", "count"):
      printed = re.search(rf"^  {key} +([\d.]+)% +([\d.]+)%$", table, re.M)
      assert printed, (name, key, stdout)
      assert [float(v) for v in printed.groups()] == [round(100 * s[f"generation/{key}"], 1),
                                                       round(100 * s[f"generation/{key}_chance"], 1)], (name, key)
    printed = re.search(r"^  frechet distance \(judge features\) +([\d.]+) +([\d.]+)$", table, re.M)
    assert [float(v) for v in printed.groups()] == [round(s["generation/frechet"], 3),
                                                     round(s["generation/frechet_reference"], 3)], name
    printed = re.search(r"^questions answered exactly +([\d.]+)% +([\d.]+)%$", table, re.M)
    assert [float(v) for v in printed.groups()] == [round(100 * s["understanding/accuracy"], 1),
                                                     round(100 * s["understanding/majority_baseline"], 1)], name
    grid = np.asarray(Image.open(f"{path}_{name}.png").convert("RGB"))
    size = 4 * result["images"].shape[1]
    cell_w = max(size, 160)
    for i, image in enumerate(result["images"][:16]):
      x, y = (i % 4) * cell_w + (cell_w - size) // 2, (i // 4) * (size + 40)
      np.testing.assert_array_equal(grid[y:y + size, x:x + size], image.repeat(4, 0).repeat(4, 1))


def test_init_from_hf_names_an_architecture_mismatch(tmp_path):
  _, hf_dir = make_hf_model(tmp_path)
  overrides = [f"--config.{o}" for o in tiny.OVERRIDES + HF_ARCH + ("model.intermediate_size=128",)]
  out = mmar_jax("init-from-hf", f"--hf-dir={hf_dir}", f"--workdir={tmp_path / 'run'}", "--config=configs/demo.py",
                 *overrides)
  assert out.returncode == 2
  assert "config.model.intermediate_size=128" in out.stderr


def test_init_from_hf_reads_the_directory_as_import_hf_does_and_train_runs_with_the_printed_flags(tmp_path):
  """The LoRA preset (mmar_0p5b: LoRA on, rank shrunk to fit the tiny model; its architecture from
  config.json, none given)."""
  _, hf_dir = make_hf_model(tmp_path)
  write_tokenizer(tmp_path, VOCAB)  # <boi>, <eoi>, <mask> take 97..99, past the table: it grows to 128.
  tok = str(tmp_path / "tokenizer.json")
  arch = {"model.num_layers", "model.hidden_size", "model.intermediate_size", "model.num_heads", "model.num_kv_heads"}
  small = [f"--config.{o}" for o in tiny.OVERRIDES + ("train.num_steps=2", "tokenizer.kind=patch",
                                                     "tokenizer.dtype=float32", "model.lora.rank=8",
                                                     f"data.tokenizer={tok}")
           if o.split("=")[0] not in arch]
  ckpt, workdir = str(tmp_path / "ckpt"), str(tmp_path / "run")
  out = mmar_jax("import-hf", f"--hf-dir={hf_dir}", f"--out={ckpt}", f"--tokenizer={tok}",
                 "--config=configs/mmar_0p5b.py", *small)
  assert out.returncode == 0, out.stderr
  out = mmar_jax("init-from-hf", f"--hf-dir={hf_dir}", f"--workdir={workdir}", "--config=configs/mmar_0p5b.py",
                 *small)
  assert out.returncode == 0, out.stderr
  assert "special tokens take ids [97, 98, 99]" in out.stdout and "hf_vocab_size 97" in out.stdout
  imported, initialised = checkpoint.load_config(ckpt).model, checkpoint.load_config(workdir).model
  assert initialised.to_dict() == imported.to_dict()  # The LoRA preset's rank included.
  assert (initialised.vocab_size, initialised.hf_vocab_size, initialised.lora.rank) == (128, VOCAB, 8)
  step, params = tiny.saved_params(workdir)
  reference = checkpoint.load_params(ckpt, need_vae=False)[0]["backbone"]
  assert step == 0
  for name in ("embed_tokens", "lm_head"):
    np.testing.assert_array_equal(params["backbone"][name], reference[name])

  # The printed command, run as printed: train needs nothing else from the user. Without its
  # architecture flags, train names them (rather than calling every checkpoint unreadable).
  command = shlex.split(out.stdout.strip().splitlines()[-1])
  bare = mmar_jax("train", "--config=configs/mmar_0p5b.py", f"--workdir={workdir}", *small)
  assert bare.returncode == 2 and "Traceback" not in bare.stderr, bare.stderr
  assert "holds a model other than --config's" in bare.stderr
  assert "to resume it pass --config.model.vocab_size=128 --config.model.hidden_size=64" in bare.stderr
  assert command[:2] == ["mmar-jax", "train"]
  out = mmar_jax(*command[1:])
  assert out.returncode == 0, out.stderr
  assert "resumed from step 0" in out.stdout and "finished at step 2" in out.stdout
  _, trained = tiny.saved_params(workdir)
  # LoRA trains, the base stays: the HF rows bit-exact, the factors moved.
  np.testing.assert_array_equal(trained["backbone"]["embed_tokens"][:VOCAB], reference["embed_tokens"][:VOCAB])
  q_proj = trained["backbone"]["layers"]["self_attn"]["q_proj"]
  np.testing.assert_array_equal(q_proj["kernel"], reference["layers"]["self_attn"]["q_proj"]["kernel"])
  assert np.abs(q_proj["lora_b"]).max() > 0  # Zero at init.
