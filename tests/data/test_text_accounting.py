"""Faithful text: a caption or answer too long for its room is cut but counted, unknown words are counted,
both are reported once and summed in the end-of-run summary and TensorBoard, across a resume."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
from PIL import Image

import grain
from mmar_jax.data import sequences, text_accounting, text_tokenizer
from mmar_jax.train import loop
from tests.data.test_manifest import write_images
from tests.train import tiny
from tests.train.test_local_launch import tensorboard_scalars
from tests.views import view

TOK = text_tokenizer.build_demo_tokenizer()
IDS = text_tokenizer.special_ids(TOK)
IMAGE = np.zeros((32, 32, 3), np.uint8)
LONG = " ".join(["a red circle"] * 20)  # 60 tokens


def seq_config(**fields):
  base = view(sequences.SequenceConfig, {"data.seq_len": 40, "data.generation_fraction": 1.0,
                                         "data.caption_dropout": 0.0, "data.caption_loss": True,
                                         "data.packing": False}, image_tokens=16)
  return dataclasses.replace(base, **fields)  # room: 40 - 16 - 3 = 21 text tokens


def record(caption="", qa=()):
  return {"image": IMAGE, "caption": caption, "qa": list(qa), "source": "m.jsonl", "index": 6, "line": 7}


def build(rec, **fields):
  return sequences.build_sequence(rec, np.random.default_rng(0), seq_config(**fields), TOK, IDS)


def test_a_caption_too_long_is_cut_to_its_first_tokens_and_noted():
  seq = build(record(LONG))
  note = seq[text_accounting.NOTE]
  ids = TOK.encode(LONG, add_special_tokens=False).ids
  assert note == {"where": "m.jsonl:7", "text": "caption", "tokens": 60, "room": 21, "cut": 60 - 21, "unknown": [],
                  "upscaled": False}
  assert seq["input_ids"][1:22].tolist() == ids[:21] and len(seq["input_ids"]) == 40
  fits = build(record("a red circle"))[text_accounting.NOTE]
  assert fits["cut"] == 0 and fits["tokens"] == 3
  # Understood instead, the caption is the answer: cut and noted alike.
  assert build(record(LONG), generation_fraction=0.0)[text_accounting.NOTE]["cut"] == 60 - 21


def test_an_answer_too_long_is_noted_with_its_question():
  seq = build(record(qa=[("what colour is the circle ?", LONG)]), generation_fraction=0.0)
  note = seq[text_accounting.NOTE]
  assert note["text"] == "question and answer" and note["tokens"] == 6 + 60 and note["cut"] == 6 + 60 - 21
  answer = seq["targets"][seq["text_loss_mask"] > 0].tolist()
  assert answer == TOK.encode(LONG, add_special_tokens=False).ids[:21 - 6] + [IDS.im_end]  # Its first tokens.
  short = build(record(qa=[("what colour ?", "red")]), generation_fraction=0.0)[text_accounting.NOTE]
  assert short["cut"] == 0 and short["tokens"] == 4


def test_unknown_words_are_the_same_words_inference_refuses():
  seq = build(record("a zebra circle near a red square"))
  assert seq[text_accounting.NOTE]["unknown"] == ["zebra", "near"]
  assert TOK.token_to_id(text_tokenizer.UNK) in seq["input_ids"].tolist()  # Trained as [UNK] ...
  with pytest.raises(ValueError, match=r"prompt: the tokenizer does not know the words \['zebra', 'near'\]"):
    text_tokenizer.encode_words(TOK, "a zebra circle near a red square", "prompt")  # ... refused when asked.
  qa = build(record(qa=[("what zebra ?", "red"), ("how many ?", "one")]), generation_fraction=0.0, qa_turns=2)
  assert qa[text_accounting.NOTE]["unknown"] == ["zebra"]
  assert build(record("a red circle"))[text_accounting.NOTE]["unknown"] == []


def notes_dataset(notes):
  return grain.MapDataset.source([{"x": i, text_accounting.NOTE: n} for i, n in enumerate(notes)]).to_iter_dataset()


def test_the_stage_counts_logs_once_and_keeps_its_counts_across_a_resume(caplog):
  cut = text_accounting.note({"source": "m.jsonl", "line": 3}, "caption", 30, 21, [])
  unknown = text_accounting.note({"source": "s", "index": 4}, "caption", 3, 21, ["zebra"])
  fine = text_accounting.note({"source": "s", "index": 5}, "caption", 3, 21, [])
  notes = [fine, cut, unknown, cut, fine, cut, unknown, fine]
  it = iter(text_accounting.TextAccountingIterDataset(notes_dataset(notes)))
  with caplog.at_level(logging.WARNING):
    first = [next(it) for _ in range(4)]
    state = it.get_state()
    resumed = iter(text_accounting.TextAccountingIterDataset(notes_dataset(notes)))
    resumed.set_state(state)
    rest = [next(resumed) for _ in range(4)]
  assert [e["x"] for e in first + rest] == list(range(8)) and all(text_accounting.NOTE not in e for e in rest)
  assert text_accounting.counts_of(resumed) == {"records": 8, "cut": 3, "cut_tokens": 27, "unknown": 2,
                                                "upscaled": 0}
  messages = [r.getMessage() for r in caplog.records]
  assert [m for m in messages if "cut" in m] == [
      "caption of m.jsonl:3 has 30 tokens, room for 21: cut to the first 21 (as LLaVA and MAR do); further cuts "
      "are counted, see the end-of-run summary"]
  assert len([m for m in messages if "s[4]" in m and "['zebra']" in m]) == 1
  lines = text_accounting.summary_lines(text_accounting.counts_of(resumed), 21)
  assert lines[0].startswith("text: 3 of 8 records read (37.5%) had a caption or answer longer than its room of 21")
  assert lines[1] == "text: 2 of 8 records read (25.0%) held words the tokenizer does not know, trained as [UNK]"
  assert text_accounting.scalars(text_accounting.counts_of(resumed)) == {"data/truncated_fraction": 3 / 8,
                                                                         "data/unknown_words_fraction": 2 / 8,
                                                                         "data/upscaled_fraction": 0.0}


def test_a_checkpoint_from_before_the_stage_restores_with_counts_from_zero():
  it = iter(notes_dataset([text_accounting.note({"source": "s", "index": 0}, "caption", 3, 21, [])] * 4))
  next(it)
  staged = iter(text_accounting.TextAccountingIterDataset(notes_dataset(
      [text_accounting.note({"source": "s", "index": i}, "caption", 3, 21, []) for i in range(4)])))
  staged.set_state(it.get_state())
  assert next(staged)["x"] == 1 and text_accounting.counts_of(staged)["records"] == 1


def test_a_run_reports_a_cut_caption_once_and_its_share_at_the_end(tmp_path, caplog, capsys):
  write_images(tmp_path, 8)
  # The last 4 records' image is 20x20, below the tiny config's 24: upscaled, and counted so.
  Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(tmp_path / "images" / "small.png")
  captions = [LONG] * 8 + ["a red zebra"] * 4 + ["a red circle"] * 4
  manifest = tmp_path / "m.jsonl"
  manifest.write_text("".join(json.dumps({"image": f"images/{i % 8}.png" if i < 12 else "images/small.png",
                                          "caption": c}) + "\n" for i, c in enumerate(captions)))
  config = tiny.config("data.source=manifest", f"data.manifest={manifest}", "data.caption_dropout=0.0",
                       "train.num_steps=2", "train.log_every=1")
  workdir = str(tmp_path / "run")
  with caplog.at_level(logging.WARNING):
    loop.train(config, workdir, max_steps=1)  # Stops and saves at step 1; the second run resumes it.
    loop.train(config, workdir)
  cuts = [r.getMessage() for r in caplog.records if "room for 28: cut" in r.getMessage()]
  assert len(cuts) == 1 and cuts[0].startswith(f"caption of {manifest}:") and "has 60 tokens" in cuts[0], cuts
  assert len([r for r in caplog.records if "does not know ['zebra']" in r.getMessage()]) == 1
  out = capsys.readouterr().out
  assert "text: 8 of 16 records read (50.0%) had a caption or answer longer than its room of 28 tokens" in out
  assert "text: 4 of 16 records read (25.0%) held words the tokenizer does not know" in out
  assert "images: 4 of 16 records read (25.0%) were smaller than the target size and upscaled" in out
  _, scalars = tensorboard_scalars(workdir)
  assert scalars["data/truncated_fraction"][2] == 0.5 and scalars["data/unknown_words_fraction"][2] == 0.25
  assert scalars["data/upscaled_fraction"][2] == 0.25


def test_prepare_data_counts_the_manifest_texts_that_will_not_fit(tmp_path):
  conversation = [{"from": "human", "value": "<image>\nwhat colour ?"}, {"from": "gpt", "value": LONG}]
  entries = [{"image": "0.png", "caption": LONG}, {"image": "1.png", "conversations": conversation},
             {"image": "2.png", "caption": "a red zebra"}, {"image": "3.png", "caption": "a red circle"}, {}]
  manifest = tmp_path / "m.jsonl"
  manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
  assert text_accounting.manifest_lines(str(manifest), TOK, 21) == [
      "text: 2 of the manifest's 4 records (50.0%) have a caption or answer longer than the room of 21 tokens that "
      "--config's data.seq_len leaves beside the image tokens; training will cut them to their first tokens",
      "text: 1 of the manifest's 4 records (25.0%) hold words the text tokenizer (config.data.tokenizer) does not know"]
  assert text_accounting.manifest_lines(str(manifest), TOK, 60 + 3)[0].startswith("text: 0 of the manifest's 4")
