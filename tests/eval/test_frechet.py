"""The Fréchet distance against an independent computation (scipy's sqrtm, as pytorch-fid does it)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from mmar_jax.eval import frechet


def scipy_frechet(x: np.ndarray, y: np.ndarray) -> float:
  mu1, mu2 = x.mean(0), y.mean(0)
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n, d", [(500, 8), (300, 64), (2000, 3)])
def test_matches_scipy(n, d):
  rng = np.random.default_rng(d)
  mixing = rng.normal(size=(d, d))
  x = rng.normal(size=(n, d)) @ mixing
  y = rng.normal(size=(n, d)) @ (mixing + 0.3 * rng.normal(size=(d, d))) + 0.5
  ours = frechet.frechet_distance(frechet.FeatureStats.from_features(x), frechet.FeatureStats.from_features(y))
  assert ours == pytest.approx(scipy_frechet(x, y), rel=1e-6)


def test_rank_deficient_sets_and_identity():
  # Fewer samples than dimensions: singular covariances, where sqrtm needs pytorch-fid's epsilon.
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(20, 42)), rng.normal(size=(20, 42)) + 1.0
  a, b = frechet.FeatureStats.from_features(x), frechet.FeatureStats.from_features(y)
  assert abs(frechet.frechet_distance(a, a)) < 1e-6 * np.trace(a.cov)  # Rounding of the eigenvalues.
  assert frechet.frechet_distance(a, b) == pytest.approx(frechet.frechet_distance(b, a), rel=1e-9)
  assert frechet.frechet_distance(a, b) > 40  # Means 1 apart in each of 42 dimensions.


def test_statistics_files_round_trip_and_bad_ones_are_named(tmp_path):
  stats = frechet.FeatureStats.from_features(np.random.default_rng(1).normal(size=(10, 4)))
  stats.save(str(tmp_path / "s.npz"))
  back = frechet.FeatureStats.load(str(tmp_path / "s.npz"))
  assert np.array_equal(back.mean, stats.mean) and np.array_equal(back.cov, stats.cov) and back.count == 10
  np.savez(tmp_path / "bad.npz", mean=stats.mean)
  with pytest.raises(ValueError, match=r"bad.npz: a statistics file holds 'mu' and 'sigma'; this one holds \['mean'\]"):
    frechet.FeatureStats.load(str(tmp_path / "bad.npz"))
