"""Gaussian mixtures with full covariances, fitted by EM in PyTorch: scikit-learn's algorithm, several times faster.

The typicality density of ``vaekit.anomaly`` (a few dozen statistics of 20,000 examples) and the ex-post latent
sampler of ``vaekit.generation`` fit mixtures for several numbers of components and keep the one of lowest BIC.
scikit-learn's ``GaussianMixture`` loops over the components in Python and streams an (examples x dimensions)
array per component through memory each half-step: a 9-component fit on 20,000 x 45 statistics took about 10 s
on 2 cores, most of ``vaekit train``'s end-of-run work. Here every component is handled in one batched matrix
product, over chunks of examples that stay in cache, and each EM iteration is a single pass that computes the
responsibilities and accumulates the next M-step's sufficient statistics.

The algorithm is scikit-learn's, step for step, so that a fit equals ``GaussianMixture(n_components,
covariance_type="full", reg_covar=..., tol=..., max_iter=..., random_state=seed)`` up to rounding (checked in
tests/test_mixture.py): responsibilities initialised from one k-means run (scikit-learn's ``KMeans``, one
initialisation, the same seed), covariances regularised by ``reg_covar`` on the diagonal, iterations until the
mean log-likelihood changes by less than ``tol``, the parameters of the M-step after the last E-step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError

CHUNK_VALUES = 1 << 20
"""Values of one chunk's (components x dimensions x examples) working array: 8 MiB in float64, cache-sized."""


@dataclass
class MixtureFit:
    """A fitted mixture: ``weights`` (m,), ``means`` (m, d), ``covariances`` (m, d, d), as NumPy float64."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    lower_bound: float  # mean log-likelihood of the fitting data at the last E-step
    n_iter: int
    converged: bool

    @property
    def n_components(self) -> int:
        return len(self.weights)

    @property
    def n_parameters(self) -> int:
        """Free parameters: m - 1 weights, m d means, m d (d + 1) / 2 covariance entries."""
        m, d = self.means.shape
        return m - 1 + m * d + m * d * (d + 1) // 2

    def log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """log density of each row of ``X`` under the mixture."""
        x = torch.as_tensor(np.asarray(X, dtype=np.float64))
        scorer = _Scorer(torch.as_tensor(self.weights), torch.as_tensor(self.means), torch.as_tensor(self.covariances))
        return torch.cat([torch.logsumexp(scorer.log_joint(c), 0) for c in _chunks(x, self.n_components)]).numpy()

    def bic(self, X: np.ndarray) -> float:
        """Bayesian information criterion on ``X`` (lower is better), as scikit-learn's ``GaussianMixture.bic``."""
        n = len(X)
        return float(-2.0 * self.log_likelihood(X).sum() + self.n_parameters * math.log(n))


class _Scorer:
    """log w_j + log N(x | mu_j, Sigma_j) for every component j at once, through the Cholesky factors' inverses."""

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor) -> None:
        d = means.shape[1]
        try:
            chol = torch.linalg.cholesky(covariances)
        except torch.linalg.LinAlgError:
            raise DataError("fitting the Gaussian mixture failed: a component's covariance is not positive definite "
                            "(collapsed onto too few distinct points); increase reg_covar or give more varied data") from None
        eye = torch.eye(d, dtype=covariances.dtype).expand_as(chol)
        self.inverse = torch.linalg.solve_triangular(chol, eye, upper=False)  # L^-1: (L^-1 (x - mu))^2 = Mahalanobis
        self.shift = self.inverse @ means[:, :, None]
        log_det = 2.0 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)
        self.const = (torch.log(weights) - 0.5 * (log_det + d * math.log(2 * math.pi)))[:, None]

    def log_joint(self, x: torch.Tensor) -> torch.Tensor:
        """(m, n) log w_j N(x_i | mu_j, Sigma_j) for a chunk x (n, d)."""
        solved = torch.matmul(self.inverse, x.T) - self.shift  # (m, d, n)
        return self.const - 0.5 * (solved * solved).sum(1)


