"""The latent cache as a source: its record format, the start-up checks against the config, and its
rows through the grain pipeline (the manifest's tasks, moments in place of pixels, the stored flip)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import flax.serialization
import jax
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from mmar_jax import configs
from mmar_jax.convert import vae_ckpt
from mmar_jax.data import images, latent_cache, latent_source, pipeline, text_tokenizer
from mmar_jax.data.manifest import ManifestSource
from mmar_jax.models import kl_vae, tokenizers
from tests.views import view

SIZE = 16
VAE = {"tokenizer.vae_channels": 8, "tokenizer.vae_channel_mult": (1, 2), "tokenizer.vae_num_res_blocks": 1,
       "tokenizer.vae_z_channels": 4, "tokenizer.vae_norm_groups": 4, "tokenizer.vae_encoder_attn_levels": (1,),
       "tokenizer.dtype": "float32", "tokenizer.image_size": SIZE, "tokenizer.kind": "kl16",
       "tokenizer.latent_patch": 2}
NUM = 6  # Records: captions, and two LLaVA conversations.


def write_dataset(root) -> None:
  """NUM random pictures and a manifest of captions and conversations in the demo tokenizer's words."""
  os.makedirs(root / "img", exist_ok=True)
  rng = np.random.default_rng(0)
  with open(root / "manifest.jsonl", "w") as f:
    for i in range(NUM):
      Image.fromarray(rng.integers(0, 256, (SIZE + 4 * i, SIZE + 2, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
      if i in (2, 5):
        turns = [{"from": "human", "value": "<image>\nwhat colour is the shape?"}, {"from": "gpt", "value": "red"}]
        f.write(json.dumps({"image": f"img/{i}.png", "conversations": turns}) + "\n")
      else:
        f.write(json.dumps({"image": f"img/{i}.png", "caption": "a red circle on the left"}) + "\n")


def write_vae(config) -> tokenizers.KLVAE:
  """A random KL VAE of the config's architecture, saved where config.tokenizer.vae_checkpoint says."""
  tok = tokenizers.make_tokenizer(tokenizers.TokenizerConfig.from_config(config))
  vae_ckpt.save(config.tokenizer.vae_checkpoint, tok.init_params(jax.random.key(0)),
                kl_vae.VAEConfig.from_config(config))
  return tok


def make_cache(root, config) -> str:
  tok = write_vae(config)
  out = str(root / "latents")
  latent_cache.cache_latents(str(root / "manifest.jsonl"), out, tok, vae_ckpt.tokenizer_params(tok),
                             image=images.ImageConfig.from_config(config), batch_size=4, records_per_shard=4,
                             progress=False)
  return out


def data_config(root, *extra):
  overrides = {**VAE, "tokenizer.vae_checkpoint": str(root / "vae"), "data.source": "latents",
               "data.latents_dir": str(root / "latents"), "data.manifest": str(root / "manifest.jsonl"),
               "data.seq_len": 40, "data.batch_size": 4, "data.num_workers": 0, "data.packing": False,
               "data.generation_fraction": 0.5}
  return configs.with_values(dict(overrides, **dict(extra)), configs.load_config("configs/demo.py"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  root = tmp_path_factory.mktemp("cache")
  write_dataset(root)
  make_cache(root, data_config(root))
  return root


def batches(config, count, **kw):
  tok = text_tokenizer.load(config.data.tokenizer)
  it = iter(pipeline.build_dataset(pipeline.PipelineConfig.from_config(config), tok, process_index=0,
                                   process_count=1, **kw))
  return [next(it) for _ in range(count)]


def test_records_round_trip_and_a_foreign_record_fails_naming_its_file(cache, tmp_path):
  moments = np.random.default_rng(0).standard_normal((2, 2, 8)).astype(np.float32)
  data = latent_cache.write_record("a.png", "", moments, -moments, image_size=32, qa=[("what?", "red")])
  record = latent_cache.read_record(data)
  assert record["format"] == latent_cache.FORMAT and record["version"] == latent_cache.VERSION
  assert (record["key"], record["caption"], record["qa"], record["image_size"]) == ("a.png", "", [("what?", "red")], 32)
  np.testing.assert_array_equal(record["moments"], moments)
  np.testing.assert_array_equal(record["moments_flip"], -moments)
  # A cache whose shard holds the previous (flax msgpack, unversioned) records is refused at start-up.
  old = tmp_path / "old"
  shutil.copytree(cache / "latents", old)
  shard = old / latent_cache.shard_name(1, 2)
  writer = ArrayRecordWriter(str(shard), "group_size:1")
  for _ in range(2):
    writer.write(flax.serialization.msgpack_serialize({"key": "k", "caption": "c", "moments": moments,
                                                       "moments_flip": moments}))
  writer.close()
  with pytest.raises(ValueError, match=f"^{shard}: record 0: not a 'mmar-latents' version 1 record"):
    pipeline.make_source(pipeline.PipelineConfig.from_config(data_config(cache, ("data.latents_dir", str(old)))))


def test_reading_records_needs_no_flax():
  """grain's workers decode records with msgpack and numpy: the source's modules pull in no flax."""
  code = ("import sys; from mmar_jax.data import latent_source, pipeline; "
          "assert 'flax' not in sys.modules, sorted(m for m in sys.modules if m.startswith('flax'))")
  subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.parametrize("override, match", [
    (("tokenizer.image_size", 32), r"cache_info.json: the cache holds 16px images but config.tokenizer.image_size=32"),
    (("tokenizer.vae_z_channels", 8), r"vae z_channels=4 but config.tokenizer.vae_z_channels=8"),
    (("data.latents_dir", "/nonexistent"), r"config.data.latents_dir='/nonexistent' does not exist"),
    (("data.image_resize", "pad_to_square"), r"cache_info.json: the cache was made with image resize='center_crop' "
                                              r"but config.data.image_resize='pad_to_square'"),
    (("data.image_background", "black"), r"cache_info.json: the cache was made with image background='white' but "
                                         r"config.data.image_background='black'"),
])
def test_a_cache_that_does_not_fit_the_config_fails_at_start_up_by_name(cache, override, match):
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    pipeline.make_source(pipeline.PipelineConfig.from_config(data_config(cache, override)))


def test_image_settings_that_do_not_change_the_pixels_open_with_at_most_a_warning(cache, tmp_path, caplog):
  # The same colour spelled otherwise is the same background.
  pipeline.make_source(pipeline.PipelineConfig.from_config(data_config(cache, ("data.image_background", "#FFFFFF"))))
  # Another minimum only decided which records the cache holds: a warning naming the field.
  with caplog.at_level("WARNING"):
    pipeline.make_source(pipeline.PipelineConfig.from_config(data_config(cache, ("data.min_image_size", 8))))
  assert "image min_size=16 but config.data.min_image_size=8" in caplog.text
  # A cache from before the image settings were recorded opens, saying they are not checked.
  old = tmp_path / "old"
  shutil.copytree(cache / "latents", old)
  info = json.loads((old / latent_cache.INFO_FILE).read_text())
  del info["image"]
  (old / latent_cache.INFO_FILE).write_text(json.dumps(info))
  caplog.clear()
  with caplog.at_level("WARNING"):
    pipeline.make_source(pipeline.PipelineConfig.from_config(data_config(cache, ("data.latents_dir", str(old)))))
  assert "records no image settings" in caplog.text


def test_wrong_source_settings_say_what_to_do(cache):
  with pytest.raises(FileNotFoundError, match="is a directory, not a JSONL manifest; it is a latent cache: train "
                                              "from it with --config.data.source=latents"):
    ManifestSource(str(cache / "latents"))
  with pytest.raises(configs.ConfigError, match="data.latents_dir"):
    configs.validate_data(data_config(cache, ("data.latents_dir", "")))
  with pytest.raises(configs.ConfigError, match="needs config.tokenizer.kind='kl16'"):
    configs.validate_data(data_config(cache, ("tokenizer.kind", "patch")))


def test_rows_are_the_manifests_tasks_with_the_stored_moments_and_both_flips(cache):
  config = data_config(cache)
  records = [r for p in sorted((cache / "latents").glob("*.array_record")) for r in latent_cache.read_shard(str(p))]
  epochs = 8
  cached = batches(config, epochs * NUM // 4)
  on_the_fly = batches(data_config(cache, ("data.source", "manifest")), epochs * NUM // 4)
  seen = {i: set() for i in range(NUM)}
  for c, m in zip(cached, on_the_fly):
    assert c.images is None and c.image_moments.shape == (4, 1, SIZE // 2, SIZE // 2, 8)
    assert c.image_moments.dtype == np.float32
    # The same seed: the same records in the same order with the same tasks and texts.
    for key in ("input_ids", "targets", "text_loss_mask", "diffusion_loss_mask", "image_slots", "record_index"):
      np.testing.assert_array_equal(getattr(c, key), getattr(m, key), err_msg=key)
    for row, index in enumerate(c.record_index[:, 0]):
      r = records[index]
      flipped = [np.array_equal(c.image_moments[row, 0], r[k]) for k in ("moments", "moments_flip")]
      assert sum(flipped) == 1, "the row's moments are neither the image's nor its mirror's"
      seen[index].add(flipped[1])
  # Every record trained both ways over the epochs, drawn from the seed (a second pass repeats it).
  assert all(s == {False, True} for s in seen.values()), seen
  np.testing.assert_array_equal(batches(config, 3)[2].image_moments, cached[2].image_moments)
  # Conversations are understanding rows whose answer carries the loss; captions generate too.
  tok = text_tokenizer.load(config.data.tokenizer)
  red = tok.encode("red", add_special_tokens=False).ids
  rows = [(b, i) for b in cached for i in range(4) if b.record_index[i, 0] in (2, 5)]
  assert rows and all(b.image_task[i, 0] == 0 for b, i in rows)
  assert all(list(b.targets[i][b.text_loss_mask[i] > 0][:-1]) == red for b, i in rows)
  # With the flip off, every row holds the image's own moments.
  for b in batches(data_config(cache, ("data.latents_flip", False)), 3):
    for row, index in enumerate(b.record_index[:, 0]):
      np.testing.assert_array_equal(b.image_moments[row, 0], records[index]["moments"])


def test_packed_rows_carry_each_images_moments(cache):
  config = data_config(cache, ("data.packing", True), ("data.latents_flip", False), ("data.seq_len", 64))
  records = [r for p in sorted((cache / "latents").glob("*.array_record")) for r in latent_cache.read_shard(str(p))]
  packed = 0
  for b in batches(config, 4):
    assert b.image_moments.shape == (4, 3, SIZE // 2, SIZE // 2, 8)  # 64 // (16 + 4): up to 3 images a row.
    for row, slot in zip(*np.nonzero(b.image_valid)):
      np.testing.assert_array_equal(b.image_moments[row, slot], records[b.record_index[row, slot]]["moments"])
    assert not b.image_moments[~b.image_valid].any()
    packed += int((b.image_valid.sum(1) >= 2).sum())
  assert packed > 0


def test_hosts_read_disjoint_shares_of_each_epoch(cache):
  config = data_config(cache, ("data.batch_size", 2))
  tok = text_tokenizer.load(config.data.tokenizer)
  seen = []
  for host in range(2):
    it = iter(pipeline.build_dataset(pipeline.PipelineConfig.from_config(config), tok, process_index=host,
                                     process_count=2))
    seen.append([int(next(it).record_index[0, 0]) for _ in range(NUM // 2)])  # One row a host a step.
  assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(NUM)), seen
