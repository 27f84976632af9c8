"""Noise schedules and the DDPM / DDIM samplers of the head (mmar_jax/diffusion/schedule.py, sampling.py).

The schedule is computed in float64 with numpy and used as float32; the sampler's state and
every coefficient stay float32, only the head runs in its own dtype. Guidance mixes the
conditional and unconditional predictions, out = uncond + s (cond - uncond), both halves
sharing x and the noise (MAR).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch

MAX_BETA = 0.999

# shape -> standard normal float32 noise; the default draws from a torch.Generator.
NoiseFn = Callable[[tuple[int, ...]], torch.Tensor]


def train_betas(name: str, num_steps: int) -> np.ndarray:
  if name == "cosine":
    s = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    a = np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.minimum(1 - a[1:] / a[:-1], MAX_BETA)
  if name == "linear":
    scale = 1000 / num_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)
  raise ValueError(f"unknown noise schedule {name!r}")


def respaced_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
  """`num_steps` training timesteps evenly over [0, T-1], both ends included."""
  if not 0 < num_steps <= num_train_steps:
    raise ValueError(f"num_steps={num_steps} must be in [1, num_train_steps={num_train_steps}]")
  if num_steps == 1:
    return np.zeros(1, np.int32)
  return np.round(np.arange(num_steps) * ((num_train_steps - 1) / (num_steps - 1))).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Schedule:
  timesteps: np.ndarray  # [K] the head's t input at each step
  alpha_bar: np.ndarray  # [K] float32
  alpha_bar_prev: np.ndarray  # [K] float32

  @classmethod
  def create(cls, name: str, num_train_steps: int, num_steps: int) -> Schedule:
    alpha_bar = np.cumprod(1.0 - train_betas(name, num_train_steps))
    a = alpha_bar[respaced_timesteps(num_train_steps, num_steps)]
    a_prev = np.concatenate([[1.0], a[:-1]])
    return cls(respaced_timesteps(num_train_steps, num_steps), a.astype(np.float32), a_prev.astype(np.float32))


def to_x0_eps(prediction: str, out: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor):
  """(x0, eps) implied by the head's output at x_t, a = alpha_bar (float32 scalar tensor)."""
  sa, s1a = torch.sqrt(a), torch.sqrt(1 - a)
  if prediction == "v":
    return sa * x_t - s1a * out, s1a * x_t + sa * out
  if prediction == "eps":
    return (x_t - s1a * out) / sa, out
  if prediction == "x0":
    return out, (x_t - sa * out) / s1a
  raise ValueError(f"prediction={prediction!r} must be 'v', 'eps' or 'x0'")


def linear_cfg_scale(cfg_scale: float, num_known: int, num_tokens: int, schedule: str) -> float:
  """MAR's guidance for an AR step: 1 + (s - 1) * (tokens known after the step) / (all tokens)."""
  if schedule == "constant":
    return cfg_scale
  if schedule != "linear":
    raise ValueError(f"cfg schedule {schedule!r} must be 'linear' or 'constant'")
  return 1.0 + (cfg_scale - 1.0) * num_known / num_tokens


@torch.no_grad()
def sample(head, z: torch.Tensor, noise: NoiseFn, *, schedule: Schedule, prediction: str, method: str = "ddpm",
           cfg_scale: float = 1.0, z_uncond: torch.Tensor | None = None, temperature: float = 1.0,
           eta: float = 0.0) -> torch.Tensor:
  """One token [n, c] float32 per condition z [n, d], walking `schedule` from pure noise to step 0.

  Noise is drawn in this order: the initial x, then one draw a step (the last step's is unused).
  """
  if method not in ("ddpm", "ddim"):
    raise ValueError(f"sampler method {method!r} must be 'ddpm' or 'ddim'")
  n, channels = z.shape[0], head.final_layer.linear.out_features
  device = z.device
  ab = torch.as_tensor(schedule.alpha_bar, device=device)
  ab_prev = torch.as_tensor(schedule.alpha_bar_prev, device=device)
  z_both = z if z_uncond is None else torch.cat([z, z_uncond])

  def predict(x, t):
    if z_uncond is None:
      return head(x, torch.full((n,), float(t), device=device), z_both).float()
    out = head(torch.cat([x, x]), torch.full((2 * n,), float(t), device=device), z_both).float()
    cond, uncond = out[:n], out[n:]
    return uncond + cfg_scale * (cond - uncond)

  x = noise((n, channels)).to(device, torch.float32)
  for k in reversed(range(len(schedule.timesteps))):
    a, a_prev = ab[k], ab_prev[k]
    x0, eps = to_x0_eps(prediction, predict(x, schedule.timesteps[k]), x, a)
    step_noise = noise(x.shape).to(device, torch.float32)
    last = k == 0  # No noise on the step to x_0.
    if method == "ddpm":
      alpha = a / a_prev
      beta = 1 - alpha
      # sqrt(alpha), not sqrt(1 - beta): near beta = 0.999 the subtraction cancels alpha's digits.
      mean = (beta * torch.sqrt(a_prev) * x0 + (1 - a_prev) * torch.sqrt(alpha) * x) / (1 - a)
      std = torch.sqrt(beta * (1 - a_prev) / (1 - a))
      x = mean if last else mean + std * temperature * step_noise
    else:
      sigma = eta * torch.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
      x = torch.sqrt(a_prev) * x0 + torch.sqrt(torch.clamp(1 - a_prev - sigma**2, min=0.0)) * eps
      if not last:
        x = x + sigma * step_noise
  return x
