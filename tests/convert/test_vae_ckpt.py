"""VAE checkpoints: MAR's torch layout and safetensors load strictly; convert-vae writes a torch-free dir."""

from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mmar_jax.convert import vae_ckpt
from mmar_jax.models import kl_vae
from tests.models.test_tokenizers import SMALL, SMALL_SIZE, _pixels, _small_torch
from tests.views import view


@pytest.fixture(scope="module")
def mar_file(tmp_path_factory):
  """A MAR-style checkpoint ({"model": state_dict}) of the small reference VAE, and the module."""
  model = _small_torch(seed=11)
  path = tmp_path_factory.mktemp("ckpt") / "kl_small.ckpt"
  torch.save({"model": model.state_dict()}, path)
  return str(path), model


def test_mar_checkpoint_loads_and_matches_the_torch_module(mar_file):
  path, model = mar_file
  params = vae_ckpt.load(path, SMALL)
  x = _pixels(2, SMALL_SIZE, seed=12)
  z = np.random.default_rng(13).normal(size=(2, 4, 4, SMALL.z_channels)).astype(np.float32)
  with torch.no_grad():
    moments_ref = model.moments(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    decoded_ref = model.decode(torch.from_numpy(z).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  module = kl_vae.AutoencoderKL(SMALL)
  np.testing.assert_allclose(module.apply({"params": params}, x, method=module.encode), moments_ref, atol=1e-4, rtol=0)
  np.testing.assert_allclose(module.apply({"params": params}, z, method=module.decode), decoded_ref, atol=1e-4, rtol=0)
  # Every tensor of the file is one parameter: same count both ways.
  assert len(jax.tree.leaves(params)) == len(model.state_dict())


def test_safetensors_in_ldm_layout_loads_the_same_params(mar_file, tmp_path):
  path, model = mar_file
  st = tmp_path / "kl_small.safetensors"
  save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
  jax.tree.map(np.testing.assert_array_equal, vae_ckpt.load(str(st), SMALL), vae_ckpt.load(path, SMALL))


def _sd(model):
  return {k: v.numpy() for k, v in model.state_dict().items()}


def test_missing_tensor_is_named(mar_file):
  sd = _sd(mar_file[1])
  del sd["encoder.down.2.attn.1.q.weight"]
  with pytest.raises(vae_ckpt.CheckpointMismatchError, match=r"missing: encoder\.down\.2\.attn\.1\.q\.weight"):
    vae_ckpt.params_from_state_dict(sd, SMALL)


def test_misshapen_tensor_is_named_with_both_shapes(mar_file):
  sd = _sd(mar_file[1])
  sd["decoder.up.1.block.0.conv2.weight"] = np.zeros((32, 16, 3, 3), np.float32)  # Level 1 is 32 wide.
  sd["quant_conv.bias"] = np.zeros((7,), np.float32)
  with pytest.raises(vae_ckpt.CheckpointMismatchError) as e:
    vae_ckpt.params_from_state_dict(sd, SMALL)
  assert "misshapen: quant_conv.bias: file (7,), model expects (8,)" in str(e.value)
  assert "misshapen: decoder.up.1.block.0.conv2.weight: file (32, 16, 3, 3), model expects (32, 32, 3, 3)" in str(
      e.value)
  assert "missing" not in str(e.value) and "unexpected" not in str(e.value)


def test_unexpected_tensor_is_named_and_can_be_ignored_by_prefix(mar_file):
  sd = _sd(mar_file[1])
  sd["loss.discriminator.main.0.weight"] = np.zeros((4, 3, 4, 4), np.float32)
  with pytest.raises(vae_ckpt.CheckpointMismatchError, match=r"unexpected: loss\.discriminator\.main\.0\.weight"):
    vae_ckpt.params_from_state_dict(sd, SMALL)
  vae_ckpt.params_from_state_dict(sd, SMALL, ignore_prefixes=("loss.",))


def test_wrong_architecture_fails_naming_tensors(mar_file):
  # KL-16's default config against the small file: the error lists tensors, it does not crash.
  with pytest.raises(vae_ckpt.CheckpointMismatchError, match=r"missing: encoder\.down\.4\.attn\.0\.norm\.weight"):
    vae_ckpt.load(mar_file[0], view(kl_vae.VAEConfig, {"tokenizer.dtype": "float32"}))


def test_convert_vae_cli_writes_a_dir_that_loads_without_torch(mar_file, tmp_path):
  path, _ = mar_file
  out = tmp_path / "vae"
  overrides = [f"--config.tokenizer.{k}={v}" for k, v in dict(
      vae_channels=SMALL.channels, vae_channel_mult="(1,2,2)", vae_num_res_blocks=SMALL.num_res_blocks,
      vae_z_channels=SMALL.z_channels, vae_norm_groups=SMALL.norm_groups, vae_encoder_attn_levels="(2,)",
      image_size=SMALL_SIZE).items()]
  cmd = [sys.executable, "-m", "mmar_jax.cli.main", "convert-vae", f"--in={path}", f"--out={out}",
         "--config=configs/mmar_0p5b.py", *overrides]
  result = subprocess.run(cmd, capture_output=True, text=True, env={"JAX_PLATFORMS": "cpu", "PYTHONPATH": "."},
                          timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "converted" in result.stdout
  # Reading our dir imports no torch: check in a fresh interpreter.
  probe = ("import sys; from mmar_jax.convert import vae_ckpt; from mmar_jax.models import kl_vae; "
           f"SMALL = kl_vae.{SMALL!r}; p = vae_ckpt.load({str(out)!r}, SMALL); assert 'torch' not in sys.modules; print('ok')")
  result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={"JAX_PLATFORMS": "cpu", "PYTHONPATH": "."}, timeout=120)
  assert result.stdout.strip().endswith("ok"), result.stderr[-3000:]
  jax.tree.map(np.testing.assert_array_equal, vae_ckpt.load(str(out), SMALL), vae_ckpt.load(path, SMALL))
  with pytest.raises(vae_ckpt.CheckpointMismatchError, match="different VAE"):
    vae_ckpt.load(str(out), view(kl_vae.VAEConfig, {"tokenizer.dtype": "float32"}))
