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
# The data's marginal as the decoder's starting output: a value that is always 0 (or 1) starts at probability
# 1e-3 (or 1 - 1e-3), and a value that never varies at a spread of 0.01, not at a point mass.
MARGINAL_MIN_PROBABILITY = 1e-3
MARGINAL_MIN_STD = 0.01


def soft_clamp(x: Tensor, low: float, high: float) -> Tensor:
    """Keep ``x`` inside (low, high) smoothly: the identity far from the bounds, never a zero gradient.

    The deviation from the identity at distance d from a bound is log(1 + e^-d), so bounds far from
    the values a model uses (as for the posterior log-variance, see ``model.py``) bias nothing.
    """
    x = low + F.softplus(x - low)
    return high - F.softplus(high - x)


def soft_clamp_with_slope(x: Tensor, low: float, high: float) -> tuple[Tensor, Tensor]:
    """``soft_clamp(x, low, high)`` and its derivative with respect to ``x``, from the same two softplus terms:
    d/dx = sigmoid(high - inner) * sigmoid(x - low), where inner = low + softplus(x - low)."""
    inner = low + F.softplus(x - low)
    return high - F.softplus(high - inner), torch.sigmoid(high - inner) * torch.sigmoid(x - low)


def soft_clamp_inverse(y: Tensor, low: float, high: float) -> Tensor:
    """The ``x`` with ``soft_clamp(x, low, high) == y``, for ``y`` strictly inside (low, high)."""
    softplus_inverse = lambda t: t + torch.log(-torch.expm1(-t))  # noqa: E731  (log(e^t - 1), stable for large t)
    x = high - softplus_inverse(high - y)
    return low + softplus_inverse(x - low)


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

    def marginal_params(self, mean: Tensor, var: Tensor) -> Tensor | None:
        """Decoder outputs, shape ``(params_per_value, *mean.shape)``, of the best fit to the data that ignores z.

        ``mean`` and ``var`` are the data's mean and variance per value (or per channel). The model starts from
        these as its decoder's output bias, so that its first steps need not spend the code on the average
        example (see ``VAEModel.initialize_output_bias``). None where no such constant is defined here.
        """
        return None

    @property
    def has_marginal(self) -> bool:
        """Whether ``marginal_params`` gives a start here (the likelihoods that define one)."""
        return type(self).marginal_params is not Likelihood.marginal_params

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

    def marginal_params(self, mean: Tensor, var: Tensor) -> Tensor:
        return torch.logit(mean.clamp(MARGINAL_MIN_PROBABILITY, 1 - MARGINAL_MIN_PROBABILITY)).unsqueeze(0)


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

    def marginal_params(self, mean: Tensor, var: Tensor) -> Tensor:
        return mean.unsqueeze(0)


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

    def marginal_params(self, mean: Tensor, var: Tensor) -> Tensor:
        return mean.unsqueeze(0)  # the variance is this likelihood's own parameter, not the decoder's


class DecoderGaussianLikelihood(Likelihood):
    """Gaussian whose mean and diagonal variance are both outputs of the decoder."""

    name = "gaussian-decoder"
    params_per_value = 2
    description = "Gaussian whose mean and variance are both decoder outputs"

    def forward(self, params: Tensor) -> Distribution:
        loc = self.param(params, 0)
        log_std = (0.5 * self.param(params, 1)).clamp(MIN_LOG_STD, MAX_LOG_STD)
        return self._independent(Normal(loc, log_std.exp(), validate_args=False))

    def marginal_params(self, mean: Tensor, var: Tensor) -> Tensor:
        return torch.stack([mean, var.clamp_min(MARGINAL_MIN_STD**2).log()])


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

    def marginal_params(self, mean: Tensor, var: Tensor) -> Tensor:
        # A logistic with scale s has standard deviation s * pi / sqrt(3).
        scale = var.clamp_min(MARGINAL_MIN_STD**2).sqrt() * (math.sqrt(3) / math.pi)
        log_scale = scale.log().clamp(self.MIN_LOG_SCALE + 1e-3, self.MAX_LOG_SCALE - 1e-3)
        return torch.stack([mean - 0.5, soft_clamp_inverse(log_scale, self.MIN_LOG_SCALE, self.MAX_LOG_SCALE)])


