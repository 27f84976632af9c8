"""Text that does not fit its room, or holds words the tokenizer does not know: counted, never silent.
(And images smaller than the target size, enlarged: the same note carries that, counted alike.)

`build_sequence` (in the workers) puts a note on each sequence (`NOTE`: where the record is, which
text it used, that text's tokens and room, the tokens cut, the unknown words); this iterator, in
the training process, takes the note off, counts, and logs the first record of each kind once (per host),
naming it. The counts are part of the iterator state, so a resumed run keeps counting where the
saved one stopped (at another process count the stream restarts, and so do they, as the corrupt
counts do). The loop writes the shares as TensorBoard scalars and an end-of-run summary.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

import grain
from tokenizers import Tokenizer

from mmar_jax.data import text_tokenizer
from mmar_jax.data.manifest import ManifestSource

NOTE = "text_note"  # The key of a sequence's note; taken off before packing and batching.
COUNTS = ("records", "cut", "cut_tokens", "unknown", "upscaled")


def note(record: dict, text: str, tokens: int, room: int, unknown: list[str]) -> dict[str, Any]:
  """What became of a record's `text` ('caption', 'question and answer'): `tokens` of it met `room`."""
  where = f"{record.get('source', '?')}:{record['line']}" if "line" in record else (
      f"{record.get('source', '?')}[{record.get('index', -1)}]")
  return {"where": where, "text": text, "tokens": tokens, "room": room, "cut": max(0, tokens - room),
          "unknown": list(unknown), "upscaled": bool(record.get("upscaled", False))}


class TextAccountingIterator(grain.DatasetIterator):
  """Passes elements on without their note; counts records, records cut, tokens cut, records with unknown words."""

  def __init__(self, parent: grain.DatasetIterator, announce: bool):
    super().__init__(parent)
    self._announce = announce
    self._counts = dict.fromkeys(COUNTS, 0)

  def __next__(self):
    element = dict(next(self._parent))
    n = element.pop(NOTE)
    c = self._counts
    c["records"] += 1
    if n["cut"]:
      c["cut"] += 1
      c["cut_tokens"] += n["cut"]
      if c["cut"] == 1 and self._announce:  # Once a run: the count was restored with the iterator.
        have = "has" if n["text"] == "caption" else "have"
        logging.warning("%s of %s %s %d tokens, room for %d: cut to the first %d (as LLaVA and MAR do); further "
                        "cuts are counted, see the end-of-run summary", n["text"], n["where"], have, n["tokens"],
                        n["room"], n["room"])
    c["upscaled"] += n.get("upscaled", False)
    if n["unknown"]:
      c["unknown"] += 1
      if c["unknown"] == 1 and self._announce:
        logging.warning("%s of %s holds words the tokenizer does not know %s: trained as [UNK] (generate and "
                        "describe refuse such prompts); further such records are counted, see the end-of-run "
                        "summary", n["text"], n["where"], n["unknown"][:10])
    return element

  @property
  def counts(self) -> dict[str, int]:
    """{'records', 'cut', 'cut_tokens', 'unknown', 'upscaled'} of this host since the run began (across resumes)."""
    return dict(self._counts)

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), "text": dict(self._counts)}

  def set_state(self, state: dict[str, Any]) -> None:
    if "text" not in state:  # A checkpoint from before this stage: its state is the parent's, the counts start at 0.
      self._parent.set_state(state)
      return
    self._parent.set_state(state["parent"])
    self._counts = {k: int(state["text"].get(k, 0)) for k in COUNTS}


class TextAccountingIterDataset(grain.IterDataset):
  """Takes the note off each sequence and counts it; `announce` logs the first cut and unknown word."""

  def __init__(self, parent: grain.IterDataset, announce: bool = True):
    super().__init__(parent)
    self._announce = announce

  def __iter__(self) -> TextAccountingIterator:
    return TextAccountingIterator(self._parent.__iter__(), self._announce)

  def __str__(self) -> str:
    return f"TextAccountingIterDataset(announce={self._announce})"


def counts_of(iterator: grain.DatasetIterator) -> dict[str, int]:
  """This host's counts so far, read from the pipeline's accounting stage."""
  stack = [iterator]
  while stack:
    it = stack.pop()
    if isinstance(it, TextAccountingIterator):
      return it.counts
    stack.extend(getattr(it, "_parents", ()))
  raise ValueError("the iterator has no text accounting stage; was it made by pipeline.build_dataset?")


def global_counts(iterator: grain.DatasetIterator) -> dict[str, int]:
  """Every host's counts summed (a collective: all processes call it at the same step)."""
  local = np.asarray([counts_of(iterator)[k] for k in COUNTS], np.int64)
  total = multihost_utils.process_allgather(local).sum(axis=0) if jax.process_count() > 1 else local
  return {k: int(v) for k, v in zip(COUNTS, total)}


def scalars(counts: dict[str, int]) -> dict[str, float]:
  """The shares of records read so far that were cut / held unknown words (TensorBoard's data/...)."""
  records = max(counts["records"], 1)
  return {"data/truncated_fraction": counts["cut"] / records,
          "data/unknown_words_fraction": counts["unknown"] / records,
          "data/upscaled_fraction": counts["upscaled"] / records}


def summary_lines(counts: dict[str, int], room: int) -> list[str]:
  """The end-of-run lines: how many of the records read were cut, and how many held unknown words."""
  records = counts["records"]

  def share(k: str) -> str:
    return f"{counts[k]} of {records} records read ({counts[k] / max(records, 1):.1%})"

  lines = []
  if counts["cut"]:
    lines.append(f"text: {share('cut')} had a caption or answer longer than its room of {room} tokens "
                 f"(config.data.seq_len less the image tokens and 3 fixed ones) and trained on its first tokens; "
                 f"{counts['cut_tokens']} tokens cut in all (raise data.seq_len to keep them)")
  if counts["unknown"]:
    lines.append(f"text: {share('unknown')} held words the tokenizer does not know, trained as [UNK]")
  if not lines:
    lines.append(f"text: all {records} records read fit their room, with no unknown words")
  if counts["upscaled"]:
    lines.append(f"images: {share('upscaled')} were smaller than the target size and upscaled "
                 "(config.data.min_image_size skips the smallest)")
  return lines


def manifest_lines(manifest: str, tokenizer: Tokenizer, room: int) -> list[str]:
  """What training will meet in `manifest`'s texts, ahead of time (prepare-data's summary): the records
  whose caption, or a question with its answer, is longer than `room` tokens, and those with unknown words."""
  records = [r for r in ManifestSource(manifest) if "error" not in r]
  # Each record's texts in the groups that share a room: its caption alone, each question with its answer.
  groups = [[[r.get("caption") or ""]] + [[q, a] for q, a in r.get("qa") or []] for r in records]
  flat = [t for g in groups for texts in g for t in texts]
  encodings = iter(tokenizer.encode_batch(flat, add_special_tokens=False) if flat else [])
  long = unknown = 0
  for g in groups:
    encoded = [[(t, next(encodings)) for t in texts] for texts in g]
    long += any(sum(len(e.ids) for _, e in group) > room for group in encoded)
    unknown += any(text_tokenizer.unknown_words(tokenizer, t, e) for group in encoded for t, e in group)

  def share(k: int) -> str:
    return f"{k} of the manifest's {len(records)} records ({k / max(len(records), 1):.1%})"

  return [f"text: {share(long)} have a caption or answer longer than the room of {room} tokens that --config's "
          "data.seq_len leaves beside the image tokens; training will cut them to their first tokens",
          f"text: {share(unknown)} hold words the text tokenizer (config.data.tokenizer) does not know"]
