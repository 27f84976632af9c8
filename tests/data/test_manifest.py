"""Manifest sources round-trip a small dataset the test writes; corrupt records are skipped and counted."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
from PIL import Image

from mmar_jax import configs
from mmar_jax.data import corrupt, decode, images, pipeline, synthetic, text_tokenizer
from mmar_jax.data.manifest import ManifestSource
from tests.views import view

TOK = text_tokenizer.build_demo_tokenizer()
IMAGE = view(images.ImageConfig, {"tokenizer.image_size": 32})  # The schema's image settings at 32px.


def write_images(root, count):
  """Synthetic records saved as PNGs under root/images; returns the records."""
  (root / "images").mkdir(parents=True, exist_ok=True)
  source = synthetic.SyntheticShapesSource(synthetic.SyntheticConfig(count, 32, seed=4))
  records = [source[i] for i in range(count)]
  for i, r in enumerate(records):
    Image.fromarray(r["image"]).save(root / "images" / f"{i}.png")
  return records


def pipeline_config(manifest, *overrides):
  config = configs.load_config("configs/demo.py", ["data.source=manifest", f"data.manifest={manifest}",
                                                   "tokenizer.image_size=32", "data.packing=False",
                                                   "data.batch_size=8", *overrides])
  return pipeline.PipelineConfig.from_config(config)


def test_caption_jsonl_round_trips(tmp_path):
  records = write_images(tmp_path, 8)
  path = tmp_path / "data" / "manifest.jsonl"
  path.parent.mkdir()
  with open(path, "w") as f:
    for i, r in enumerate(records):
      f.write(json.dumps({"image": f"../images/{i}.png", "caption": r["caption"]}) + "\n")
  source = ManifestSource(str(path))
  assert len(source) == 8
  for i, r in enumerate(records):
    got = decode.decode_record(source[i], IMAGE)
    assert np.array_equal(got["image"], r["image"]) and got["caption"] == r["caption"]
  # Through the pipeline (generation only, no dropout): the caption tokens and pixels come back.
  pc = pipeline_config(path, "data.num_workers=0", "data.generation_fraction=1.0", "data.caption_dropout=0.0")
  batch = next(iter(pipeline.build_dataset(pc, TOK, process_index=0, process_count=1)))
  ids = text_tokenizer.special_ids(TOK)
  for b in range(8):
    i = batch.record_index[b, 0]
    assert np.array_equal(batch.images[b, 0], records[i]["image"])
    row = batch.input_ids[b].tolist()
    assert row[1:row.index(ids.boi)] == TOK.encode(records[i]["caption"]).ids


@pytest.mark.parametrize("layout", ["json", "jsonl"])
def test_llava_conversations_round_trip(tmp_path, layout):
  records = write_images(tmp_path, 4)
  entries = [{"id": str(i), "image": f"images/{i}.png", "conversations": [
      {"from": "human", "value": f"<image>\n{r['qa'][2][0]}"}, {"from": "gpt", "value": r["qa"][2][1]},
      {"from": "human", "value": r["qa"][0][0]}, {"from": "gpt", "value": r["qa"][0][1]}]}
      for i, r in enumerate(records)]
  path = tmp_path / f"llava.{layout}"
  # LLaVA ships a JSON array; the same entries one a line are JSONL.
  path.write_text(json.dumps(entries) if layout == "json" else "".join(json.dumps(e) + "\n" for e in entries))
  source = ManifestSource(str(path))
  for i, r in enumerate(records):
    got = decode.decode_record(source[i], IMAGE)
    assert got["qa"] == [r["qa"][2], r["qa"][0]] and got["caption"] == ""
    assert np.array_equal(got["image"], r["image"])
  # Caption-less records always become understanding sequences.
  pc = pipeline_config(path, "data.num_workers=0", "data.generation_fraction=1.0")
  batch = next(iter(pipeline.build_dataset(pc, TOK, process_index=0, process_count=1)))
  assert (batch.image_task[:, 0] == 0).all()


def _decoded(tmp_path, name, image):
  Image.fromarray(image).save(tmp_path / name)
  (tmp_path / f"{name}.jsonl").write_text(json.dumps({"image": name, "caption": "a picture"}) + "\n")
  return decode.decode_record(ManifestSource(str(tmp_path / f"{name}.jsonl"))[0], IMAGE)["image"]


def test_large_non_square_images_are_centre_cropped_exactly(tmp_path):
  """Random 32-short-side pictures in 2x2 blocks (64 x 96 and 96 x 64): the box filter halves them
  exactly, so the result must be the picture's centre 32 x 32, to the pixel."""
  rng = np.random.default_rng(0)
  for h, w in ((32, 48), (48, 32)):
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    got = _decoded(tmp_path, f"{h}x{w}.png", np.repeat(np.repeat(base, 2, axis=0), 2, axis=1))
    top, left = (h - 32) // 2, (w - 32) // 2
    np.testing.assert_array_equal(got, base[top:top + 32, left:left + 32])


