"""Skipping corrupt records: each bad record warned about and counted once, fatal past a configured share.

Workers turn undecodable records into markers (decode.py); this iterator, in the training
process, drops them. A bad record comes back every epoch, so it is known by (source, index) and
warned about and counted the first time only.

The limit, config.data.max_corrupt_fraction, is judged on distinct records: distinct bad records
over distinct records read. A stream (one source of a mixture) is shuffled a new way each epoch
but holds each record once an epoch, so its distinct records read are its reads up to its
records per epoch. The share is judged once `min_records` distinct records were read, or all of
them when there are fewer.

All counts are part of the iterator state, so a resumed run keeps counting (and does not warn
again) where the saved one stopped. The state stays small: bad records are rare, and each is one
index in a sorted list per source.
"""

from __future__ import annotations

import re
from typing import Any

from absl import logging

import grain

# The share is judged only after this many records: one bad record among the first few would
# otherwise exceed any sensible limit.
MIN_RECORDS_BEFORE_CHECK = 100
# The key of an element's stream (its source's place in a mixture), set in the workers (pipeline.py).
STREAM = "stream"


class CorruptDataError(RuntimeError):
  """More of the data than config.data.max_corrupt_fraction failed to decode."""


def where(marker: dict) -> str:
  """The bad record, as a user finds it: file:line for manifest records, else source[index]."""
  if marker.get("line"):
    return f"{marker['source']}:{marker['line']}"
  return f"{marker['source']}[{marker['index']}]"


def reason_kind(marker: dict) -> str:
  """The reason without its particulars ('image missing', 'line is not JSON'): the table's row."""
  # The latent cache's messages name their record first (latent_source.py).
  reason = marker["corrupt"].removeprefix(f"{marker['source']}: record {marker['index']}: ")
  return re.split(r":| \(", reason, maxsplit=1)[0].strip() or "unknown"