_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class _FusedTableNLL(torch.autograd.Function):
    """``TableLikelihood.column_nll``'s value terms and their gradient in one autograd node (training only).

    The column terms are a few dozen small operations per kind of column; as separate autograd nodes their
    backward passes were about a third of a small table's training step. Here the forward pass takes the
    decoder's raw parameters, shape (*batch, 3, values), and computes the derivatives of every column's -log p
    with respect to each of its values' raw location, log-scale (through the soft clamp) and missingness logit
    (closed forms, listed in ``TableLikelihood._column_terms``); the backward pass is one product. Picking the
    three parameters out of the decoder's output and soft-clamping the scales inside this node, not as autograd
    operations of their own, saves their backward passes as well. Checked against the unfused terms and by
    ``torch.autograd.gradcheck`` (tests/test_table.py)."""

    @staticmethod
    def forward(ctx, params: Tensor, likelihood: "TableLikelihood", x0: Tensor, observed: Tensor) -> Tensor:
        with torch.no_grad():
            log_scale, clamp_slope = soft_clamp_with_slope(params.select(-2, 1), likelihood.MIN_LOG_SCALE,
                                                           likelihood.MAX_LOG_SCALE)
            derivatives = torch.zeros_like(params)
            out = likelihood._column_terms(params.select(-2, 0), log_scale, params.select(-2, 2), x0, observed,
                                           derivatives=derivatives)
            derivatives.select(-2, 1).mul_(clamp_slope)
        ctx.save_for_backward(derivatives)
        ctx.value_column = likelihood.value_column
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (derivatives,) = ctx.saved_tensors
        per_value = grad_out.index_select(-1, ctx.value_column).unsqueeze(-2)  # each value's column's gradient
        return derivatives * per_value, None, None, None


