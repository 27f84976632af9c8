"""A user's own photographs end to end, in real processes in the user's order: convert-vae (a KL-16
in MAR's torch layout) -> prepare-data (with bad records of every kind mixed in) -> init-from-hf from a tiny random Qwen2 -> train from the cache on a
(fsdp 2, tensor 2) mesh with a validation split -> generate -> describe.

The photographs are scikit-image's, the files inside its pinned wheel (nothing is downloaded)."""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, pre_tokenizers

from tests.convert.test_hf_qwen2 import VOCAB, make_hf_model
from tests.convert.test_hf_vocab import write_tokenizer
from mmar_torch import vae as torch_vae
from tests.data import test_latent_source as data
from tests.models.test_tokenizers import randomize_
from tests.train import tiny
from tests.train.test_local_launch import tensorboard_scalars
from tests.train.test_train_cli import HF_ARCH

pytestmark = pytest.mark.slow  # Five commands, a compile each: about a minute on 2 cores.

KL16 = tuple(f"{k}={v}" for k, v in data.VAE.items()) + ("data.min_image_size=8", "model.dtype=float32",
                                                         "head.dtype=float32")
PHOTOS = importlib.resources.files("skimage") / "data"
CAPTION = "w3 w4 w5 w6"  # The tiny tokenizer's words (tests/convert/test_hf_vocab.py).


def mmar_jax(*args: str) -> str:
  """`mmar-jax ARGS` in a child process: its output (stdout then stderr); it must exit 0 with no traceback."""
  out = subprocess.run([sys.executable, "-m", "mmar_jax.cli.main", *args], capture_output=True, text=True,
                       timeout=400, env=dict(os.environ, PYTHONUNBUFFERED="1"))
  text = out.stdout + out.stderr
  assert out.returncode == 0, f"mmar-jax {args[0]} exited {out.returncode}:\n{text[-4000:]}"
  assert "Traceback" not in text, text
  return text


def photo(name: str) -> Image.Image:
  with importlib.resources.as_file(PHOTOS / name) as path:
    image = Image.open(path)
    image.load()
  return image


def write_photos(root) -> None:
  """Eleven usable photographs in the modes a folder holds, 14 good records, seven bad ones, the manifest."""
  img = root / "img"
  img.mkdir()
  photo("astronaut.png").save(img / "astronaut.png")
  photo("rocket.jpg").save(img / "rocket.jpg")
  photo("chelsea.png").save(img / "chelsea.png")
  photo("coffee.png").convert("RGB").save(img / "coffee.jpg", quality=90)
  photo("chelsea.png").convert("L").save(img / "grey.png")
  rgba = photo("motorcycle_left.png").convert("RGBA")
  rgba.putalpha(128)
  rgba.save(img / "rgba.png")
  photo("retina.jpg").convert("P", palette=Image.Palette.ADAPTIVE).save(img / "palette.png")
  photo("hubble_deep_field.jpg").convert("CMYK").save(img / "cmyk.jpg")
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotated 90 degrees.
  photo("chelsea.png").save(img / "exif.jpg", exif=exif)
  photo("astronaut.png").resize((12, 12)).save(img / "small.png")  # Below 16, above data.min_image_size.
  photo("rocket.jpg").crop((0, 0, 400, 40)).save(img / "wide.jpg")  # 10:1.
  photo("astronaut.png").resize((6, 6)).save(img / "tiny.png")  # Below data.min_image_size: skipped.
  (img / "truncated.jpg").write_bytes((img / "rocket.jpg").read_bytes()[:2000])
  good = ["astronaut.png", "rocket.jpg", "coffee.jpg", "grey.png", "rgba.png", "palette.png", "cmyk.jpg", "exif.jpg",
          "small.png", "wide.jpg"]
  turns = [{"from": "human", "value": "<image>\nw7 w8"}, {"from": "gpt", "value": "w9"}]
  lines = [json.dumps({"image": f"img/{n}", "caption": CAPTION}) for n in good]
  lines += [json.dumps({"image": f"img/{n}", "conversations": turns}) for n in ("astronaut.png", "rocket.jpg")]
  lines += [json.dumps({"image": "img/coffee.jpg", "caption": " ".join([CAPTION] * 60)}),  # Cut, still trains.
            json.dumps({"image": "img/chelsea.png", "caption": "a cat"}),  # Unknown words: counted, trains.
            json.dumps({"image": "img/missing.jpg", "caption": CAPTION}),
            json.dumps({"image": "img/truncated.jpg", "caption": CAPTION}),
            json.dumps({"image": "img/tiny.png", "caption": CAPTION}),
            json.dumps({"caption": CAPTION}),
            json.dumps({"image": "img/rocket.jpg"}),
            '{"image": "img/rocket.jpg", "caption": ',
            ]
  with open(root / "manifest.jsonl", "wb") as f:
    f.write("\n".join(lines).encode() + b"\n")
    f.write(b'{"image": "img/rocket.jpg", "caption": "caf\xe9"}\n')  # Latin-1, not UTF-8.


