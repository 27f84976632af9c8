"""Evaluation on the user's own data: held-out captions drawn beside their images, held-out
questions answered beside their answers, written where the synthetic evaluation writes."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from mmar_jax.data import holdout
from mmar_jax.train import loop
from tests.data.test_manifest import write_images
from tests.test_cli_infer import mmar_jax
from tests.train import tiny
from tests.train.test_local_launch import tensorboard_scalars

RECORDS = 64
FRACTION = 0.25


def write_manifest(root) -> list[dict]:
  """Captioned records and LLaVA conversations over 8 PNGs, alternating."""
  images = write_images(root, 8)
  entries = []
  for i in range(RECORDS):
    entry = {"image": f"images/{i % 8}.png"}
    if i % 2:
      entry["conversations"] = [{"from": "human", "value": f"<image>\nwhat colour is shape {i}?"},
                                {"from": "gpt", "value": images[i % 8]["labels"][0]["colour"]}]
    else:
      entry["caption"] = images[i % 8]["caption"]
    entries.append(entry)
  (root / "data.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
  return entries


def test_a_run_on_own_data_draws_and_answers_its_held_out_records(tmp_path, capsys):
  entries = write_manifest(tmp_path)
  workdir = tmp_path / "run"
  config = tiny.config("data.source=manifest", f"data.manifest={tmp_path / 'data.jsonl'}",
                       f"data.validation_fraction={FRACTION}", "train.eval_every=2", "train.eval_samples=4",
                       "train.num_steps=3", "tokenizer.image_size=24")
  result = loop.train(config, str(workdir), eval_fn=loop.default_eval_fn(config, str(workdir)))
  assert result.reason == "done"
  out = capsys.readouterr().out
  held = [i for i in np.flatnonzero(holdout.held_out(RECORDS, FRACTION))][:4]
  captioned = [i for i in held if "caption" in entries[i]]
  asked = [i for i in held if "conversations" in entries[i]]
  assert captioned and asked, held  # The split of 64 at 0.25 holds out both kinds among its first 4.
  for step in (2, 3):  # Every eval_every steps, and at the end of the run.
    report = json.loads((workdir / "eval" / f"step_{step}_held_out.json").read_text())
    assert report["captions"] == [entries[i]["caption"] for i in captioned]
    assert [u["question"] for u in report["understanding"]] == [
        entries[i]["conversations"][0]["value"].replace("<image>\n", "") for i in asked]
    assert [u["expected"] for u in report["understanding"]] == [entries[i]["conversations"][1]["value"] for i in asked]
  assert f"held-out records: {len(captioned)} captions drawn, {len(asked)} questions answered" in out

  # The grid pairs each held-out record's own image (left) with the generated one: the reference
  # cells are the records' pixels at 4x (24 px images; grid cells 160 px wide).
  grid = np.asarray(Image.open(workdir / "eval" / "step_3_held_out.png").convert("RGB"))
  for k, i in enumerate(captioned):
    image = np.asarray(Image.open(tmp_path / entries[i]["image"]).convert("RGB").resize((24, 24), Image.BICUBIC))
    row, col = divmod(2 * k, 4)
    cell = grid[row * (96 + 40):row * (96 + 40) + 96, col * 160 + 32:col * 160 + 32 + 96]
    expected = np.repeat(np.repeat(image, 4, 0), 4, 1)
    assert np.abs(cell.astype(int) - expected).max() <= 2, (k, i)
  _, scalars = tensorboard_scalars(str(workdir))
  assert sorted(scalars["eval/held_out/understanding/exact"]) == [2, 3]
  assert sorted(scalars["val/loss"]) == [2, 3]

  # `mmar-jax evaluate` on the run reports the same held-out records, not the shapes table.
  code, stdout, stderr = mmar_jax(capsys, "evaluate", f"--workdir={workdir}", "--samples=4")
  assert code == 0, stderr
  assert f"held-out records: {len(captioned)} captions drawn, {len(asked)} questions answered" in stdout
  assert "generated images, judged from pixels" not in stdout
  assert (workdir / "eval" / "final_step_3_held_out.png").is_file()
  final = json.loads((workdir / "eval" / "final_step_3_held_out.json").read_text())
  assert final["captions"] == report["captions"]
  assert [u["question"] for u in final["understanding"]] == [u["question"] for u in report["understanding"]]