def test_resized_images_keep_the_centre_third_of_a_wide_picture(tmp_path):
  """A 60 x 90 picture of three 30-px bands (black, grey, white) is resized to 32 x 48 (bicubic)
  and cropped to x in [8, 40): the crop shows 8 px of black, 16 of grey, 8 of white."""
  image = np.zeros((60, 90, 3), np.uint8)
  image[:, 30:60], image[:, 60:] = 128, 255
  got = _decoded(tmp_path, "bands.png", image).astype(int)
  assert got.shape == (32, 32, 3)
  assert np.abs(got[:, :6]).max() <= 2  # Away from the band edges (bicubic rings for ~2 px).
  assert np.abs(got[:, 10:22] - 128).max() <= 2
  assert np.abs(got[:, 26:] - 255).max() <= 2


def write_corrupt_manifest(tmp_path):
  """21 lines, 5 of them corrupt: bad bytes, a missing file, an empty caption, a non-JSON line, no image."""
  records = write_images(tmp_path, 16)
  (tmp_path / "images" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
  lines = [json.dumps({"image": f"images/{i}.png", "caption": r["caption"]}) for i, r in enumerate(records)]
  lines.insert(3, json.dumps({"image": "images/bad.png", "caption": "a red circle"}))
  lines.insert(7, json.dumps({"image": "images/missing.png", "caption": "a red circle"}))
  lines.insert(11, json.dumps({"image": "images/0.png", "caption": "  "}))
  lines.insert(15, "{not json")
  lines.insert(19, json.dumps({"caption": "no image"}))
  path = tmp_path / "m.jsonl"
  path.write_text("\n".join(lines) + "\n")
  return path, {3, 7, 11, 15, 19}


def test_corrupt_records_are_skipped_and_warned_about_and_counted_once(tmp_path, caplog):
  path, bad = write_corrupt_manifest(tmp_path)
  pc = pipeline_config(path, "data.num_workers=1", "data.max_corrupt_fraction=0.3")
  it = iter(pipeline.build_dataset(pc, TOK, process_index=0, process_count=1))
  with caplog.at_level(logging.WARNING):
    seen = np.concatenate([next(it).record_index[:, 0] for _ in range(15)])  # 120 good = 8 epochs
  it.close()
  assert not set(seen) & bad and set(seen) == set(range(21)) - bad
  counts = pipeline.corrupt_counts(it)
  # Every bad record came back each epoch; each is one bad record of the 21.
  assert counts["corrupt"] == 5 and counts["distinct"] == 21 and counts["skips"] >= 5 * 7, counts
  assert counts["reasons"] == {"entry has no 'image' path": 1, "image missing": 1, "image unreadable": 1,
                              "line is not JSON": 1, "no caption and no answer": 1}
  messages = [r.getMessage() for r in caplog.records if "skipping corrupt record" in r.getMessage()]
  assert len(messages) == 5, messages
  for index, why in ((3, "image unreadable"), (7, "No such file"), (11, "no caption"), (15, "not JSON"),
                     (19, "no 'image'")):  # Manifest records are named by file:line (1-based).
    assert sum(f"m.jsonl:{index + 1}:" in m and why in m for m in messages) == 1, (index, why, messages)


def test_too_many_corrupt_records_stop_the_run_clearly(tmp_path):
  path, _ = write_corrupt_manifest(tmp_path)
  pc = pipeline_config(path, "data.num_workers=0", "data.max_corrupt_fraction=0.2")
  it = iter(pipeline.build_dataset(pc, TOK, process_index=0, process_count=1))
  with pytest.raises(corrupt.CorruptDataError, match=r"config.data.max_corrupt_fraction=0.2") as error:
    for _ in range(30):
      next(it)
  # Fewer records than the minimum before a verdict: judged once all 21 were read, 5 of them bad
  # (the repeats of later epochs are no new evidence).
  assert re.search(r"^5 of 21 distinct records \(23.8%\) were corrupt", str(error.value)), str(error.value)
  assert re.search(r"the last was \S*m.jsonl:\d+: ", str(error.value)), str(error.value)
