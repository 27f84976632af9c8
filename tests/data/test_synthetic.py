"""The synthetic shapes dataset: deterministic by (seed, index), labels that match the pixels."""

from __future__ import annotations

import numpy as np
import pytest

from mmar_jax.data import synthetic, synthetic_judge


@pytest.mark.parametrize("image_size", [32, 64])
def test_judge_reads_back_every_label(image_size):
  # The judge measures pixels only; on drawn images it must agree on every attribute of every
  # shape (agreement required: 100% of 300 records), else it cannot score generated images.
  source = synthetic.SyntheticShapesSource(synthetic.SyntheticConfig(300, image_size, seed=3))
  for i in range(len(source)):
    record = source[i]
    assert record["image"].shape == (image_size, image_size, 3) and record["image"].dtype == np.uint8
    result = synthetic_judge.score(record["image"], record["labels"])
    assert result == {"colour": 1.0, "shape": 1.0, "position": 1.0, "size": 1.0, "all": 1.0,
                      "count": 1.0}, (i, record["caption"], synthetic_judge.detect(record["image"]))


def test_judge_rejects_wrong_labels():
  record = synthetic.SyntheticShapesSource(synthetic.SyntheticConfig(1, 32))[0]
  label = dict(record["labels"][0])
  label["position"] = next(p for p in synthetic.POSITIONS if p != label["position"])
  assert synthetic_judge.score(record["image"], [label])["position"] == 0.0
  blank = np.full((32, 32, 3), 40, np.uint8)
  assert synthetic_judge.score(blank, record["labels"])["colour"] == 0.0


def test_deterministic_by_seed_and_index():
  a = synthetic.SyntheticShapesSource(synthetic.SyntheticConfig(50, 32, seed=1))
  b = synthetic.SyntheticShapesSource(synthetic.SyntheticConfig(50, 32, seed=1))
  c = synthetic.SyntheticShapesSource(synthetic.SyntheticConfig(50, 32, seed=2))
  for i in (0, 7, 49, 7):  # Access order must not matter.
    assert np.array_equal(a[i]["image"], b[i]["image"]) and a[i]["caption"] == b[i]["caption"]
  assert sum(a[i]["caption"] != c[i]["caption"] for i in range(50)) > 25
  # The dataset varies along every axis it names.
  labels = [l for i in range(50) for l in a[i]["labels"]]
  for key, values in (("shape", synthetic.SHAPES), ("colour", synthetic.COLOURS), ("size", synthetic.SIZES)):
    assert {l[key] for l in labels} == set(values)
  assert {len(a[i]["labels"]) for i in range(50)} == {1, 2}


def test_questions_have_one_answer_each():
  record = synthetic.SyntheticShapesSource(synthetic.SyntheticConfig(20, 32))[11]
  labels = record["labels"]
  answers = dict(record["qa"])
  assert answers["how many shapes are there?"] == synthetic.COUNTS[len(labels)]
  assert answers["describe the image."] == record["caption"]
  for l in labels:
    assert answers[f"what colour is the {l['shape']}?"] == l["colour"]
    assert answers[f"where is the {l['colour']} {l['shape']}?"] == l["position"]
    assert answers[f"what shape is at the {l['position']}?"] == l["shape"]
  words = set(synthetic.vocabulary())
  for q, a in record["qa"]:
    assert set(q.replace("?", " ?").replace(".", " .").split()) <= words and set(a.split()) <= words
