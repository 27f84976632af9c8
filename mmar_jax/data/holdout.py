"""The validation split: a fixed share of each source's records held out of training.

A record is held out when a hash of its index in its source falls below the fraction, so the
split depends on nothing but the index: the same records are held out at any process count, on
every resume and in every epoch. The hash is splitmix64's finaliser (a bijection of 64-bit
integers with good avalanche), so held-out records are spread evenly through the source.
"""

from __future__ import annotations

from typing import SupportsIndex

import numpy as np

import grain


def _splitmix64(x: np.ndarray) -> np.ndarray:
  x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def held_out(num_records: int, fraction: float) -> np.ndarray:
  """Boolean mask over indices 0..num_records-1: True for the validation records."""
  with np.errstate(over="ignore"):  # The hash multiplies modulo 2^64 on purpose.
    hashes = _splitmix64(np.arange(num_records, dtype=np.uint64))
  return (hashes >> np.uint64(11)).astype(np.float64) / 2.0 ** 53 < fraction


class Subset(grain.sources.RandomAccessDataSource):
  """The records of `source` at `indices`, in that order (records keep their source 'index')."""

  def __init__(self, source, indices: np.ndarray):
    self._source = source
    self._indices = np.asarray(indices, dtype=np.int64)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: SupportsIndex) -> dict:
    return self._source[int(self._indices[int(index)])]

  def __repr__(self) -> str:
    return f"Subset({self._source!r}, {len(self)} records)"


def split(source, fraction: float) -> tuple[Subset, Subset]:
  """(training, validation) subsets of `source`."""
  mask = held_out(len(source), fraction)
  return Subset(source, np.flatnonzero(~mask)), Subset(source, np.flatnonzero(mask))
