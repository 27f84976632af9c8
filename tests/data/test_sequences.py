"""Task sequences: layouts, next-token targets, loss masks, task mix, caption dropout, packed rows."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from mmar_jax import configs
from mmar_jax.data import pipeline, sequences, synthetic, text_tokenizer
from mmar_jax.models import masks
from tests.views import view

TOK = text_tokenizer.build_demo_tokenizer()
IDS = text_tokenizer.special_ids(TOK)
SOURCE = synthetic.SyntheticShapesSource(synthetic.SyntheticConfig(400, 32, seed=5))


def seq_config(**fields):
  base = view(sequences.SequenceConfig, {"data.seq_len": 64, "data.generation_fraction": 0.5, "data.caption_dropout": 0.1,
                                         "data.caption_loss": True, "data.packing": False}, image_tokens=16)
  return dataclasses.replace(base, **fields)


def decode(ids):
  return TOK.decode([int(i) for i in ids], skip_special_tokens=False)


def test_image_token_count_comes_from_the_tokenizer():
  config = configs.load_config("configs/demo.py", ["tokenizer.image_size=32"])
  assert sequences.SequenceConfig.from_config(config).image_tokens == (32 // 8) ** 2
  config = configs.load_config("configs/demo.py", ["tokenizer.image_size=32", "tokenizer.patch_size=4"])
  assert sequences.SequenceConfig.from_config(config).image_tokens == (32 // 4) ** 2


def test_generation_layout_and_masks():
  cfg = seq_config(generation_fraction=1.0, caption_dropout=0.0)
  record = SOURCE[0]
  seq = sequences.build_sequence(record, np.random.default_rng(0), cfg, TOK, IDS)
  caption = TOK.encode(record["caption"]).ids
  n = cfg.image_tokens
  expected = [IDS.im_start] + caption + [IDS.boi] + [IDS.mask] * n + [IDS.eoi]
  assert seq["input_ids"].tolist() == expected
  assert seq["targets"].tolist() == expected[1:] + [IDS.pad]
  # CE predicts the caption and <boi>; the diffusion loss covers exactly the image slots.
  masked = seq["targets"][seq["text_loss_mask"] > 0]
  assert masked.tolist() == caption + [IDS.boi]
  assert np.array_equal(seq["diffusion_loss_mask"] > 0, seq["token_type"] == sequences.IMAGE)
  assert seq["token_type"].sum() == n and seq["image_task"].tolist() == [sequences.GENERATION]
  no_ce = sequences.build_sequence(record, np.random.default_rng(0), seq_config(generation_fraction=1.0,
                                   caption_dropout=0.0, caption_loss=False), TOK, IDS)
  assert no_ce["text_loss_mask"].sum() == 0


def test_understanding_layout_and_answer_only_loss():
  cfg = seq_config(generation_fraction=0.0)
  for i in range(20):
    record = SOURCE[i]
    seq = sequences.build_sequence(record, np.random.default_rng(i), cfg, TOK, IDS)
    ids = seq["input_ids"].tolist()
    n = cfg.image_tokens
    assert ids[:n + 2] == [IDS.boi] + [IDS.mask] * n + [IDS.eoi] and ids[-1] == IDS.im_end
    text = decode(ids[n + 2:-1]).replace(" ?", "?").replace(" .", ".")
    answers = [a for q, a in record["qa"] if text == f"{q} {a}"]
    assert answers, text
    masked = seq["targets"][seq["text_loss_mask"] > 0].tolist()
    assert masked == TOK.encode(answers[0]).ids + [IDS.im_end]
    assert seq["diffusion_loss_mask"].sum() == 0 and seq["image_task"].tolist() == [sequences.UNDERSTANDING]


def turns_of(seq, n):
  """The (question, answer) texts of an understanding sequence, and the CE targets of each answer."""
  ids, targets = seq["input_ids"].tolist(), seq["targets"].tolist()
  turns, start = [], n + 2
  for end in [i for i, t in enumerate(ids) if t == IDS.im_end]:
    turns.append((decode(ids[start:end]).replace(" ?", "?").replace(" .", "."),
                  [targets[i] for i in range(start - 1, end) if seq["text_loss_mask"][i] > 0]))
    start = end + 1
  return turns


def test_multi_turn_understanding_asks_distinct_questions_with_loss_on_every_answer():
  n, seen_turns = 16, set()
  cfg = seq_config(seq_len=128, generation_fraction=0.0, qa_turns=3)
  for i in range(30):
    record = SOURCE[i]
    seq = sequences.build_sequence(record, np.random.default_rng(i), cfg, TOK, IDS)
    assert len(seq["input_ids"]) <= cfg.seq_len
    turns = turns_of(seq, n)
    seen_turns.add(len(turns))
    assert 1 <= len(turns) <= min(3, len(record["qa"]))
    by_text = {f"{q} {a}": a for q, a in record["qa"]}
    assert len({text for text, _ in turns}) == len(turns)  # Distinct pairs.
    for text, answer_targets in turns:
      assert text in by_text, text
      # CE on exactly this turn's answer and its <|im_end|>; questions carry none.
      assert answer_targets == TOK.encode(by_text[text]).ids + [IDS.im_end]
    assert seq["text_loss_mask"].sum() == sum(len(t) for _, t in turns)
  assert 3 in seen_turns
  # A short row keeps only the turns that fit whole.
  short = sequences.build_sequence(SOURCE[0], np.random.default_rng(0), seq_config(
      seq_len=40, generation_fraction=0.0, qa_turns=10), TOK, IDS)
  assert len(short["input_ids"]) <= 40 and short["input_ids"][-1] == IDS.im_end
  assert 1 <= len(turns_of(short, n)) < len(SOURCE[0]["qa"])


def test_task_mix_and_caption_dropout_rates():
  # 400 draws: binomial standard deviation <= 0.025, so 3 sigma is 0.075.
  cfg = seq_config(generation_fraction=0.7, caption_dropout=0.3)
  tasks, dropped = [], []
  for i in range(400):
    seq = sequences.build_sequence(SOURCE[i], np.random.default_rng([9, i]), cfg, TOK, IDS)
    tasks.append(seq["image_task"][0])
    if seq["image_task"][0] == sequences.GENERATION:
      dropped.append(seq["input_ids"][1] == IDS.boi)  # <|im_start|><boi>: no caption.
  assert abs(np.mean(tasks) - 0.7) < 0.075
  assert abs(np.mean(dropped) - 0.3) < 3 * np.sqrt(0.21 / len(dropped))


def test_text_is_cut_to_fit_seq_len():
  cfg = seq_config(seq_len=24, generation_fraction=1.0, caption_dropout=0.0)
  record = next(SOURCE[i] for i in range(50) if len(SOURCE[i]["labels"]) == 2)
  seq = sequences.build_sequence(record, np.random.default_rng(0), cfg, TOK, IDS)
  assert len(seq["input_ids"]) == 24 and seq["input_ids"][-1] == IDS.eoi


@pytest.fixture(scope="module")
def packed_batch():
  config = configs.load_config("configs/demo.py", ["data.packing=True", "data.num_workers=0",
                                                   "data.synthetic_records=64", "data.batch_size=8"])
  pc = pipeline.PipelineConfig.from_config(config)
  source = pipeline.make_source(pc)
  batch = next(iter(pipeline.build_dataset(pc, TOK, process_index=0, process_count=1)))
  return pc.sequence, source, batch


def test_packed_rows_never_attend_across_segments(packed_batch):
  cfg, _, batch = packed_batch
  seg = batch.segment_ids
  assert (seg.max(axis=1) >= 2).all(), "demo rows should pack several sequences"
  mask = np.asarray(masks.causal_segment_mask(jnp.asarray(seg)))
  q_seg, k_seg = seg[:, :, None], seg[:, None, :]
  off_diagonal = ~np.eye(cfg.seq_len, dtype=bool)[None]
  assert not (mask & (q_seg != k_seg) & off_diagonal).any()
  assert not (mask & (k_seg == 0) & off_diagonal).any()  # Nobody attends to padding.
  for b in range(seg.shape[0]):
    for s in range(1, seg[b].max() + 1):
      where = np.flatnonzero(seg[b] == s)
      assert np.array_equal(where, np.arange(where[0], where[-1] + 1))  # Contiguous.
      assert batch.positions[b, where].tolist() == list(range(len(where)))  # Restarted.
      assert np.array_equal(batch.targets[b, where[:-1]], batch.input_ids[b, where[1:]])
      assert mask[b, where[-1], where].all()  # Causal within: the last token sees its whole segment.


def test_packed_images_line_up_with_their_slots(packed_batch):
  cfg, source, batch = packed_batch
  n, m = cfg.image_tokens, cfg.max_images
  assert batch.images.shape == (8, m) + source[0]["image"].shape and batch.image_slots.shape == (8, m, n)
  for b in range(8):
    segments = []
    for j in np.flatnonzero(batch.image_valid[b]):
      slots = batch.image_slots[b, j]
      assert (batch.token_type[b, slots] == sequences.IMAGE).all()
      assert np.array_equal(slots, np.arange(slots[0], slots[0] + n))
      assert batch.input_ids[b, slots[0] - 1] == IDS.boi and batch.input_ids[b, slots[-1] + 1] == IDS.eoi
      segments.append(batch.segment_ids[b, slots[0]])
      assert np.array_equal(batch.images[b, j], source[batch.record_index[b, j]]["image"])
      generation = batch.image_task[b, j] == sequences.GENERATION
      assert (batch.diffusion_loss_mask[b, slots] == float(generation)).all()
    assert segments == list(range(1, len(segments) + 1))  # One image a segment, in order.
    assert (batch.record_index[b, ~batch.image_valid[b]] == -1).all()
    assert (batch.token_type[b].sum()) == n * batch.image_valid[b].sum()