def _chunks(x: torch.Tensor, m: int):
    size = max(64, CHUNK_VALUES // max(1, m * x.shape[1]))
    return x.split(size)


def _sufficient(resp: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sum_i r_ij, sum_i r_ij x_i, sum_i r_ij x_i x_i^T for responsibilities resp (m, n) of a chunk x (n, d)."""
    return resp.sum(1), resp @ x, torch.matmul(x.T[None] * resp[:, None, :], x)


def _m_step(counts, sums, squares, n: int, reg_covar: float):
    counts = counts + 10 * torch.finfo(torch.float64).eps  # as scikit-learn: no division by an empty component
    means = sums / counts[:, None]
    covariances = squares / counts[:, None, None] - means[:, :, None] * means[:, None, :]
    covariances = 0.5 * (covariances + covariances.transpose(1, 2)) + reg_covar * torch.eye(means.shape[1], dtype=means.dtype)
    return counts / n, means, covariances


def fit_gaussian_mixture(X: np.ndarray, n_components: int, *, reg_covar: float = 1e-6, tol: float = 1e-3,
                         max_iter: int = 100, seed: int = 0) -> MixtureFit:
    """EM for a full-covariance Gaussian mixture of ``n_components`` on the rows of ``X`` (k-means initialisation)."""
    from sklearn.cluster import KMeans

    x_np = np.asarray(X, dtype=np.float64)
    if x_np.ndim != 2 or not len(x_np):
        raise DataError(f"a Gaussian mixture needs a non-empty (examples, dimensions) array, got shape {x_np.shape}")
    if not np.isfinite(x_np).all():
        raise DataError("a Gaussian mixture needs finite values; the data hold NaN or infinity")
    n = len(x_np)
    if not 1 <= n_components <= n:
        raise DataError(f"n_components must lie in [1, {n}] for {n} examples, got {n_components}")
    labels = KMeans(n_components, n_init=1, random_state=seed).fit(x_np).labels_
    x = torch.from_numpy(x_np)
    resp = torch.zeros(n_components, n, dtype=torch.float64)
    resp[torch.as_tensor(labels), torch.arange(n)] = 1.0
    stats = _sufficient(resp, x)
    lower_bound, converged, iteration = -math.inf, False, 0
    for iteration in range(1, max_iter + 1):
        scorer = _Scorer(*_m_step(*stats, n, reg_covar))
        counts = torch.zeros(n_components, dtype=torch.float64)
        sums = torch.zeros(n_components, x.shape[1], dtype=torch.float64)
        squares = torch.zeros(n_components, x.shape[1], x.shape[1], dtype=torch.float64)
        total = 0.0
        for chunk in _chunks(x, n_components):
            joint = scorer.log_joint(chunk)
            norm = torch.logsumexp(joint, 0)
            total += float(norm.sum())
            c, s, q = _sufficient(torch.exp(joint - norm), chunk)
            counts += c
            sums += s
            squares += q
        stats = (counts, sums, squares)
        previous, lower_bound = lower_bound, total / n
        if abs(lower_bound - previous) < tol:
            converged = True
            break
    weights, means, covariances = _m_step(*stats, n, reg_covar)
    return MixtureFit(weights=weights.numpy(), means=means.numpy(), covariances=covariances.numpy(),
                      lower_bound=lower_bound, n_iter=iteration, converged=converged)


def select_by_bic(X: np.ndarray, candidates, **options) -> tuple[MixtureFit, dict[int, float]]:
    """Fit a mixture for each number of components in ``candidates``; the one of lowest BIC and every BIC."""
    best, bics = None, {}
    for m in sorted(set(int(c) for c in candidates)):
        fit = fit_gaussian_mixture(X, m, **options)
        bics[m] = fit.bic(X)
        if best is None or bics[m] < bics[best.n_components]:
            best = fit
    return best, bics
