"""Precision study: the x0 and DDIM-step error that a bfloat16 head adds, per parameterisation.

Trains one toy head per parameterisation (eps, x0, v) in float32, then runs the same parameters
with the forward pass in float32 and in bfloat16 and prints, per timestep bucket, the RMS error
the low precision adds to the head's output (delta), to the implied x0 and to a DDIM step t ->
t-1, each beside the paper's bound (coefficient x delta). Usage:

  python benchmarks/precision_study.py [--steps 1000] [--per_bucket 4096] [--json]

The paper's argument (MMAR.md, "numerical-stability theorem"): in bfloat16 the head's output
carries an error delta of order its own magnitude, whatever the target. That error reaches

  x0       through  sqrt((1 - a) / a)  (eps),  sqrt(1 - a) <= 1  (v),  1  (x0)
  x_{t-1}  through  |sqrt(1 - a') - sqrt(a') sqrt(1 - a) / sqrt(a)|  (eps)
                    |sqrt(1 - a') sqrt(a) - sqrt(a') sqrt(1 - a)| <= 1  (v)
                    |sqrt(a') - sqrt(1 - a') sqrt(a) / sqrt(1 - a)|  (x0)

with a = alpha_bar_t and a' = alpha_bar_{t-1}. `bucket_errors` runs the same parameters with
the head in float32 and in bfloat16, measures delta and both errors per timestep bucket, and
puts the bound (coefficient x measured delta) beside each measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence

# Run as a script, benchmarks/ is first on the path; the repository root must be too.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.diffusion_toy import ToyMixture, train_head  # noqa: E402
from mmar_jax import configs  # noqa: E402
from mmar_jax.diffusion import parameterization  # noqa: E402
from mmar_jax.diffusion.schedule import Schedule  # noqa: E402
from mmar_jax.models.diffusion_head import DiffusionHead, HeadConfig  # noqa: E402

# Timestep ranges [lo, hi): fine at the noisy end, where alpha_bar falls from 2e-4 to 2e-9.
DEFAULT_BUCKETS = ((0, 100), (100, 300), (300, 500), (500, 700), (700, 900), (900, 950), (950, 990),
                   (990, 999), (999, 1000))


def x0_coefficient(prediction: str, a: np.ndarray) -> np.ndarray:
  """|d x0 / d output| at alpha_bar a."""
  return {"eps": np.sqrt((1 - a) / a), "v": np.sqrt(1 - a), "x0": np.ones_like(a)}[prediction]


def ddim_step_coefficient(prediction: str, a: np.ndarray, a_prev: np.ndarray) -> np.ndarray:
  """|d x_{t-1} / d output| of a deterministic DDIM step from alpha_bar a to a_prev (the paper's)."""
  sa, s1a, sp, s1p = np.sqrt(a), np.sqrt(1 - a), np.sqrt(a_prev), np.sqrt(1 - a_prev)
  return np.abs({"eps": s1p - sp * s1a / sa, "v": s1p * sa - sp * s1a, "x0": sp - s1p * sa / s1a}[prediction])


@dataclasses.dataclass(frozen=True)
class BucketError:
  """RMS errors (low precision minus float32) over one timestep bucket."""

  t_lo: int
  t_hi: int
  alpha_bar: float  # Geometric mean over the bucket's samples.
  out_err: float  # delta: the head's output error.
  x0_err: float
  x0_bound: float  # RMS of x0_coefficient x |delta| per element.
  step_err: float
  step_bound: float


def _rms(x) -> float:
  return float(np.sqrt(np.mean(np.square(np.asarray(x, np.float64)))))


@dataclasses.dataclass(frozen=True)
class BucketSamples:
  """One bucket's samples: the inputs, the head's outputs in float32 ("hi") and in the low dtype
  ("lo"), and the x0 and DDIM step each implies (through parameterization.to_x0_eps, float32)."""

  t: np.ndarray  # [n] int
  alpha_bar: np.ndarray  # [n] float32, and alpha_bar_prev beside it.
  alpha_bar_prev: np.ndarray
  x_t: np.ndarray  # [n, c] float32
  out_hi: np.ndarray
  out_lo: np.ndarray
  x0_hi: np.ndarray
  x0_lo: np.ndarray
  step_hi: np.ndarray
  step_lo: np.ndarray


def bucket_samples(head_cfg: HeadConfig, params, prediction: str, data: ToyMixture, rng, *,
                   buckets: Sequence[tuple[int, int]] = DEFAULT_BUCKETS, per_bucket: int = 2048,
                   low_dtype: str = "bfloat16", schedule: Schedule | None = None) -> list[BucketSamples]:
  """Per bucket: `per_bucket` draws of (t, x0, eps) and the head run on them in both dtypes."""
  schedule = schedule or Schedule.create("cosine", 1000)
  ab = np.asarray(schedule.alpha_bar)
  ab_prev = np.asarray(schedule.alpha_bar_prev)
  hi_head = DiffusionHead(head_cfg.replace(dtype="float32"))
  lo_head = DiffusionHead(head_cfg.replace(dtype=low_dtype))

  @jax.jit
  def measure(t, rng):
    cls_rng, x_rng, eps_rng = jax.random.split(rng, 3)
    classes = jax.random.randint(cls_rng, t.shape, 0, data.num_classes)
    x0 = data.sample(x_rng, classes)
    a, a_prev = jnp.asarray(ab)[t], jnp.asarray(ab_prev)[t]
    eps = jax.random.normal(eps_rng, x0.shape)
    x_t = jnp.sqrt(a)[:, None] * x0 + jnp.sqrt(1 - a)[:, None] * eps
    z = data.condition(classes)
    outs = []
    for head in (hi_head, lo_head):
      out = head.apply(params, x_t, t.astype(jnp.float32), z).astype(jnp.float32)
      x0_hat, eps_hat = parameterization.to_x0_eps(prediction, out, x_t, a)
      x_prev = jnp.sqrt(a_prev)[:, None] * x0_hat + jnp.sqrt(1 - a_prev)[:, None] * eps_hat
      outs.append((out, x0_hat, x_prev))
    return a, a_prev, x_t, outs

  results = []
  for i, (lo, hi) in enumerate(buckets):
    t_rng, m_rng = jax.random.split(jax.random.fold_in(rng, i))
    t = np.asarray(jax.random.randint(t_rng, (per_bucket,), lo, hi))
    a, a_prev, x_t, ((o_hi, x0_hi, p_hi), (o_lo, x0_lo, p_lo)) = jax.device_get(measure(jnp.asarray(t), m_rng))
    results.append(BucketSamples(t=t, alpha_bar=a, alpha_bar_prev=a_prev, x_t=x_t, out_hi=o_hi, out_lo=o_lo,
                                 x0_hi=x0_hi, x0_lo=x0_lo, step_hi=p_hi, step_lo=p_lo))
  return results


def bucket_errors(head_cfg: HeadConfig, params, prediction: str, data: ToyMixture, rng, *,
                  buckets: Sequence[tuple[int, int]] = DEFAULT_BUCKETS, per_bucket: int = 2048,
                  low_dtype: str = "bfloat16", schedule: Schedule | None = None) -> list[BucketError]:
  """Per bucket: the output, x0 and DDIM-step errors that `low_dtype` adds, with their bounds."""
  results = []
  for (lo, hi), s in zip(buckets, bucket_samples(head_cfg, params, prediction, data, rng, buckets=buckets,
                                                 per_bucket=per_bucket, low_dtype=low_dtype, schedule=schedule)):
    d_out = s.out_lo - s.out_hi
    a, a_prev = s.alpha_bar.astype(np.float64), s.alpha_bar_prev.astype(np.float64)
    results.append(BucketError(
        t_lo=lo, t_hi=hi, alpha_bar=float(np.exp(np.mean(np.log(a)))), out_err=_rms(d_out),
        x0_err=_rms(s.x0_lo - s.x0_hi), x0_bound=_rms(x0_coefficient(prediction, a)[:, None] * np.abs(d_out)),
        step_err=_rms(s.step_lo - s.step_hi),
        step_bound=_rms(ddim_step_coefficient(prediction, a, a_prev)[:, None] * np.abs(d_out))))
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--per_bucket", type=int, default=4096)
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--depth", type=int, default=3)
  report.add_json_flag(parser)
  args = parser.parse_args()
  head = dataclasses.replace(HeadConfig.from_config(configs.with_values(
      {"head.depth": args.depth, "head.width": args.width, "head.dtype": "float32"})), token_channels=2)
  data = ToyMixture()
  print(f"head depth {args.depth} width {args.width}, {args.steps} float32 training steps on the 2-D mixture; "
        f"{args.per_bucket} samples per bucket; errors are RMS of (bfloat16 - float32)")
  figures = {}
  for prediction in ("eps", "x0", "v"):
    start = time.perf_counter()
    params, loss = train_head(head, data, jax.random.key(0), prediction=prediction, steps=args.steps)
    rows = bucket_errors(head, params, prediction, data, jax.random.key(1), per_bucket=args.per_bucket)
    print(f"\n## {prediction}-prediction (final loss {loss:.4f}, {time.perf_counter() - start:.0f} s)")
    print("| t | alpha_bar | delta (output) | x0 error | x0 bound | DDIM step error | paper's step bound |")
    print("|---|---|---|---|---|---|---|")
    for b in rows:
      print(f"| {b.t_lo}-{b.t_hi - 1} | {b.alpha_bar:.2e} | {b.out_err:.2e} | {b.x0_err:.2e} | {b.x0_bound:.2e} "
            f"| {b.step_err:.2e} | {b.step_bound:.2e} |")
    figures[prediction] = {"final_loss": loss, "buckets": [dataclasses.asdict(b) for b in rows]}
  report.emit(args, "precision_study", {"depth": args.depth, "width": args.width, "steps": args.steps,
                                        "per_bucket": args.per_bucket} | figures)


if __name__ == "__main__":
  main()
