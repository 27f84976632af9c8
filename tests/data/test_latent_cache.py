"""Latent caching: records hold the image's and its mirror's moments; reruns resume and repeat bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from mmar_jax import configs
from mmar_jax.convert import vae_ckpt
from mmar_jax.data import images, latent_cache
from mmar_jax.models import kl_vae, tokenizers
from tests.views import view

# Two levels (/2): cheap enough for a dataset pass, with level and mid attention.
TINY = view(kl_vae.VAEConfig, {"tokenizer.vae_channels": 8, "tokenizer.vae_channel_mult": (1, 2),
                               "tokenizer.vae_num_res_blocks": 1, "tokenizer.vae_z_channels": 4,
                               "tokenizer.vae_norm_groups": 4, "tokenizer.vae_encoder_attn_levels": (1,),
                               "tokenizer.dtype": "float32"})
SIZE = 16
# (width, height, k): a random SIZE-short-side picture, each pixel a k x k block. The crop is
# visible (random pixels, wide and tall) and the expected pixels follow without resampling: k x k
# blocks halve exactly under the box filter, and a short side of SIZE is cropped, not resized.
IMAGES = [(24, 16, 1), (16, 16, 1), (16, 26, 1), (16, 32, 2), (24, 16, 4)]
IMAGE = view(images.ImageConfig, {"tokenizer.image_size": SIZE})  # The schema's image settings.


def expected_pixels(base: np.ndarray) -> np.ndarray:
  """The centre SIZE x SIZE of the SIZE-short-side picture, in [-1, 1] (written out, not load_image)."""
  top, left = (base.shape[0] - SIZE) // 2, (base.shape[1] - SIZE) // 2
  return base[top:top + SIZE, left:left + SIZE].astype(np.float32) / 127.5 - 1.0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  os.makedirs(root / "img")
  rng = np.random.default_rng(0)
  bases = []
  with open(root / "manifest.jsonl", "w") as f:
    for i, (w, h, k) in enumerate(IMAGES):
      base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
      bases.append(base)
      Image.fromarray(np.repeat(np.repeat(base, k, axis=0), k, axis=1)).save(root / "img" / f"{i}.png")
      f.write(json.dumps({"image": f"img/{i}.png", "caption": f"picture {i}"}) + "\n")
  tok = tokenizers.KLVAE(view(tokenizers.TokenizerConfig, {"tokenizer.kind": "kl16", "tokenizer.image_size": SIZE,
                                                          "tokenizer.vae_checkpoint": str(root / "vae")}, vae=TINY))
  vae_ckpt.save(str(root / "vae"), tok.init_params(jax.random.key(0)), TINY)
  return root, tok, vae_ckpt.tokenizer_params(tok), bases


def _cache(dataset, out, **kw):
  root, tok, params, _ = dataset
  mesh = jax.make_mesh((8, 1, 1), configs.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  with jax.set_mesh(mesh), nn.logical_axis_rules(configs.DEFAULT_LOGICAL_AXIS_RULES):
    return latent_cache.cache_latents(str(root / "manifest.jsonl"), str(out), tok, params, image=IMAGE,
                                      batch_size=8, records_per_shard=2, sharding=sharding, progress=False, **kw).paths


def test_records_hold_moments_of_the_image_and_its_mirror(dataset, tmp_path):
  root, tok, params, bases = dataset
  paths = _cache(dataset, tmp_path / "cache")
  assert [os.path.basename(p) for p in paths] == [latent_cache.shard_name(i, 3) for i in range(3)]
  records = [r for p in paths for r in latent_cache.read_shard(p)]
  assert [r["key"] for r in records] == [f"img/{i}.png" for i in range(len(IMAGES))]
  assert [r["caption"] for r in records] == [f"picture {i}" for i in range(len(IMAGES))]
  pixels = np.stack([expected_pixels(base) for base in bases])
  assert pixels.shape == (5, SIZE, SIZE, 3)
  expected = tok.moments(params, pixels)
  expected_flip = tok.moments(params, pixels[:, :, ::-1])
  for i, r in enumerate(records):
    assert r["moments"].dtype == np.float32 and r["moments"].shape == (SIZE // 2, SIZE // 2, 2 * TINY.z_channels)
    np.testing.assert_allclose(r["moments"], expected[i], atol=1e-5, rtol=0)
    np.testing.assert_allclose(r["moments_flip"], expected_flip[i], atol=1e-5, rtol=0)
  # The flip is a real one: the mirrored image's moments differ from the image's.
  assert np.abs(records[0]["moments"] - records[0]["moments_flip"]).max() > 1e-3
  # Cached moments give tokens of the tokenizer's shape.
  assert tok.tokens_from_moments(records[0]["moments"][None], jax.random.key(0)).shape == (1, 64, 4)


def test_rerun_skips_finished_shards_and_repeats_the_bytes(dataset, tmp_path):
  paths = _cache(dataset, tmp_path / "a")
  original = [open(p, "rb").read() for p in paths]
  # An interrupted run: shard 1 never finished (only its temporary file exists).
  os.remove(paths[1])
  with open(paths[1] + ".tmp", "wb") as f:
    f.write(b"partial")
  kept = os.stat(paths[0]).st_mtime_ns
  _cache(dataset, tmp_path / "a")
  assert os.stat(paths[0]).st_mtime_ns == kept  # Finished shard untouched.
  assert [open(p, "rb").read() for p in paths] == original
  assert not os.path.exists(paths[1] + ".tmp")
  # Other settings in the same directory are refused rather than mixed.
  with pytest.raises(ValueError, match="other settings"):
    root, tok, params, _ = dataset
    latent_cache.cache_latents(str(root / "manifest.jsonl"), str(tmp_path / "a"), tok, params, image=IMAGE,
                               batch_size=8, records_per_shard=4, progress=False)


def test_prepare_data_cli_writes_the_same_shards(dataset, tmp_path):
  root, tok, _, _ = dataset
  reference = _cache(dataset, tmp_path / "ref")
  overrides = [f"--config.tokenizer.{k}={v}" for k, v in dict(
      vae_channels=TINY.channels, vae_channel_mult="(1,2)", vae_num_res_blocks=1, vae_z_channels=TINY.z_channels,
      vae_norm_groups=TINY.norm_groups, vae_encoder_attn_levels="(1,)", image_size=SIZE, dtype="float32",
      vae_checkpoint=root / "vae").items()]
  cmd = [sys.executable, "-m", "mmar_jax.cli.main", "prepare-data", "--cache-latents",
         f"--manifest={root / 'manifest.jsonl'}", f"--out={tmp_path / 'cli'}", "--batch-size=8",
         "--records-per-shard=2", "--config=configs/mmar_0p5b.py", *overrides]
  # The tests' XLA flags (tests/conftest.py): compiled the same way, the encoder's bytes match.
  env = {"JAX_PLATFORMS": "cpu", "PYTHONPATH": ".", "XLA_FLAGS": os.environ["XLA_FLAGS"]}
  result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "3 shards" in result.stdout and "caching latents" in result.stderr  # tqdm writes to stderr.
  for ref_path in reference:
    cli_path = tmp_path / "cli" / os.path.basename(ref_path)
    assert open(cli_path, "rb").read() == open(ref_path, "rb").read()
