"""A checkpoint travels: trained on 8 devices (data 2, fsdp 2, tensor 2), then moved and opened in
a fresh one-device process from another directory by evaluate, generate, describe and export-hf.

The run's tokenizer is a tokenizer.json given by a path relative to the training's directory, and
is deleted after training: only the workdir's own copy can make the commands work. Every command
runs under the workdir audit (tests/train/test_workdir_io.py): none of them may touch the workdir
but through epath, which is what makes a gs:// workdir work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from mmar_jax.data import synthetic, text_tokenizer
from mmar_jax.models import tokenizers
from tests.train import tiny
from tests.train.test_workdir_io import audited_env

# One training process and seven others, each compiling: minutes on 2 cores.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPT = "a red circle at the left"
FAST = ("--steps=3", "--sampling-steps=5")


def generated_tokens(workdir: str) -> tuple[np.ndarray, int]:
  """The tokens a generate call on the trained checkpoint draws for PROMPT, seed 0 (as the CLI's
  first batch: fold_in(key(0), 0)), and this process's device count."""
  import jax
  from mmar_jax.cli import checkpoint_arg
  from mmar_jax.infer import generate_image
  trained = checkpoint_arg.load(workdir, None)
  exp = trained.exp
  settings = generate_image.generation_settings(exp.config, num_steps=3, num_sampling_steps=5)
  ids = text_tokenizer.encode_words(exp.text_tokenizer, PROMPT, "prompt")
  tokens = generate_image.generate(exp.model, trained.params, [ids], exp.special_ids,
                                   jax.random.fold_in(jax.random.key(0), 0), **settings)
  return np.asarray(jax.device_get(tokens)), jax.device_count()


# generated_tokens in a fresh process: argv[1] the workdir, argv[2] the .npy to write.
TOKENS_SCRIPT = """
import sys
import numpy as np
from tests.train.test_checkpoint_travel import generated_tokens
tokens, devices = generated_tokens(sys.argv[1])
np.save(sys.argv[2], tokens)
print("devices", devices)
"""


def env(devices: int, workdir) -> dict[str, str]:
  """The tests' environment, with 8 fake CPU devices or the machine's one, auditing `workdir`."""
  e = dict(audited_env(str(workdir), str(workdir.parent.parent / "audit.txt")), JAX_PLATFORMS="cpu")
  flags = [f for f in e.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  if devices > 1:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  e["XLA_FLAGS"] = " ".join(flags)
  return e


def run(args: list[str], *, cwd, devices: int, workdir) -> str:
  result = subprocess.run(args, cwd=cwd, env=env(devices, workdir), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
  return result.stdout


def mmar_jax(*args: str, cwd, devices: int, workdir) -> str:
  return run([sys.executable, "-m", "mmar_jax.cli.main", *args], cwd=cwd, devices=devices, workdir=workdir)


def test_a_run_trained_on_8_devices_opens_on_1_elsewhere_after_a_move(tmp_path):
  train_dir, elsewhere = tmp_path / "train_here", tmp_path / "elsewhere"
  train_dir.mkdir()
  elsewhere.mkdir()
  text_tokenizer.save(text_tokenizer.build_demo_tokenizer(), str(train_dir / "tok"))
  overrides = [f"--config.{o}" for o in tiny.OVERRIDES + ("train.num_steps=4", "mesh.data=2", "mesh.fsdp=2",
                                                          "mesh.tensor=2", "data.tokenizer=tok")]
  out = mmar_jax("train", f"--config={REPO}/configs/demo.py", "--workdir=run", *overrides, cwd=train_dir, devices=8,
                 workdir=train_dir / "run")
  assert "finished at step 4" in out
  assert (train_dir / "run" / "tokenizer" / "tokenizer.json").is_file()

  # The workdir moves; the tokenizer it was trained with is gone.
  workdir = tmp_path / "moved" / "run"
  workdir.parent.mkdir()
  shutil.move(str(train_dir / "run"), str(workdir))
  shutil.rmtree(train_dir)

  tokens_8, devices = generated_tokens(str(workdir))  # In this process, with the session's 8 devices.
  assert devices == 8
  tokens_1 = tmp_path / "tokens_1.npy"
  assert "devices 1" in run([sys.executable, "-c", TOKENS_SCRIPT, str(workdir), str(tokens_1)], cwd=elsewhere,
                            devices=1, workdir=workdir)
  # The same program on one device either way, only the process's device count differs: equal up
  # to float32 rounding of a few ulps (1e-4 leaves room for a reassociated sum over the width of 32).
  np.testing.assert_allclose(np.load(tokens_1), tokens_8, atol=1e-4, rtol=0)

  out = mmar_jax("generate", f"--ckpt={workdir}", f"--prompt={PROMPT}", "--num-images=1", *FAST, "--seed=0",
                 "--out=gen.png", cwd=elsewhere, devices=1, workdir=workdir)
  assert "checkpoint step 4" in out
  # The patch tokenizer is pixels: the CLI's image is the 8-device tokens rounded to uint8, within one level.
  pixels = np.asarray(tokenizers.unpatchify(tokens_8, 8, (3, 3)))[0]
  expected = np.clip(np.round((pixels.astype(np.float64) + 1.0) * 127.5), 0, 255)
  got = np.asarray(Image.open(elsewhere / "gen_0.png")).astype(np.float64)
  assert np.abs(got - expected).max() <= 1

  out = mmar_jax("evaluate", f"--workdir={workdir}", "--samples=2", cwd=elsewhere, devices=1, workdir=workdir)
  assert "evaluating step 4" in out and (workdir / "eval" / "final_step_4.json").is_file()

  cfg = synthetic.SyntheticConfig(num_records=1, image_size=24, seed=5, noisy_backgrounds=False)
  Image.fromarray(synthetic.sample(cfg, 0)["image"]).save(elsewhere / "a.png")
  out = mmar_jax("describe", f"--ckpt={workdir}/checkpoints/4", "--image=a.png", "--question=what shape is at the top?",
                 "--max-new-tokens=3", cwd=elsewhere, devices=1, workdir=workdir)
  assert len(out.splitlines()) == 1

  out = mmar_jax("export-hf", f"--ckpt={workdir}/checkpoints", "--out=hf", cwd=elsewhere, devices=1, workdir=workdir)
  assert "(step 4)" in out
  exported = load_file(str(elsewhere / "hf" / "model.safetensors"))
  assert exported["model.embed_tokens.weight"].shape[1] == 32
  # No command touched the workdir but through epath.
  assert (tmp_path / "audit.txt").read_text() == ""
