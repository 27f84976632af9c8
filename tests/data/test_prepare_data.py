"""prepare-data on a manifest with bad records: each skipped, named once by file:line and counted by
reason, conversations kept; interrupted runs leave no partial shard and resume."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from mmar_jax.convert import vae_ckpt
from mmar_jax.data import images, latent_cache
from mmar_jax.models import tokenizers
from tests.data.test_latent_cache import IMAGE, SIZE, TINY
from tests.views import view

CONVERSATION = [{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "red"},
                {"from": "human", "value": "And the shape?"}, {"from": "gpt", "value": "a circle"}]


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
  root = tmp_path_factory.mktemp("vae") / "kl16"
  tok = tokenizers.KLVAE(view(tokenizers.TokenizerConfig, {"tokenizer.kind": "kl16", "tokenizer.image_size": SIZE,
                                                          "tokenizer.vae_checkpoint": str(root)}, vae=TINY))
  vae_ckpt.save(str(root), tok.init_params(jax.random.key(0)), TINY)
  return tok, vae_ckpt.tokenizer_params(tok)


def _picture(path, seed: int, fmt: str = "PNG") -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, fmt)
  path.write_bytes(buffer.getvalue())
  return buffer.getvalue()


def _cli(manifest, out, vae_dir, **popen):
  overrides = [f"--config.tokenizer.{k}={v}" for k, v in dict(
      vae_channels=TINY.channels, vae_channel_mult="(1,2)", vae_num_res_blocks=1, vae_z_channels=TINY.z_channels,
      vae_norm_groups=TINY.norm_groups, vae_encoder_attn_levels="(1,)", image_size=SIZE, dtype="float32",
      vae_checkpoint=vae_dir).items()]
  cmd = [sys.executable, "-m", "mmar_jax.cli.main", "prepare-data", "--cache-latents", f"--manifest={manifest}",
         f"--out={out}", "--batch-size=8", "--records-per-shard=2", "--config=configs/mmar_0p5b.py", *overrides]
  env = {"JAX_PLATFORMS": "cpu", "PYTHONPATH": ".", "XLA_FLAGS": os.environ["XLA_FLAGS"]}
  return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **popen)


def test_every_kind_of_bad_record_is_skipped_named_once_and_counted(vae, tmp_path):
  tok, _ = vae
  os.makedirs(tmp_path / "img")
  for i in range(4):
    _picture(tmp_path / "img" / f"{i}.png", i)
  jpeg = _picture(tmp_path / "img" / "cut.jpg", 9, "JPEG")
  (tmp_path / "img" / "cut.jpg").write_bytes(jpeg[:len(jpeg) * 2 // 3])  # A real JPEG, cut mid-scan.
  lines = [json.dumps({"image": "img/0.png", "caption": "first"}).encode(),                        # 1
           json.dumps({"image": "img/1.png", "caption": "second"}).encode(),                       # 2
           b'{"image": "img/2.png", "caption": ',                                                   # 3 not JSON
           json.dumps({"image": "img/gone.png", "caption": "missing"}).encode(),                   # 4
           json.dumps({"image": "img/cut.jpg", "caption": "truncated"}).encode(),                  # 5
           b"",                                                                                     # 6 blank
           '{"image": "img/2.png", "caption": "caf\u00e9"}'.encode("latin-1"),                     # 7 not UTF-8
           json.dumps({"image": "img/2.png", "conversations": CONVERSATION}).encode(),             # 8
           json.dumps({"caption": "no image"}).encode(),                                            # 9
           json.dumps({"image": "img/3.png", "caption": "last"}).encode()]                         # 10
  manifest = tmp_path / "m.jsonl"
  manifest.write_bytes(b"\n".join(lines) + b"\n")
  proc = _cli(manifest, tmp_path / "cache", tok.config.vae_checkpoint)
  stdout, stderr = proc.communicate(timeout=180)
  assert proc.returncode == 0, stderr[-3000:]
  assert "Traceback" not in stdout + stderr
  named = {3: "line is not JSON", 4: "image missing", 5: "image unreadable: OSError: image file is truncated",
           7: "line is not UTF-8: byte 0xe9", 9: "entry has no 'image' path"}
  for line, reason in named.items():
    assert stderr.count(f"skipped {manifest}:{line}: {reason}") == 1, (line, stderr)
  assert stderr.count("skipped ") == len(named)
  assert "img/s" in stderr  # The progress bar's rate.
  assert "4 records in 5 shards (complete; 0 of them finished by an earlier run), 5 skipped" in stdout
  assert "0 of the records written were upscaled (smaller than the target size)" in stdout
  for reason in ("entry has no 'image' path", "image missing", "image unreadable", "line is not JSON",
                 "line is not UTF-8"):
    assert f"  skipped 1: {reason}\n" in stdout, reason
  # The config's text tokenizer (a Qwen2 directory) is not here: the text check says so instead of failing.
  assert "text: not checked against data.seq_len: config.data.tokenizer='Qwen2-0.5B': no tokenizer.json" in stdout
  records = [r for p in sorted((tmp_path / "cache").glob("*.array_record")) for r in latent_cache.read_shard(str(p))]
  assert [(r["key"], r["caption"]) for r in records] == [("img/0.png", "first"), ("img/1.png", "second"),
                                                          ("img/2.png", ""), ("img/3.png", "last")]
  assert [r["qa"] for r in records] == [[], [], [("What colour is it?", "red"), ("And the shape?", "a circle")], []]


def test_a_json_array_manifest_keeps_conversations_and_names_lines(vae, tmp_path):
  tok, params = vae
  os.makedirs(tmp_path / "img")
  _picture(tmp_path / "img" / "0.png", 0)
  entries = [{"image": "img/0.png", "conversations": CONVERSATION}, {"image": "img/absent.png", "caption": "x"}]
  (tmp_path / "llava.json").write_text("[\n" + ",\n".join(json.dumps(e, indent=1) for e in entries) + "\n]\n")
  summary = latent_cache.cache_latents(str(tmp_path / "llava.json"), str(tmp_path / "cache"), tok, params,
                                       image=IMAGE, batch_size=2, progress=False)
  assert (summary.written, summary.skipped, summary.stopped) == (1, {"image missing": 1}, False)
  [record] = latent_cache.read_shard(summary.paths[0])
  assert record["qa"] == [("What colour is it?", "red"), ("And the shape?", "a circle")]
  skipped = json.loads((tmp_path / "cache" / "latents-00000-of-00001.skipped.json").read_text())["skipped"]
  first_line_of_second = 2 + len(json.dumps(entries[0], indent=1).splitlines())
  assert [where for where, _ in skipped] == [f"{tmp_path / 'llava.json'}:{first_line_of_second}"]


def test_small_images_are_skipped_below_the_minimum_and_counted_when_upscaled(vae, tmp_path):
  tok, params = vae
  os.makedirs(tmp_path / "img")
  for name, (w, h) in {"big": (24, 32), "small": (12, 10), "tiny": (6, 20)}.items():
    Image.new("RGB", (w, h), "red").save(tmp_path / "img" / f"{name}.png")
  (tmp_path / "m.jsonl").write_text("".join(json.dumps({"image": f"img/{name}.png", "caption": name}) + "\n"
                                            for name in ("big", "small", "tiny", "small")))
  image = view(images.ImageConfig, {"tokenizer.image_size": SIZE, "data.min_image_size": 8})
  run = lambda: latent_cache.cache_latents(str(tmp_path / "m.jsonl"), str(tmp_path / "cache"), tok, params,
                                           image=image, batch_size=2, records_per_shard=2, progress=False)
  summary = run()
  assert (summary.written, summary.upscaled, summary.skipped) == (3, 2, {"image too small": 1})
  assert "2 of the records written were upscaled (smaller than the target size)" in summary.lines()
  skipped = json.loads((tmp_path / "cache" / "latents-00001-of-00002.skipped.json").read_text())
  assert skipped == {"written": 1, "upscaled": 1, "skipped": [[f"{tmp_path / 'm.jsonl'}:3",
                                                               "image too small: 6x20 is below "
                                                               "config.data.min_image_size=8"]]}
  info = json.loads((tmp_path / "cache" / latent_cache.INFO_FILE).read_text())
  assert info["image"] == {"resize": "center_crop", "background": "white", "min_size": 8}
  # A rerun resumes every shard and counts the same from their skip files.
  again = run()
  assert (again.resumed_shards, again.written, again.upscaled, again.skipped) == (2, 3, 2, {"image too small": 1})
  # Other image settings in the same directory are refused, as any other setting.
  with pytest.raises(ValueError, match="other settings"):
    latent_cache.cache_latents(str(tmp_path / "m.jsonl"), str(tmp_path / "cache"), tok, params,
                               image=dataclasses.replace(image, resize="pad_to_square"), batch_size=2,
                               records_per_shard=2, progress=False)


def _good_manifest(tmp_path, third: str) -> str:
  os.makedirs(tmp_path / "img", exist_ok=True)
  for i in range(3):
    _picture(tmp_path / "img" / f"{i}.png", i)
  lines = [json.dumps({"image": "img/0.png", "caption": "zero"}), "{not json",               # shard 0
           json.dumps({"image": third, "caption": "one"}), json.dumps({"image": "img/2.png", "caption": "two"})]
  (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
  return str(tmp_path / "m.jsonl")


def test_ctrl_c_leaves_no_partial_shard(vae, tmp_path):
  tok, params = vae
  manifest = _good_manifest(tmp_path, "img/1.png")
  asked = []

  def interrupt():  # Ctrl-C in the middle of shard 1 (the 3rd record).
    asked.append(1)
    if len(asked) == 3:
      assert os.path.exists(tmp_path / "cache" / "latents-00001-of-00002.array_record.tmp")
      raise KeyboardInterrupt
    return False

  with pytest.raises(KeyboardInterrupt):
    latent_cache.cache_latents(manifest, str(tmp_path / "cache"), tok, params, image=IMAGE, batch_size=2,
                               records_per_shard=2, progress=False, should_stop=interrupt)
  assert sorted(os.listdir(tmp_path / "cache")) == ["cache_info.json", "latents-00000-of-00002.array_record",
                                                    "latents-00000-of-00002.skipped.json"]


def test_sigterm_stops_cleanly_with_143_and_the_rerun_resumes(vae, tmp_path):
  tok, _ = vae
  # The third record's image is a FIFO: reading it blocks, so the signal lands mid-shard for sure.
  fifo = tmp_path / "img" / "1.png"
  manifest = _good_manifest(tmp_path, "img/1.png")
  os.remove(fifo)
  os.mkfifo(fifo)
  cache = tmp_path / "cache"
  proc = _cli(manifest, cache, tok.config.vae_checkpoint)
  deadline = time.time() + 180
  while not (cache / "latents-00000-of-00002.array_record").exists():
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.2)
  assert (cache / "latents-00001-of-00002.array_record.tmp").exists()
  proc.send_signal(signal.SIGTERM)
  time.sleep(0.5)
  writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # Unblock the reader: it gets a non-image.
  os.write(writer, b"not an image")
  os.close(writer)
  stdout, stderr = proc.communicate(timeout=60)
  assert proc.returncode == 143, stderr[-3000:]
  assert "Traceback" not in stdout + stderr and "stopped by SIGTERM; rerun the same command to resume" in stderr
  assert "stopped early" in stdout
  assert not list(cache.glob("*.tmp")) and not (cache / "latents-00001-of-00002.array_record").exists()
  kept = os.stat(cache / "latents-00000-of-00002.array_record").st_mtime_ns

  os.remove(fifo)
  _picture(fifo, 1)
  proc = _cli(manifest, cache, tok.config.vae_checkpoint)
  stdout, stderr = proc.communicate(timeout=180)
  assert proc.returncode == 0, stderr[-3000:]
  assert os.stat(cache / "latents-00000-of-00002.array_record").st_mtime_ns == kept
  # The skip in the finished shard was named by the first run and is counted, not named, now.
  assert "skipped " not in stderr
  assert "3 records in 2 shards (complete; 1 of them finished by an earlier run), 1 skipped" in stdout
  assert "  skipped 1: line is not JSON" in stdout
  records = [r for p in sorted(cache.glob("*.array_record")) for r in latent_cache.read_shard(str(p))]
  assert [r["caption"] for r in records] == ["zero", "one", "two"]
