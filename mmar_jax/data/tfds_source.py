"""A TensorFlow Datasets source: `tfds.data_source` over a dataset the user prepared (array_record).

Nothing downloads: the dataset must already be prepared under `data_dir` in the array_record
format (`tfds build NAME --file_format=array_record --data_dir=DIR`, or a builder's
`download_and_prepare` with `file_format='array_record'`). Feature names are mapped by config:
an image feature (tfds.features.Image, pixels or encoded image bytes) and a caption and/or
question / answer feature (tfds.features.Text or string tensors). TensorFlow is not needed:
`tfds.data_source` decodes Image features with PIL and gives Text features as bytes.
The tfds source opens lazily in each process, so grain can ship this object to its workers.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import SupportsIndex

import numpy as np

import grain


@dataclasses.dataclass(frozen=True)
class TfdsConfig:
  """Which prepared dataset to read and which features hold what (from config.data.tfds_*)."""
  name: str
  split: str = "train"
  data_dir: str = ""  # '' = tfds's default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  image_key: str = "image"
  caption_key: str = "caption"  # '' when the dataset has no captions
  question_key: str = ""  # '' when the dataset has no question / answer pairs
  answer_key: str = ""


# Grain reads a source from many threads, and in a worker process the first reads open it all at
# once. tfds's lazy imports deadlock when two threads import it together on Python 3.11
# (functools.cached_property's lock against the import lock: a worker hung so in CI), so one
# thread a process imports and opens; the others wait for it.
_OPEN_LOCK = threading.Lock()


def _text(value) -> str:
  if isinstance(value, np.ndarray):
    value = value.item()
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TfdsSource(grain.sources.RandomAccessDataSource):
  """Records {'image', 'caption', 'qa'} from a prepared TFDS dataset's split."""

  def __init__(self, config: TfdsConfig):
    self._config = config
    self._source = None
    self._length = len(self._open())

  def _open(self):
    if self._source is not None:
      return self._source
    with _OPEN_LOCK:
      if self._source is None:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel  (slow import, optional)
        try:
          self._source = tfds.data_source(self._config.name, split=self._config.split,
                                          data_dir=self._config.data_dir or None, download=False)
        except Exception as e:  # tfds raises several kinds for "not prepared"; all mean the same to a user.
          raise FileNotFoundError(
              f"config.data.tfds_name={self._config.name!r} (split {self._config.split!r}, data_dir "
              f"{self._config.data_dir or 'default'!r}) is not a prepared array_record dataset: {e}") from e
    return self._source

  def __getstate__(self):
    return {"_config": self._config, "_source": None, "_length": self._length}

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: SupportsIndex) -> dict:  # grain passes numpy ints too.
    c = self._config
    try:
      example = self._open()[int(index)]
    except Exception as e:  # An unreadable example is a corrupt record, counted downstream.
      return {"error": f"tfds example unreadable: {type(e).__name__}: {e}", "source": c.name, "index": int(index)}
    record = {"image": example.get(c.image_key), "caption": "", "qa": [], "source": f"tfds:{c.name}/{c.split}",
              "index": int(index)}
    if record["image"] is None:
      return {**record, "error": f"no feature {c.image_key!r} (config.data.tfds_image_key)"}
    if isinstance(record["image"], np.ndarray) and record["image"].dtype == object:
      record["image"] = record["image"].item()  # Encoded bytes stored as a string tensor.
    elif isinstance(record["image"], np.ndarray) and record["image"].ndim == 3 and record["image"].shape[-1] == 1:
      record["image"] = record["image"][..., 0]  # A grayscale Image feature is (h, w, 1); PIL reads (h, w).
    if c.caption_key:
      record["caption"] = _text(example.get(c.caption_key, ""))
    if c.question_key and c.answer_key:
      record["qa"] = [(_text(example.get(c.question_key, "")), _text(example.get(c.answer_key, "")))]
    return record

  def __repr__(self) -> str:
    return f"TfdsSource({self._config})"
