"""Feature statistics, the Fréchet distance between Gaussians, and the Inception Score.

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to the Inception pool
features of two image sets::

    d² = ||μ₁ − μ₂||² + Tr(Σ₁) + Tr(Σ₂) − 2 Tr((Σ₁ Σ₂)^½)

``Tr((Σ₁Σ₂)^½)`` equals ``Tr((Σ₁^½ Σ₂ Σ₁^½)^½)``: the square roots of the eigenvalues of a
*symmetric* positive semi-definite matrix, which ``numpy.linalg.eigvalsh`` computes stably
(pytorch-fid's ``scipy.linalg.sqrtm`` of the non-symmetric product needs an ε fix when it goes
complex; this does not). Covariances are unbiased (``np.cov``'s ``ddof=1``, as pytorch-fid).

The Inception Score (Salimans et al. 2016) is ``exp(E_x KL(p(y|x) || p(y)))`` per split of the
images (10 by default), reported as mean ± standard deviation over the splits, the splits cut as
the original code cuts them (``[i·N/splits, (i+1)·N/splits)``).
"""

from __future__ import annotations

import numpy as np

from latentlm_jax.config.loading import ConfigError
from latentlm_jax.image_metrics.npz import read_npz, write_npz


class RunningStats:
    """Mean and covariance of feature vectors added batch by batch, in float64 (Chan et al.'s
    pairwise update: no ``Σx xᵀ − n μμᵀ`` cancellation)."""

    def __init__(self, dim: int):
        self.dim, self.count = dim, 0
        self.mean = np.zeros(dim, np.float64)
        self._m2 = np.zeros((dim, dim), np.float64)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features [n, {self.dim}], got {x.shape}")
        n = x.shape[0]
        if n == 0:
            return
        mean_b = x.mean(axis=0)
        centred = x - mean_b
        m2_b = centred.T @ centred
        total = self.count + n
        delta = mean_b - self.mean
        self._m2 += m2_b + np.outer(delta, delta) * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.count = total

    @property
    def covariance(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
        return self._m2 / (self.count - 1)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (tiny negative
    eigenvalues from rounding are clipped to 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """The squared Fréchet (2-Wasserstein) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂); a
    rounding error below zero (identical Gaussians) is returned as 0."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: μ {mu1.shape} / {mu2.shape}, "
                         f"Σ {sigma1.shape} / {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    product = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((product + product.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    d2 = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    # rounding takes a true 0 (n < d samples: many zero eigenvalues) to about −1e-6·Tr Σ; a larger
    # negative value is left as it is: it means Σ was not positive semi-definite
    tolerance = 1e-4 * (np.trace(sigma1) + np.trace(sigma2))
    return 0.0 if -tolerance <= d2 < 0 else d2


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """(mean, standard deviation) over ``splits`` of ``exp(E KL(p(y|x) || p(y)))``, from
    classifier logits ``[N, classes]``."""
    logits = np.asarray(logits, np.float64)
    n = logits.shape[0]
    if splits < 1 or n < splits:
        raise ValueError(f"the Inception Score over {splits} splits needs at least {splits} "
                         f"images, got {n}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        part_p, part_log_p = p[lo:hi], log_p[lo:hi]
        marginal = part_p.mean(axis=0)
        # p·(log p − log p(y)), with 0·anything = 0 (a class no image of the split predicts)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_marginal = np.log(marginal)
            terms = np.where(part_p > 0, part_p * (part_log_p - log_marginal), 0.0)
        scores.append(np.exp(terms.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


# ------------------------------------------------------------------------ reference statistics
WHAT = "reference statistics"


def save_stats(path: str, stats: RunningStats) -> None:
    """``mu``, ``sigma`` (the keys pytorch-fid's ``--save-stats`` writes) and ``count``."""
    write_npz(path, {"mu": stats.mean, "sigma": stats.covariance,
                     "count": np.asarray(stats.count, np.int64)})


def load_stats(path: str, dim: int) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(μ, Σ, count) from an ``.npz`` with ``mu`` and ``sigma`` (this command's, pytorch-fid's or
    any other that uses those keys); ``count`` is None when the file does not say."""
    arrays = read_npz(path, WHAT)
    for key in ("mu", "sigma"):
        if key not in arrays:
            raise ConfigError("", f"{WHAT}: {path} has no {key!r} array (keys: "
                                  f"{', '.join(sorted(arrays)) or 'none'})")
    mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ConfigError("", f"{WHAT}: {path} holds mu {mu.shape} and sigma {sigma.shape}; "
                              f"the Inception pool features need ({dim},) and ({dim}, {dim})")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ConfigError("", f"{WHAT}: {path} holds non-finite values")
    count = int(arrays["count"]) if "count" in arrays else None
    return mu, sigma, count