def test_own_photographs_from_a_manifest_to_generated_and_described_images(tmp_path):
  write_photos(tmp_path)
  _, hf_dir = make_hf_model(tmp_path)
  # The model's own tokenizer; <boi>, <eoi>, <mask> grow its table to 128, which tensor=2 splits. Split
  # on spaces, so that a long caption is many (unknown) words and so cut.
  write_tokenizer(tmp_path, VOCAB)
  words = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
  words.pre_tokenizer = pre_tokenizers.Whitespace()
  words.save(str(tmp_path / "tokenizer.json"))
  tok = f"data.tokenizer={tmp_path / 'tokenizer.json'}"
  # A random KL-16 as MAR ships one ({"model": state_dict} with MAR's keys), converted as a user does.
  arch = {k.removeprefix("tokenizer.vae_"): v for k, v in data.VAE.items() if k.startswith("tokenizer.vae_")}
  mar = torch_vae.AutoencoderKL(channels=arch["channels"], channel_mult=arch["channel_mult"],
                                num_res_blocks=arch["num_res_blocks"], z_channels=arch["z_channels"],
                                norm_groups=arch["norm_groups"], encoder_attn_levels=arch["encoder_attn_levels"])
  torch.save({"model": randomize_(mar, 5).state_dict()}, tmp_path / "kl16.ckpt")
  converted = mmar_jax("convert-vae", f"--in={tmp_path / 'kl16.ckpt'}", f"--out={tmp_path / 'vae'}",
                       "--config=configs/demo.py", *[f"--config.{k}={v}" for k, v in data.VAE.items()])
  assert "converted" in converted, converted
  vae = [f"--config.{o}" for o in KL16[:-2] + (tok, "data.seq_len=40", f"tokenizer.vae_checkpoint={tmp_path / 'vae'}")]
  prep = mmar_jax("prepare-data", "--cache-latents", f"--manifest={tmp_path / 'manifest.jsonl'}",
                  f"--out={tmp_path / 'latents'}", "--batch-size=8", "--config=configs/demo.py", *vae)
  assert re.search(r"latents: 14 records in 1 shards \(complete; 0 of them finished by an earlier run\), 7 skipped$",
                   prep, re.M), prep
  for reason in ("entry has no 'image' path", "image missing", "image too small", "image unreadable",
                 "line is not JSON", "line is not UTF-8", "no caption and no answer"):
    assert f"  skipped 1: {reason}\n" in prep, (reason, prep)
  assert "1 of the records written were upscaled (smaller than the target size)" in prep
  assert re.search(r"^text: 1 of the manifest's \d+ records \([\d.]+%\) have a caption or answer longer than the room "
                   r"of 21 tokens", prep, re.M), prep
  assert re.search(r"^text: 1 of the manifest's \d+ records \([\d.]+%\) hold words the text tokenizer", prep,
                   re.M), prep

  workdir = str(tmp_path / "run")
  overrides = [f"--config.{o}" for o in tiny.OVERRIDES + KL16 + HF_ARCH[:-1] + (
      tok, f"tokenizer.vae_checkpoint={tmp_path / 'vae'}", "data.source=latents",
      f"data.latents_dir={tmp_path / 'latents'}", "train.num_steps=4", "train.eval_every=2", "train.eval_samples=2", "data.batch_size=4",
      "data.validation_fraction=0.4", "mesh.fsdp=2", "mesh.tensor=2")]
  init = mmar_jax("init-from-hf", f"--hf-dir={hf_dir}", f"--workdir={workdir}", "--config=configs/demo.py", *overrides)
  assert "the table grows from 97 to 128 rows" in init
  # The printed command, run as printed.
  command = shlex.split([line for line in init.splitlines() if line.strip().startswith("mmar-jax train")][-1])
  train = mmar_jax(*command[1:])
  assert "mesh data=2 x fsdp=2 x tensor=2 (8 devices)" in train and "finished at step 4" in train, train
  for step in (2, 4):
    assert re.search(rf"^step {step}: validation on \d+ batches: val/ce [\d.]+, val/loss [\d.]+", train, re.M), train
  # The cache holds good records only; the text table counts the long caption and the unknown words.
  assert re.search(r"^data \(this host\):\n  records read +\d+\n  distinct records +\d+\n  bad records skipped +0$",
                   train, re.M), train
  assert re.search(r"^text: \d+ of \d+ records read \([\d.]+%\) had a caption or answer longer than its room of 21 "
                   r"tokens", train, re.M), train
  assert re.search(r"^text: \d+ of \d+ records read \([\d.]+%\) held words the tokenizer does not know", train,
                   re.M), train
  # The evaluation fits the data: held-out captions drawn beside their (VAE-decoded) images.
  assert re.search(r"^held-out records: \d+ captions drawn, \d+ questions answered", train, re.M), train
  assert "synthetic-shapes scorer is skipped" in train and "colour" not in train
  assert (tmp_path / "run" / "eval" / "step_4_held_out.png").is_file()
  _, scalars = tensorboard_scalars(workdir)
  assert set(scalars["val/loss"]) == {2, 4} and all(v > 0 for v in scalars["val/loss"].values()), scalars.keys()

  gen = mmar_jax("generate", f"--ckpt={workdir}", f"--prompt={CAPTION}", f"--out={tmp_path / 'g.png'}",
                 "--steps=3", "--sampling-steps=5", "--num-images=1", "--batch-size=1")
  assert "(1 images: 1 captions x 1, checkpoint step 4)" in gen, gen
  assert Image.open(tmp_path / "g_0.png").size == (data.SIZE, data.SIZE)
  desc = mmar_jax("describe", f"--ckpt={workdir}", f"--image={tmp_path / 'img' / 'astronaut.png'}")
  answer = [line for line in desc.splitlines() if line.strip() and not line.startswith(("describe", "W1", "I1"))]
  assert answer and re.fullmatch(r"(w\d+ ?)+", answer[-1].strip()), desc
