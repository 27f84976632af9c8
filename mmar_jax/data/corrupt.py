"""Skipping corrupt records: counted, logged with source and index, fatal past a configured share.

Workers turn undecodable records into markers (decode.py); this iterator, in the training
process, drops them. Its counts are part of the iterator state, so a resumed run keeps counting
where the saved one stopped.
"""

from __future__ import annotations

from typing import Any

from absl import logging

import grain

# The share is judged only after this many records: one bad record among the first few would
# otherwise exceed any sensible limit.
MIN_RECORDS_BEFORE_CHECK = 100


class CorruptDataError(RuntimeError):
  """More of the data than config.data.max_corrupt_fraction failed to decode."""


class SkipCorruptIterator(grain.DatasetIterator):
  """Passes good elements, drops corrupt markers, raises past the limit."""

  def __init__(self, parent: grain.DatasetIterator, max_fraction: float, min_records: int):
    super().__init__(parent)
    self._max_fraction = max_fraction
    self._min_records = min_records
    self._seen = 0
    self._corrupt = 0

  def __next__(self):
    while True:
      element = next(self._parent)
      self._seen += 1
      if "corrupt" not in element:
        return element
      self._corrupt += 1
      logging.warning("skipping corrupt record %s[%d]: %s (%d of %d records so far)", element["source"],
                      element["index"], element["corrupt"], self._corrupt, self._seen)
      if self._seen >= self._min_records and self._corrupt > self._max_fraction * self._seen:
        raise CorruptDataError(
            f"{self._corrupt} of {self._seen} records ({self._corrupt / self._seen:.1%}) were corrupt, more "
            f"than config.data.max_corrupt_fraction={self._max_fraction}; the last was {element['source']}"
            f"[{element['index']}]: {element['corrupt']}")

  @property
  def counts(self) -> dict[str, int]:
    """Records read and corrupt records skipped so far (since the run began, across resumes)."""
    return {"seen": self._seen, "corrupt": self._corrupt}

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), "seen": self._seen, "corrupt": self._corrupt}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._seen, self._corrupt = state["seen"], state["corrupt"]


class SkipCorruptIterDataset(grain.IterDataset):
  """Drops elements that are corrupt markers ({'corrupt': reason, 'source', 'index'})."""

  def __init__(self, parent: grain.IterDataset, max_fraction: float,
               min_records: int = MIN_RECORDS_BEFORE_CHECK):
    super().__init__(parent)
    self._max_fraction = max_fraction
    self._min_records = min_records

  def __iter__(self) -> SkipCorruptIterator:
    return SkipCorruptIterator(self._parent.__iter__(), self._max_fraction, self._min_records)

  def __str__(self) -> str:
    return f"SkipCorruptIterDataset(max_fraction={self._max_fraction})"
