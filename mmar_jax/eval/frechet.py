"""The Fréchet distance between two Gaussians fitted to feature sets (FID's, in any feature space).

d² = |mu_a - mu_b|² + tr(S_a) + tr(S_b) - 2 tr((S_a^½ S_b S_a^½)^½), in float64. The last trace is
taken from the eigenvalues of S_a^½ S_b S_a^½, a symmetric positive semi-definite matrix, with
`numpy.linalg.eigh`: no general matrix square root, so no complex parts to discard (the way
pytorch-fid's `scipy.linalg.sqrtm` route must), and rank-deficient covariances (fewer samples
than dimensions) need no added epsilon.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from etils import epath
from jaxtyping import Float


@dataclasses.dataclass(frozen=True)
class FeatureStats:
  """A feature set's mean, covariance (unbiased, as pytorch-fid's) and sample count."""
  mean: Float[np.ndarray, " d"]
  cov: Float[np.ndarray, "d d"]
  count: int

  @classmethod
  def from_features(cls, features: Float[np.ndarray, "n d"]) -> FeatureStats:
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
      raise ValueError(f"features of shape {features.shape}: need (n >= 2, d)")
    return cls(features.mean(0), np.cov(features, rowvar=False), len(features))

  def save(self, path: str) -> None:
    """As pytorch-fid's and torch-fidelity's statistics files: `mu`, `sigma` (and our `count`)."""
    with epath.Path(path).open("wb") as f:
      np.savez(f, mu=self.mean, sigma=self.cov, count=self.count)

  @classmethod
  def load(cls, path: str) -> FeatureStats:
    with epath.Path(path).open("rb") as f:
      data = np.load(f)
      if "mu" not in data or "sigma" not in data:
        raise ValueError(f"{path}: a statistics file holds 'mu' and 'sigma'; this one holds {sorted(data)}")
      return cls(data["mu"].astype(np.float64), data["sigma"].astype(np.float64),
                 int(data["count"]) if "count" in data else 0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
  """The squared Fréchet distance between N(a.mean, a.cov) and N(b.mean, b.cov)."""
  if a.mean.shape != b.mean.shape:
    raise ValueError(f"feature sizes differ: {a.mean.shape[0]} and {b.mean.shape[0]}")
  root_a = _psd_sqrt(a.cov)
  inner = np.linalg.eigvalsh(root_a @ b.cov @ root_a)
  trace_sqrt = float(np.sqrt(np.clip(inner, 0.0, None)).sum())
  diff = a.mean - b.mean
  return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * trace_sqrt)