class TableDistribution(Distribution):
    """p(x|z) over one row of a mixed table (see ``TableLikelihood``); NaN values in ``x`` are missing cells."""

    arg_constraints: dict = {}

    def __init__(self, likelihood: "TableLikelihood", params: Tensor) -> None:
        self.likelihood, self.params = likelihood, params
        super().__init__(params.shape[:-2], validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        return -self.likelihood.column_nll(self.params, value).sum(-1)

    @property
    def mean(self) -> Tensor:
        return self.likelihood.mean_values(self.params)

    def sample_with(self, generator: torch.Generator | None = None) -> Tensor:
        return self.likelihood.draw(self.params, generator)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.sample_with()


class TableLikelihood(Likelihood):
    """A mixed table's row: one likelihood per column, summed into log p(x|z) (``vaekit.data.table``).

    Per encoded value the decoder gives three numbers: (location or logit, log-scale, missingness logit).

        continuous   Gaussian N(loc, s^2) on the standardized value, its density reported in the column's own
                     units (the Jacobian of the standardization is included: -log p gains log sd)
        integer      discretized Gaussian: P(k) = Phi((k + 1/2 - m) / S) - Phi((k - 1/2 - m) / S) on the
                     observed range [low, high], the two ends taking the tails, so P sums to one over it
        boolean      Bernoulli with the logit
        categorical  softmax over the column's logits (one per category)

    A missing cell (NaN) adds nothing to its column's term; for columns with missing cells in the training
    data whether a cell is missing is itself modelled, a Bernoulli on the missingness logit of the column's
    first value: the likelihood is then p(x_observed, m | z). Scales are soft-clamped to [0.01, 100] column
    standard deviations: a column with repeated values would otherwise let one spike dominate the loss.
    """

    name = "table"
    params_per_value = 3
    description = "mixed tables: Gaussian, discretized Gaussian, Bernoulli and softmax columns, missing cells masked"
    MIN_LOG_SCALE = math.log(1e-2)
    MAX_LOG_SCALE = math.log(1e2)

    def __init__(self, data_shape: tuple[int, ...], columns: list[dict]) -> None:
        super().__init__(data_shape)
        self.columns = [dict(c) for c in columns]
        first, at = [], 0
        for c in self.columns:
            first.append(at)
            at += int(c["width"])
        if len(self.data_shape) != 1 or at != self.data_shape[0]:
            raise DataError(f"the table columns encode to {at} values but the model's input has shape {self.data_shape}")
        kinds = [c["kind"] for c in self.columns]

        def index(kind: str) -> list[int]:
            return [i for i, k in enumerate(kinds) if k == kind]

        def buffer(name: str, values, dtype=torch.long) -> None:
            tensor = values.to(dtype) if isinstance(values, Tensor) else torch.tensor(values, dtype=dtype)
            self.register_buffer(name, tensor, persistent=False)

        self.n_columns = len(self.columns)
        buffer("first", first)
        buffer("value_column", [i for i, c in enumerate(self.columns) for _ in range(int(c["width"]))])
        positions = {}
        for kind in ("continuous", "integer", "boolean"):
            cols = index(kind)
            positions[kind] = [first[i] for i in cols]
            buffer(f"{kind}_cols", cols)
            buffer(f"{kind}_pos", positions[kind])
        buffer("cont_log_sd", [math.log(self.columns[i]["std"]) for i in index("continuous")], torch.float32)
        ints = [self.columns[i] for i in index("integer")]
        # Integer columns in standardized units: value z = (k - mean) / sd, bins of half-width 0.5 / sd.
        half = [0.5 / c["std"] for c in ints]
        low = [(c["low"] - c["mean"]) / c["std"] for c in ints]
        high = [(c["high"] - c["mean"]) / c["std"] for c in ints]
        buffer("int_low", low, torch.float64)
        buffer("int_high", high, torch.float64)
        buffer("int_mean", [c["mean"] for c in ints], torch.float64)
        buffer("int_sd", [c["std"] for c in ints], torch.float64)
        # ``_integer_terms`` handles both bin edges at once, stacked (upper, lower): their offsets from the value,
        # the side each points to, and where the value is the range's end on that side (then its edge is open).
        buffer("int_edge_offset", [half, [-h for h in half]], torch.float64)
        buffer("int_edge_side", [[1.0], [-1.0]], torch.float64)
        buffer("int_edge_end", [[b - 0.5 * h for b, h in zip(high, half)], [-(a + 0.5 * h) for a, h in zip(low, half)]],
               torch.float64)
        cats = index("categorical")
        widest = max([int(self.columns[i]["width"]) for i in cats], default=1)
        buffer("cat_cols", cats)
        # (categorical columns, widest) positions of each column's one-hot values; padding points at value 0.
        # (Every buffer is built from Python numbers: a model's skeleton is built on the meta device, where a
        # tensor operation such as torch.where imports torch's compiler, about a second of every command's start.)
        index = [[first[i] + j if j < self.columns[i]["width"] else 0 for j in range(widest)] for i in cats]
        pad = [[j >= self.columns[i]["width"] for j in range(widest)] for i in cats]
        buffer("cat_index", index or torch.zeros(0, widest, dtype=torch.long))
        buffer("cat_pad", pad or torch.zeros(0, widest, dtype=torch.bool), torch.bool)
        # The same positions category-major, for ``_categories``: (widest * categorical columns,)
        buffer("cat_flat", [index[c][j] for j in range(widest) for c in range(len(cats))])
        # ... with padding pointing one past the last value, where ``_categories`` puts its fill
        buffer("cat_gather", [self.data_shape[0] if pad[c][j] else index[c][j]
                              for j in range(widest) for c in range(len(cats))])
        missing = [i for i, c in enumerate(self.columns) if c.get("missing")]
        buffer("miss_cols", missing)
        buffer("miss_pos", [first[i] for i in missing])
        width = self.data_shape[0]
        self._read_positions = sorted([*range(width), *(width + p for p in positions["continuous"] + positions["integer"]),
                                       *(2 * width + first[i] for i in missing)])

    # Training: half the rows, chosen afresh at every step, show the encoder only some of their cells (each
    # hidden with this probability), so that q(z|x) learns to infer a row from the cells it has: what imputing
    # an empty cell, and scoring a row with empty cells, ask of it (the likelihood still scores every cell).
    HIDDEN_ROWS = 0.5
    HIDE_RATE = 0.25

    def read_positions(self) -> Tensor:
        """Where the parameters these column terms, means and draws read lie in the flattened (3, values) layout:
        parameter 0 (location or logit) of every value, 1 (log-scale) of continuous and integer values, 2
        (missingness logit) of the first value of a column with missing cells. The others are never read, so a
        decoder need not compute them (``ModelConfig.table_outputs``)."""
        return torch.tensor(self._read_positions, dtype=torch.long, device=self.first.device)

    def hide_cells(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``x`` with cells hidden (NaN, whole columns' values) for the encoder's eyes only."""
        shape = (*x.shape[:-1], self.n_columns)
        u = torch.rand(shape, generator=generator, device=x.device)
        rows = torch.rand((*x.shape[:-1], 1), generator=generator, device=x.device) < self.HIDDEN_ROWS
        hidden = rows & (u < self.HIDE_RATE)  # (*batch, columns)
        per_value = hidden.index_select(-1, self.value_column)
        return x.masked_fill(per_value, math.nan)

    def forward(self, params: Tensor) -> Distribution:
        return TableDistribution(self, params)

    def negative_log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        return self.column_nll(params, x).sum(-1)

    def _parts(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        loc = self.param(params, 0)
        log_scale = soft_clamp(self.param(params, 1), self.MIN_LOG_SCALE, self.MAX_LOG_SCALE)
        return loc, log_scale, self.param(params, 2)

    # Training computes the column terms and their gradients in one autograd node (``_FusedTableNLL``); evaluation,
    # and anything that differentiates twice or under torch.func, takes the plain operations below.
    fused = True

    def column_nll(self, params: Tensor, x: Tensor) -> Tensor:
        """-log p of every column of every row, shape (*batch, columns); a missing cell's value term is 0."""
        x = x.to(params.dtype).expand(*params.shape[:-2], params.shape[-1])
        observed_values = ~torch.isnan(x)
        x0 = torch.where(observed_values, x, torch.zeros_like(x))  # no NaN reaches a gradient
        observed = observed_values.index_select(-1, self.first)  # (*batch, columns)
        if self.fused and self.training and torch.is_grad_enabled() and params.requires_grad:
            return _FusedTableNLL.apply(params, self, x0, observed)
        loc, log_scale, miss_logit = self._parts(params)
        return self._column_terms(loc, log_scale, miss_logit, x0, observed)

    def _categories(self, values: Tensor, fill: float) -> Tensor:
        """The categorical columns' values of ``values`` (*batch, V) as (widest, *batch, categorical columns), the
        padding slots of narrower columns set to ``fill``. Softmax over the leading axis: PyTorch's CPU softmax over
        a short last axis (a few categories) was about ten times slower."""
        widest, cats = self.cat_pad.shape[1], self.cat_pad.shape[0]
        extended = torch.cat([values, values.new_full((*values.shape[:-1], 1), fill)], -1)
        return extended.index_select(-1, self.cat_gather).unflatten(-1, (widest, cats)).movedim(-2, 0)

    def _column_terms(self, loc: Tensor, log_scale: Tensor, miss_logit: Tensor, x0: Tensor, observed: Tensor,
                      derivatives: Tensor | None = None) -> Tensor:
        """The column terms -log p (*batch, columns), differentiable by autograd. With ``derivatives`` (for
        ``_FusedTableNLL``, under no_grad: zeros of shape (*batch, 3, values)) it also writes there the derivative
        of each value's column term with respect to the value's location, log-scale and missingness logit:

            continuous   t = (x - m) e^-s:       d/dm = -t e^-s,          d/ds = 1 - t^2
            integer      P = Phi(u) - Phi(l), u, l = (k +- 1/2 - m) e^-s in standardized units:
                         d/dm = e^-s (phi(u) - phi(l)) / P,   d/ds = (u phi(u) - l phi(l)) / P
                         (at the range's ends the open tail: phi(l) = 0 at the low end, phi(u) = 0 at the high)
            boolean      d/dlogit = sigmoid(logit) - x
            categorical  d/dlogit_j = softmax_j - onehot_j
            missingness  d/dlogit = sigmoid(logit) - missing

        Value terms of missing cells, and their derivatives, are 0."""
        out = loc.new_zeros(*loc.shape[:-1], self.n_columns)
        d_loc = d_scale = d_miss = None
        if derivatives is not None:
            d_loc, d_scale, d_miss = derivatives.unbind(-2)  # views: written in place
        if len(self.continuous_pos):
            p = self.continuous_pos
            scale = log_scale.index_select(-1, p)
            inv = torch.exp(-scale)
            t = (x0.index_select(-1, p) - loc.index_select(-1, p)) * inv
            nll = 0.5 * t * t + scale + _LOG_SQRT_2PI + self.cont_log_sd.to(t.dtype)
            out.index_copy_(-1, self.continuous_cols, nll)
            if d_loc is not None:
                d_loc.index_copy_(-1, p, -t * inv)
                d_scale.index_copy_(-1, p, 1 - t * t)
        if len(self.integer_pos):
            if d_loc is not None:
                nll, dm, ds = self._integer_nll_and_grads(loc, log_scale, x0)
                d_loc.index_copy_(-1, self.integer_pos, dm.to(out.dtype))
                d_scale.index_copy_(-1, self.integer_pos, ds.to(out.dtype))
            else:
                nll = self._integer_nll(loc, log_scale, x0)
            out = out.index_copy(-1, self.integer_cols, nll.to(out.dtype))
        if len(self.boolean_pos):
            p = self.boolean_pos
            logit, target = loc.index_select(-1, p), x0.index_select(-1, p)
            out = out.index_copy(-1, self.boolean_cols,
                                 F.binary_cross_entropy_with_logits(logit, target, reduction="none"))
            if d_loc is not None:
                d_loc.index_copy_(-1, p, torch.sigmoid(logit) - target)
        if len(self.cat_cols):
            # Padding as a finite logit far below any other: probability 0, and 0 * log p = 0 with no masking.
            logits = self._categories(loc, torch.finfo(loc.dtype).min / 4)  # (widest, *batch, cats)
            onehot = self._categories(x0, 0.0)
            log_p = torch.log_softmax(logits, 0)
            out = out.index_copy(-1, self.cat_cols, -(onehot * log_p).sum(0))
            if d_loc is not None:
                grad = log_p.exp() * onehot.sum(0, keepdim=True) - onehot
                # back to value positions; a padding slot (a position already used) adds 0
                d_loc.index_add_(-1, self.cat_flat, grad.movedim(0, -2).flatten(-2))
        out = torch.where(observed, out, torch.zeros_like(out))
        if derivatives is not None:
            seen = observed.index_select(-1, self.value_column).to(loc.dtype)
            derivatives.select(-2, 0).mul_(seen)
            derivatives.select(-2, 1).mul_(seen)
        if len(self.miss_cols):
            target = (~observed.index_select(-1, self.miss_cols)).to(loc.dtype)
            logit = miss_logit.index_select(-1, self.miss_pos)
            out = out.index_add(-1, self.miss_cols, F.binary_cross_entropy_with_logits(logit, target, reduction="none"))
            if d_miss is not None:
                d_miss.index_copy_(-1, self.miss_pos, torch.sigmoid(logit) - target)
        return out

    def _integer_nll_and_grads(self, loc: Tensor, log_scale: Tensor, x0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``_integer_nll`` and its derivatives with respect to the location and the log-scale (float64)."""
        nll, edges, inv = self._integer_terms(loc, log_scale, x0)
        # phi(u) / P and phi(l) / P as exp(log phi - log P): finite wherever -log P is; 0 at an open edge
        ratio = torch.exp(nll - 0.5 * edges * edges - _LOG_SQRT_2PI)
        dm = inv * (ratio[0] - ratio[1])
        weighted = edges * ratio
        return nll, dm, weighted[0] - weighted[1]

    def _integer_nll(self, loc: Tensor, log_scale: Tensor, x0: Tensor) -> Tensor:
        """-log P(k) of the discretized Gaussian, in float64: bins can be narrow next to the scale."""
        return self._integer_terms(loc, log_scale, x0)[0]

    # An open bin edge (the range's ends take the tails) as a finite standardized edge this far out: Phi there is
    # 0 or 1 to float64 precision, and edge * phi(edge) is 0, not the NaN that infinity * 0 would give.
    FAR_EDGE = 1e10

    def _integer_terms(self, loc: Tensor, log_scale: Tensor, x0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-log P(k), the standardized bin edges stacked (upper u, lower l) on a leading axis, and e^-s (float64).

        Both edges go through each operation together; an end of the observed range gets the open tail on its
        side (u = +FAR_EDGE at the high end, l = -FAR_EDGE at the low end), so one formula covers every case."""
        p = self.integer_pos
        m = loc.index_select(-1, p).double()
        inv = torch.exp(-log_scale.index_select(-1, p).double())
        z = x0.index_select(-1, p).double()
        side = self.int_edge_side.view(2, *([1] * z.dim()))
        offset = self.int_edge_offset.view(2, *([1] * (z.dim() - 1)), -1)
        end = self.int_edge_end.view(2, *([1] * (z.dim() - 1)), -1)
        edges = torch.where(z * side >= end, side * self.FAR_EDGE, (z + offset - m) * inv)
        # log(Phi(u) - Phi(l)) with both edges moved to the left tail by symmetry, where log Phi is accurate:
        # (b, a) = (u, l), or (-l, -u) when the bin lies right of the centre.
        flip = edges.sum(0) > 0
        log_ba = torch.special.log_ndtr(torch.where(flip, -edges.flip(0), edges))
        log_b, log_a = log_ba.unbind(0)
        log_p = log_b + log1mexp((log_b - log_a).clamp_min(1e-300))
        return -log_p, edges, inv

    def mean_values(self, params: Tensor) -> Tensor:
        """Model values a reconstruction shows: locations, P(true) for booleans, category probabilities."""
        loc, _, _ = self._parts(params)
        out = loc.clone()
        if len(self.boolean_pos):
            out[..., self.boolean_pos] = torch.sigmoid(loc[..., self.boolean_pos])
        if len(self.cat_cols):
            probs = torch.softmax(loc[..., self.cat_index].masked_fill(self.cat_pad, -math.inf), -1)
            for row, index in enumerate(self.cat_index):
                width = int((~self.cat_pad[row]).sum())
                out[..., index[:width]] = probs[..., row, :width]
        if len(self.integer_pos):
            out[..., self.integer_pos] = self._round_integers(out[..., self.integer_pos])
        return out

    def _round_integers(self, z: Tensor) -> Tensor:
        k = (z.double() * self.int_sd + self.int_mean).round()
        k = torch.minimum(torch.maximum(k, self.int_low * self.int_sd + self.int_mean), self.int_high * self.int_sd + self.int_mean)
        return ((k - self.int_mean) / self.int_sd).to(z.dtype)

    def draw(self, params: Tensor, generator: torch.Generator | None = None, missing: bool = True) -> Tensor:
        """One row per set of parameters: every column drawn from its likelihood, cells left missing (NaN) at the
        modelled rates (``missing=False``: every cell filled)."""
        loc, log_scale, miss_logit = self._parts(params)

        def uniform(shape) -> Tensor:
            return torch.rand(shape, generator=generator, device=loc.device, dtype=loc.dtype)

        out = loc.clone()
        for pos in (self.continuous_pos, self.integer_pos):
            if len(pos):
                noise = torch.randn(loc[..., pos].shape, generator=generator, device=loc.device, dtype=loc.dtype)
                out[..., pos] = loc[..., pos] + torch.exp(log_scale[..., pos]) * noise
        if len(self.integer_pos):
            out[..., self.integer_pos] = self._round_integers(out[..., self.integer_pos])
        if len(self.boolean_pos):
            p = self.boolean_pos
            out[..., p] = (uniform(loc[..., p].shape) < torch.sigmoid(loc[..., p])).to(loc.dtype)
        if len(self.cat_cols):
            probs = torch.softmax(loc[..., self.cat_index].masked_fill(self.cat_pad, -math.inf), -1)
            flat = probs.reshape(-1, probs.shape[-1])
            choice = torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
            onehot = F.one_hot(choice, probs.shape[-1]).to(loc.dtype)
            for row, index in enumerate(self.cat_index):
                width = int((~self.cat_pad[row]).sum())
                out[..., index[:width]] = onehot[..., row, :width]
        if missing and len(self.miss_cols):
            gone = uniform(miss_logit[..., self.miss_pos].shape) < torch.sigmoid(miss_logit[..., self.miss_pos])
            for j, col in enumerate(self.miss_cols.tolist()):
                start, width = int(self.first[col]), int(self.columns[col]["width"])
                out[..., start:start + width] = out[..., start:start + width].masked_fill(gone[..., j:j + 1], math.nan)
        return out

    def check_data(self, x: Tensor) -> None:
        if x.numel() and torch.isinf(x).any():
            raise DataError("the table's encoded values hold infinite values")


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls
    for cls in (BernoulliLikelihood, GaussianLikelihood, LearnedGaussianLikelihood, DecoderGaussianLikelihood,
                DiscretizedLogisticLikelihood, TableLikelihood)
}

DISCRETE_LIKELIHOODS = ("discretized-logistic",)


def make_likelihood(name: str, data_shape: tuple[int, ...], gaussian_std: float = 1.0,
                    num_levels: int = 256, table_columns: list[dict] | None = None) -> Likelihood:
    """Build the likelihood called ``name`` for examples of shape ``data_shape``."""
    cls = LIKELIHOODS[name]
    if cls is TableLikelihood:
        if not table_columns:
            raise DataError("the table likelihood needs the table's columns (a run trained on a table file or DataFrame)")
        return TableLikelihood(data_shape, table_columns)
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
    if kind == "table":
        return "table"
    return "bernoulli" if kind == "unit" else "gaussian-learned"
