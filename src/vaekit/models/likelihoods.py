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
from torch.distributions import Bernoulli, Distribution, Independent, Normal, constraints

from ..errors import DataError

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

    def is_discrete(self, x: Tensor) -> bool:
        """Whether log p(x|z) is the log of a probability (not a density) for data like ``x``: bits/dim apply."""
        return False

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

    def is_discrete(self, x: Tensor) -> bool:
        return bool(((x == 0) | (x == 1)).all())


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


def log1mexp(t: Tensor) -> Tensor:
    """log(1 - exp(-t)) for t > 0, accurate for small and large t (Maechler 2012)."""
    return torch.where(t < math.log(2.0), torch.log(-torch.expm1(-t)), torch.log1p(-torch.exp(-t)))


class DiscretizedLogistic(Distribution):
    """A logistic distribution discretized to ``num_levels`` equally spaced values in [0, 1].

    Value k / (L - 1) gets the logistic mass of its bin [value - h, value + h], h = 1 / (2 (L - 1));
    the two end values also take the tails, so the L probabilities of every pixel sum to one
    (Salimans et al. 2017, PixelCNN++, with one mixture component).
    """

    arg_constraints = {"loc": constraints.real, "log_scale": constraints.real}
    support = constraints.unit_interval

    def __init__(self, loc: Tensor, log_scale: Tensor, num_levels: int = 256) -> None:
        self.loc, self.log_scale = torch.broadcast_tensors(loc, log_scale)
        self.num_levels = int(num_levels)
        super().__init__(self.loc.shape, validate_args=False)

    @property
    def half_bin(self) -> float:
        return 0.5 / (self.num_levels - 1)

    def log_prob(self, value: Tensor) -> Tensor:
        inv_scale = torch.exp(-self.log_scale)
        centred = value - self.loc
        upper = (centred + self.half_bin) * inv_scale  # standardized bin edges
        lower = (centred - self.half_bin) * inv_scale
        # log(sigmoid(u) - sigmoid(l)) = -l + log(1 - e^-(u - l)) - softplus(-u) - softplus(-l): no cancellation
        # in either tail, where the plain difference of two sigmoids would round to zero.
        interior = -lower + log1mexp(upper - lower) - F.softplus(-upper) - F.softplus(-lower)
        first = -F.softplus(-upper)  # value 0: everything below the first bin's upper edge
        last = -F.softplus(lower)  # value 1: everything above the last bin's lower edge
        eps = 0.25 / (self.num_levels - 1)
        return torch.where(value < eps, first, torch.where(value > 1 - eps, last, interior))

    def cdf_at(self, edge: Tensor | float) -> Tensor:
        return torch.sigmoid((edge - self.loc) * torch.exp(-self.log_scale))

    @property
    def mean(self) -> Tensor:
        """E[x] = sum over k >= 1 of P(x >= k / (L - 1)) / (L - 1), accumulated level by level."""
        step = 1.0 / (self.num_levels - 1)
        total = torch.zeros_like(self.loc)
        for k in range(1, self.num_levels):
            total += 1.0 - self.cdf_at((k - 0.5) * step)
        return total * step

    def sample_with(self, generator: torch.Generator | None = None) -> Tensor:
        """Inverse-CDF draw: a logistic value rounded to the nearest level and clipped to [0, 1]."""
        u = torch.rand(self.loc.shape, generator=generator, device=self.loc.device, dtype=self.loc.dtype)
        u = u.clamp(1e-7, 1 - 1e-7)
        continuous = self.loc + torch.exp(self.log_scale) * (torch.log(u) - torch.log1p(-u))
        levels = self.num_levels - 1
        return (continuous * levels).round().clamp(0, levels) / levels

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            if sample_shape:
                return torch.stack([self.sample_with() for _ in range(math.prod(sample_shape))]).reshape(
                    *sample_shape, *self.loc.shape)
            return self.sample_with()


class DiscretizedLogisticLikelihood(Likelihood):
    """8-bit (or L-level) images: a discretized logistic per value, decoder outputs its location and log-scale."""

    name = "discretized-logistic"
    params_per_value = 2
    description = "discretized logistic for 8-bit images (values k/255 in [0, 1]); reported also in bits/dim"

    # Scales below 1e-3 of the unit range are far narrower than one level (1/255) and only invite overflow.
    MIN_LOG_SCALE = math.log(1e-3)
    MAX_LOG_SCALE = MAX_LOG_STD

    def __init__(self, data_shape: tuple[int, ...], num_levels: int = 256) -> None:
        super().__init__(data_shape)
        self.num_levels = int(num_levels)

    def forward(self, params: Tensor) -> Distribution:
        # The location is centred on the middle of [0, 1] so that a zero decoder output means "grey".
        loc = self.param(params, 0) + 0.5
        log_scale = soft_clamp(self.param(params, 1), self.MIN_LOG_SCALE, self.MAX_LOG_SCALE)
        return self._independent(DiscretizedLogistic(loc, log_scale, self.num_levels))

    def check_data(self, x: Tensor) -> None:
        if not x.numel():
            return
        levels = self.num_levels - 1
        if x.min() < 0 or x.max() > 1:
            raise DataError(
                f"the discretized-logistic likelihood needs data in [0, 1], but the values range over "
                f"[{x.min().item():.4g}, {x.max().item():.4g}]")
        off_grid = ((x * levels) - (x * levels).round()).abs().max().item()
        if off_grid > 1e-3:
            raise DataError(
                f"the discretized-logistic likelihood with {self.num_levels} levels needs values that are multiples "
                f"of 1/{levels} (8-bit images scaled to [0, 1]); these data are not (off by up to {off_grid / levels:.3g})")

    def is_discrete(self, x: Tensor) -> bool:
        return True


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls
    for cls in (BernoulliLikelihood, GaussianLikelihood, LearnedGaussianLikelihood, DecoderGaussianLikelihood,
                DiscretizedLogisticLikelihood)
}

DISCRETE_LIKELIHOODS = ("discretized-logistic",)


def make_likelihood(name: str, data_shape: tuple[int, ...], gaussian_std: float = 1.0,
                    num_levels: int = 256) -> Likelihood:
    """Build the likelihood called ``name`` for examples of shape ``data_shape``."""
    cls = LIKELIHOODS[name]
    if cls is GaussianLikelihood:
        return GaussianLikelihood(data_shape, std=gaussian_std)
    if cls is DiscretizedLogisticLikelihood:
        return DiscretizedLogisticLikelihood(data_shape, num_levels=num_levels)
    return cls(data_shape)


def detect_levels(x: Tensor, most: int = 256) -> int | None:
    """The fewest equally spaced levels in [0, 1] (2..most) on which every value of ``x`` lies, or ``None``."""
    if not x.numel() or x.min() < 0 or x.max() > 1:
        return None
    values = torch.unique(x.flatten().double())
    for levels in range(2, most + 1):
        scaled = values * (levels - 1)
        if ((scaled - scaled.round()).abs() < 5e-5).all():  # float32 k/255 is off by at most 1.5e-5 levels
            return levels
    return None


def default_likelihood(kind: str) -> str:
    """The likelihood vaekit picks for a data kind: Bernoulli for [0, 1] data, a learned Gaussian otherwise."""
    return "bernoulli" if kind == "unit" else "gaussian-learned"
