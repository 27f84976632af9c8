"""Noise schedules (MAR's cosine, and DDPM's linear) and their respacing to fewer steps.

A schedule is computed once in float64 with numpy, as in the reference code, and handed to jitted
code as float32 constants. Nothing here ever takes the compute dtype: alpha_bar reaches 1e-9 at
the noisy end of the cosine schedule, and bfloat16 rounds timesteps 998 and 999 both to 1000.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

MAX_BETA = 0.999  # Clip of betas_for_alpha_bar (Nichol & Dhariwal): keeps alpha_bar > 0 at t = T-1.


def cosine_alpha_bar(s: np.ndarray) -> np.ndarray:
  """Nichol & Dhariwal's alpha_bar(s) for s in [0, 1], offset 0.008."""
  return np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def train_betas(name: str, num_steps: int) -> np.ndarray:
  """Per-step betas of the `num_steps`-step training process, float64."""
  if name == "cosine":
    s = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    a = cosine_alpha_bar(s)
    return np.minimum(1 - a[1:] / a[:-1], MAX_BETA)
  if name == "linear":
    scale = 1000 / num_steps  # Ho et al.'s 1e-4..0.02 for 1000 steps, rescaled to keep the end point.
    return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)
  raise ValueError(f"unknown noise schedule {name!r}")


def respaced_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
  """`num_steps` training timesteps evenly spread over [0, T-1], both ends included (IDDPM's rule)."""
  if not 0 < num_steps <= num_train_steps:
    raise ValueError(f"num_steps={num_steps} must be in [1, num_train_steps={num_train_steps}]")
  if num_steps == 1:
    return np.zeros(1, np.int32)
  stride = (num_train_steps - 1) / (num_steps - 1)
  return np.round(np.arange(num_steps) * stride).astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  """The K steps a process walks through: which training timestep each is and its alpha_bar.

  For the training process K = T and `timesteps` is 0..T-1. A respaced process keeps alpha_bar at
  the kept timesteps, so its step k -> k-1 has beta = 1 - alpha_bar[k] / alpha_bar[k-1], and the
  head still sees the original timestep index, as it was trained.
  """

  timesteps: np.ndarray  # [K] int32: training timestep of each step, the head's `t` input.
  alpha_bar: np.ndarray  # [K] float32
  alpha_bar_prev: np.ndarray  # [K] float32: alpha_bar of the step before (1 before step 0).

  @property
  def num_steps(self) -> int:
    return int(self.timesteps.shape[0])

  @classmethod
  def create(cls, name: str, num_train_steps: int, num_steps: int | None = None) -> Schedule:
    alpha_bar = np.cumprod(1.0 - train_betas(name, num_train_steps))
    kept = respaced_timesteps(num_train_steps, num_steps or num_train_steps)
    a = alpha_bar[kept]
    a_prev = np.concatenate([[1.0], a[:-1]])
    return cls(timesteps=kept, alpha_bar=a.astype(np.float32), alpha_bar_prev=a_prev.astype(np.float32))

  @classmethod
  def from_config(cls, diffusion_config, *, sampling: bool = False) -> Schedule:
    """The training process, or with `sampling` the one respaced to num_sampling_steps."""
    d = diffusion_config
    return cls.create(d.schedule, d.num_train_steps, d.num_sampling_steps if sampling else None)