class SkipCorruptIterator(grain.DatasetIterator):
  """Passes good elements, drops corrupt markers (warning once a record), raises past the limit.

  `records_per_epoch`: each stream's records in one epoch on this host, in stream order; None for
  a single pass (every read is a distinct record).
  """

  def __init__(self, parent: grain.DatasetIterator, max_fraction: float, min_records: int,
               records_per_epoch: tuple[int, ...] | None = None, warned: set[tuple[str, int]] | None = None):
    super().__init__(parent)
    self._max_fraction = max_fraction
    self._min_records = min_records
    self._per_epoch = records_per_epoch
    self._warned = set() if warned is None else warned  # (source, index) warned about, shared by a dataset's iterators.
    self._reads = [0] * (len(records_per_epoch) if records_per_epoch else 1)  # Per stream, repeats included.
    self._skips = 0  # Corrupt reads, repeats included.
    self._bad: dict[str, set[int]] = {}  # Source -> indices of its bad records.
    self._reasons: dict[str, int] = {}  # Reason kind -> distinct bad records.
    self._last = ""  # The newest bad record and why, for the error.

  def __next__(self):
    while True:
      element = next(self._parent)
      stream = element.pop(STREAM, 0)
      self._reads[stream] += 1
      if "corrupt" in element:
        self._skips += 1
        self._note(element)
      self._check()
      if "corrupt" not in element:
        return element

  def _note(self, marker: dict) -> None:
    indices = self._bad.setdefault(marker["source"], set())
    if marker["index"] in indices:
      return  # A repeat (a later epoch): warned about and counted already.
    indices.add(marker["index"])
    kind = reason_kind(marker)
    self._reasons[kind] = self._reasons.get(kind, 0) + 1
    self._last = f"{where(marker)}: {marker['corrupt']}"
    if (marker["source"], marker["index"]) in self._warned:
      return  # Warned about by an earlier pass of the same dataset (the validation records, every evaluation).
    self._warned.add((marker["source"], marker["index"]))
    logging.warning("skipping corrupt record %s (%d bad of %d records so far; each is skipped every epoch, "
                    "reported once)", self._last, self.bad_records, self.distinct_records)

  def _check(self) -> None:
    bad, seen = self.bad_records, self.distinct_records
    total = sum(self._per_epoch) if self._per_epoch else self._min_records
    if seen >= min(self._min_records, total) and bad > self._max_fraction * seen:
      raise CorruptDataError(
          f"{bad} of {seen} distinct records ({bad / seen:.1%}) were corrupt, more than "
          f"config.data.max_corrupt_fraction={self._max_fraction}; the last was {self._last}")

  @property
  def bad_records(self) -> int:
    return sum(len(indices) for indices in self._bad.values())

  @property
  def distinct_records(self) -> int:
    if self._per_epoch is None:
      return sum(self._reads)
    return sum(min(reads, n) for reads, n in zip(self._reads, self._per_epoch))

  @property
  def counts(self) -> dict[str, Any]:
    """This host's records so far (since the run began, across resumes).

    'reads': records read, repeats in later epochs included; 'distinct': distinct records read;
    'corrupt': distinct bad records; 'skips': corrupt reads, repeats included; 'reasons': distinct
    bad records by reason_kind.
    """
    return {"reads": sum(self._reads), "distinct": self.distinct_records, "corrupt": self.bad_records,
            "skips": self._skips, "reasons": dict(sorted(self._reasons.items()))}

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), "reads": list(self._reads), "skips": self._skips,
            "bad": {source: sorted(indices) for source, indices in sorted(self._bad.items())},
            "reasons": dict(self._reasons), "last": self._last}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    if "bad" not in state:  # A checkpoint from before distinct counting: its counts included repeats.
      self._reads = [0] * len(self._reads)
      self._reads[0], self._skips, self._bad, self._reasons, self._last = state["seen"], state["corrupt"], {}, {}, ""
      return
    if len(state["reads"]) != len(self._reads):
      raise ValueError(f"the data iterator's checkpoint has {len(state['reads'])} streams, this run's data "
                       f"{len(self._reads)}: config.data.mixture changed since the checkpoint")
    self._reads, self._skips = list(state["reads"]), state["skips"]
    self._bad = {source: set(indices) for source, indices in state["bad"].items()}
    self._reasons, self._last = dict(state["reasons"]), state["last"]


class SkipCorruptIterDataset(grain.IterDataset):
  """Drops elements that are corrupt markers ({'corrupt': reason, 'source', 'index'[, 'line']}).

  Each iterator counts on its own; a record is warned about once whichever of them meets it.
  """

  def __init__(self, parent: grain.IterDataset, max_fraction: float,
               min_records: int = MIN_RECORDS_BEFORE_CHECK, records_per_epoch: tuple[int, ...] | None = None):
    super().__init__(parent)
    self._max_fraction = max_fraction
    self._min_records = min_records
    self._per_epoch = records_per_epoch
    self._warned: set[tuple[str, int]] = set()

  def __iter__(self) -> SkipCorruptIterator:
    return SkipCorruptIterator(self._parent.__iter__(), self._max_fraction, self._min_records, self._per_epoch,
                               self._warned)

  def __str__(self) -> str:
    return f"SkipCorruptIterDataset(max_fraction={self._max_fraction})"


def summary_lines(counts: dict[str, Any]) -> list[str]:
  """The end-of-run table of `counts` (SkipCorruptIterator.counts)."""
  rows = [("records read", counts["reads"]), ("distinct records", counts["distinct"]),
          ("bad records skipped", counts["corrupt"])]
  rows += [(f"  {kind}", n) for kind, n in counts["reasons"].items()]
  if counts["skips"] != counts["corrupt"]:
    rows.append(("skips, repeats included", counts["skips"]))
  width = max(len(name) for name, _ in rows)
  return ["data (this host):"] + [f"  {name.ljust(width)}  {n:>10,}" for name, n in rows]


def scalars(counts: dict[str, Any]) -> dict[str, int]:
  """TensorBoard scalars of `counts`."""
  return {"data/records_read": counts["reads"], "data/records_seen": counts["distinct"],
          "data/corrupt_records": counts["corrupt"]}
