"""Training metrics: throughput and MFU, and where they go (TensorBoard event files, the console).

MFU = achieved model FLOP/s / (devices x peak FLOP/s). Model FLOPs follow `train/flops.py`
(2 per multiply-add, full attention matrix, LoRA's matmuls, no weight gradients for frozen kernels); the peak is
the device's dense 16-bit matmul rate from its data sheet, or config.train.peak_flops_per_device.
"""

from __future__ import annotations

import typing
from typing import Any

import jax
import numpy as np
import tensorboardX
from etils import epath
from tensorboardX import record_writer

from mmar_jax import checkpoint

# tensorboardX opens event files by the prefix before the path's first ':' (its own s3/gs writers,
# else plain `open`). Logdirs are given to it as "mmar-epath:<path>", and this factory opens them
# through etils' epath, so event files land on any filesystem the checkpoints can (gs://, ...).
EPATH_PREFIX = "mmar-epath"


class _EpathFile:
  """The three calls tensorboardX makes on an event file (no fileno: it fsyncs files that have one)."""

  def __init__(self, path: str):
    self._f = epath.Path(path).open("wb")

  def write(self, data: bytes) -> None:
    self._f.write(data)

  def flush(self) -> None:
    self._f.flush()

  def close(self) -> None:
    self._f.close()


class _EpathWriterFactory:
  def open(self, path: str) -> _EpathFile:
    return _EpathFile(path[len(EPATH_PREFIX) + 1:])

  def directory_check(self, path: str) -> None:
    epath.Path(path[len(EPATH_PREFIX) + 1:]).mkdir(parents=True, exist_ok=True)


record_writer.register_writer_factory(EPATH_PREFIX, _EpathWriterFactory())

# Dense bf16 matmul peak per device (FLOP/s) from the vendors' data sheets, by jax device_kind prefix.
PEAK_FLOPS = {
    "NVIDIA H100": 989e12,  # SXM; the PCIe part is 756e12.
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5": 459e12,  # v5p
    "TPU v6 lite": 918e12,  # v6e (Trillium)
}


@typing.runtime_checkable
class HasDeviceKind(typing.Protocol):
  """What the peak table reads of a device (a jax.Device has it)."""
  device_kind: str


def peak_flops_per_device(device: HasDeviceKind, override: float = 0.0) -> float | None:
  """The device's peak FLOP/s: `override` when set, else the table; None when unknown (CPUs)."""
  if override > 0:
    return override
  for prefix, peak in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
    if device.device_kind.startswith(prefix):
      return peak
  return None


def throughput(*, tokens: float, images: float, seconds: float, flops: float, num_devices: int,
               peak: float | None) -> dict[str, float]:
  """Per-device rates over an interval and MFU (absent when the peak is unknown)."""
  out = {"tokens_per_s_per_device": tokens / seconds / num_devices,
         "images_per_s_per_device": images / seconds / num_devices,
         "model_tflops_per_s_per_device": flops / seconds / num_devices / 1e12}
  if peak:
    out["mfu"] = flops / seconds / (num_devices * peak)
  return out


class Writer:
  """TensorBoard event files (tensorboardX: no TensorFlow needed), written by process 0 only."""

  def __init__(self, logdir: str):
    self._writer = (tensorboardX.SummaryWriter(f"{EPATH_PREFIX}:{logdir}") if jax.process_index() == 0
                    else None)

  def scalars(self, step: int, values: dict[str, Any]) -> None:
    if self._writer is None:
      return
    for name, value in values.items():
      self._writer.add_scalar(name, float(value), step)
    self._writer.flush()

  def images(self, step: int, name: str, grid: np.ndarray) -> None:
    """`grid`: HWC uint8."""
    if self._writer is not None:
      self._writer.add_image(name, grid, step, dataformats="HWC")
      self._writer.flush()

  def text(self, step: int, name: str, text: str) -> None:
    if self._writer is not None:
      self._writer.add_text(name, text, step)
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def logdir(workdir: str) -> str:
  return str(checkpoint.path_of(workdir) / "tensorboard")
