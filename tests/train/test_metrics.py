"""MFU's peak table and the per-device rates, checked by hand (README: "Metrics")."""

from __future__ import annotations

import types

import pytest

from mmar_jax.train import metrics


@pytest.mark.parametrize("kind, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),  # jax's device_kind strings; SXM data-sheet dense bf16.
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),  # v5e: the longer prefix wins over v5p's "TPU v5".
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),
    ("cpu", None),
])
def test_peak_by_device_kind(kind, peak):
  assert metrics.peak_flops_per_device(types.SimpleNamespace(device_kind=kind)) == peak


def test_the_configured_peak_overrides_the_table():
  h100 = types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")
  assert metrics.peak_flops_per_device(h100, override=756e12) == 756e12  # An H100 PCIe.
  assert metrics.peak_flops_per_device(types.SimpleNamespace(device_kind="cpu"), override=1e12) == 1e12


def test_throughput_and_mfu_by_hand():
  # 8,000 tokens and 40 images in 2 s on 4 devices doing 4 TFLOP in all, at a 1 TFLOP/s peak each.
  rates = metrics.throughput(tokens=8000, images=40, seconds=2.0, flops=4e12, num_devices=4, peak=1e12)
  assert rates == pytest.approx({"tokens_per_s_per_device": 1000.0, "images_per_s_per_device": 5.0,
                                 "model_tflops_per_s_per_device": 0.5, "mfu": 0.5})
  assert "mfu" not in metrics.throughput(tokens=1, images=1, seconds=1.0, flops=1.0, num_devices=1, peak=None)
