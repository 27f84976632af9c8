"""Task sequences (generation / understanding) from decoded records, and fixed-length rows.

Layouts [MMAR.md, task sequences], with N image slots per image:
  generation     <|im_start|> caption <boi> [N slots] <eoi>
  understanding  <boi> [N slots] <eoi> question answer <|im_end|> [question answer <|im_end|> ...]
Image slots hold the `<mask>` id in `input_ids` (the model puts image embeddings there) and
`token_type` 1. One record becomes one sequence; rows hold one padded sequence or several packed
ones (packing itself is grain's FirstFitPackIterDataset, see pipeline.py); `finalize_row` turns
either into the row format of the batch dict documented in pipeline.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tokenizers import Tokenizer

from mmar_jax import configs
from mmar_jax.data import text_accounting, text_tokenizer
from mmar_jax.data.text_tokenizer import SpecialIds

UNDERSTANDING, GENERATION = 0, 1  # image_task values
TEXT, IMAGE = 0, 1  # token_type values
# Per-sequence features, packed along their first axis; row features with length seq_len.
TOKEN_FEATURES = ("input_ids", "targets", "text_loss_mask", "diffusion_loss_mask", "token_type")
IMAGE_FEATURES = ("images", "image_task", "record_index")
# The latent cache's rows carry posterior moments where pixel sources carry images.
MOMENTS_FEATURES = ("image_moments", "image_task", "record_index")


def image_features(sequence: dict) -> tuple[str, ...]:
  return MOMENTS_FEATURES if "image_moments" in sequence else IMAGE_FEATURES


@dataclasses.dataclass(frozen=True)
class SequenceConfig:
  """What building task sequences needs (config.data, and N from config.tokenizer)."""
  seq_len: int
  image_tokens: int
  generation_fraction: float
  caption_dropout: float
  caption_loss: bool
  packing: bool
  qa_turns: int  # Most question / answer pairs one understanding sequence asks about its image.

  @classmethod
  def from_config(cls, config) -> SequenceConfig:
    d = config.data
    return cls(seq_len=d.seq_len, image_tokens=configs.num_image_tokens(config),
               generation_fraction=d.generation_fraction,
               caption_dropout=d.caption_dropout, caption_loss=d.caption_loss, packing=d.packing,
               qa_turns=d.qa_turns)

  @property
  def text_room(self) -> int:
    """Text tokens a sequence can hold besides its N image slots and 3 fixed tokens."""
    return self.seq_len - self.image_tokens - 3

  @property
  def max_images(self) -> int:
    """Images a row can hold: 1 unpacked; packed, as many shortest sequences (N + 4 tokens) as fit."""
    return self.seq_len // (self.image_tokens + 4) if self.packing else 1


def _encode(tokenizer: Tokenizer, text: str) -> tuple[list[int], list[str]]:
  """The ids of `text` and its words the tokenizer does not know (text_tokenizer.unknown_words)."""
  if not text:
    return [], []
  encoding = tokenizer.encode(text, add_special_tokens=False)
  return encoding.ids, text_tokenizer.unknown_words(tokenizer, text, encoding)


def build_sequence(record: dict, rng: np.random.Generator, config: SequenceConfig, tokenizer: Tokenizer,
                   ids: SpecialIds) -> dict[str, np.ndarray]:
  """One task sequence from a decoded record ({'image' or 'moments', 'caption', 'qa', 'index'}).

  The task is generation with probability `generation_fraction` when the record has a caption,
  else understanding on up to `qa_turns` distinct question / answer pairs drawn from 'qa', in a
  random order, one turn after another as in LLaVA's multi-turn conversations [ours] (a
  caption-only record is understood as an empty prompt answered by its caption). Text is cut at
  the end so the sequence fits seq_len: turns that do not fit whole are left out, and the first
  is cut to fit, so a record too long trains on its first tokens, as LLaVA and MAR train. It
  is never cut silently: the sequence's note (text_accounting.NOTE) says how many tokens were
  cut and which words the tokenizer does not know, for the training process to count.
  """
  n = config.image_tokens
  room = config.text_room
  has_caption = bool(record.get("caption"))
  pairs = list(record.get("qa") or []) or [("", record["caption"])]
  generation = has_caption and rng.random() < config.generation_fraction
  slots = [ids.mask] * n
  if generation:
    caption, unknown = ([], []) if rng.random() < config.caption_dropout else _encode(tokenizer, record["caption"])
    text, text_tokens = "caption", len(caption)
    caption = caption[:room]
    tokens = [ids.im_start] + caption + [ids.boi] + slots + [ids.eoi]
    image_start = len(caption) + 2
    # CE on the tokens predicted from <|im_start|> up to and including <boi>, if asked and kept.
    loss_targets = list(range(1, len(caption) + 2)) if config.caption_loss and caption else []
  else:
    tokens, image_start, loss_targets, unknown = [ids.boi] + slots + [ids.eoi], 1, [], []
    text, text_tokens = "question and answer" if record.get("qa") else "caption", 0
    for turn, pair in enumerate(rng.permutation(len(pairs))[:config.qa_turns]):
      (q, unknown_q), (a, unknown_a) = (_encode(tokenizer, t) for t in pairs[pair])
      if turn == 0:
        text_tokens = len(q) + len(a)
        q, a = q[:room - 1], a[:max(1, room - len(q))]  # The question yields room before the answer does.
      elif len(tokens) + len(q) + len(a) + 1 > config.seq_len:
        break
      unknown += unknown_q + unknown_a
      tokens += q
      # CE on the answer and the <|im_end|> that closes it.
      loss_targets += range(len(tokens), len(tokens) + len(a) + 1)
      tokens += a + [ids.im_end]
  length = len(tokens)
  input_ids = np.asarray(tokens, np.int32)
  targets = np.append(input_ids[1:], ids.pad).astype(np.int32)
  text_loss_mask = np.zeros(length, np.float32)
  text_loss_mask[[t - 1 for t in loss_targets]] = 1.0
  token_type = np.zeros(length, np.int32)
  token_type[image_start:image_start + n] = IMAGE
  return {
      "input_ids": input_ids,
      "targets": targets,
      "text_loss_mask": text_loss_mask,
      "diffusion_loss_mask": token_type.astype(np.float32) * float(generation),
      "token_type": token_type,
      **({"image_moments": record["moments"][None]} if "moments" in record else {"images": record["image"][None]}),
      "image_task": np.asarray([GENERATION if generation else UNDERSTANDING], np.int32),
      "record_index": np.asarray([record["index"]], np.int32),
      text_accounting.NOTE: text_accounting.note(record, text, text_tokens, room, unknown),
  }


def pad_sequence(sequence: dict[str, np.ndarray], config: SequenceConfig, pad_id: int) -> dict[str, np.ndarray]:
  """One sequence as a row: padded to seq_len, segment id 1, positions 0..len-1 (0 on padding)."""
  length = len(sequence["input_ids"])
  row = {}
  for key in TOKEN_FEATURES:
    fill = pad_id if key in ("input_ids", "targets") else 0
    row[key] = np.full(config.seq_len, fill, sequence[key].dtype)
    row[key][:length] = sequence[key]
  row["segment_ids"] = (np.arange(config.seq_len) < length).astype(np.int32)
  row["positions"] = np.where(row["segment_ids"] > 0, np.arange(config.seq_len), 0).astype(np.int32)
  for key in image_features(sequence):
    row[key] = sequence[key]
  row["image_valid"] = np.ones(1, bool)
  if text_accounting.NOTE in sequence:
    row[text_accounting.NOTE] = sequence[text_accounting.NOTE]
  return row


def packed_to_row(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames FirstFitPackIterDataset's output to the row format and drops what repeats."""
  row = {key: packed[key] for key in TOKEN_FEATURES + image_features(packed)}
  row["segment_ids"] = packed["input_ids_segment_ids"].astype(np.int32)
  row["positions"] = packed["input_ids_positions"].astype(np.int32)
  row["image_valid"] = packed["image_task_segment_ids"] > 0
  return row


def finalize_row(row: dict[str, np.ndarray], config: SequenceConfig) -> dict[str, np.ndarray]:
  """Adds `image_slots` (sequence positions of each image's N tokens) and blanks padded images."""
  n, m = config.image_tokens, config.max_images
  slot_positions = np.flatnonzero(row["token_type"] == IMAGE).astype(np.int32)
  count = len(slot_positions) // n
  valid = row["image_valid"]
  if count != int(valid.sum()):
    raise ValueError(f"row has {len(slot_positions)} image slots for {int(valid.sum())} images of {n} tokens")
  image_slots = np.zeros((m, n), np.int32)
  image_slots[:count] = slot_positions.reshape(count, n)  # Images are in sequence order, slots contiguous.
  out = dict(row)
  out["image_slots"] = image_slots
  out["image_valid"] = valid.astype(bool)
  out["record_index"] = np.where(valid, row["record_index"], -1).astype(np.int32)
  return out
