"""Priors p(z) over the (top) latent layer: the standard normal, and the VampPrior.

A prior gives a ``torch.distributions`` object over latent vectors. The VampPrior (Tomczak and
Welling 2018) is a uniform mixture of the encoder's posteriors at learned pseudo-inputs,

    p(z) = 1/K sum_k q(z | u_k),

so the model builds its components (it owns the encoder) and this module turns them into the mixture.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I); its KL to a diagonal Gaussian posterior has a closed form."""

    name = "standard-normal"

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def distribution(self) -> Distribution:
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1, validate_args=False)

    @staticmethod
    def kl_from(q: Normal) -> Tensor:
        """KL(q || N(0, 1)) per dimension for a diagonal Gaussian q: (mu^2 + sigma^2 - 1) / 2 - log sigma, the
        closed form ``kl_divergence`` gives for two Normals with the prior's 0 and 1 put in (fewer operations: it
        is on every training step)."""
        return 0.5 * (q.loc.square() + q.scale.square() - 1) - q.scale.log()

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``num_samples`` latent vectors (the encoder is not involved)."""
        return torch.randn(num_samples, self.latent_dim, generator=generator,
                           device=self.loc.device, dtype=self.loc.dtype)


class VampPrior(nn.Module):
    """p(z) = 1/K sum_k q(z | u_k) over K learned pseudo-inputs u_k (Tomczak and Welling 2018).

    For data in [0, 1] the pseudo-inputs are kept inside it by a sigmoid (the paper clips them with a
    hard tanh, which stops the gradient of a clipped value for good).
    """

    name = "vamp"

    def __init__(self, latent_dim: int, input_shape: tuple[int, ...], num_components: int, unit_data: bool) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.unit_data = unit_data
        # Unit data: sigmoid(N(0, 0.1)) is mid-grey with a little noise; real-valued data: near the origin.
        self.pseudo_inputs = nn.Parameter(0.1 * torch.randn(num_components, *input_shape))

    @property
    def num_components(self) -> int:
        return self.pseudo_inputs.shape[0]

    def inputs(self) -> Tensor:
        """The pseudo-inputs as the encoder sees them."""
        return torch.sigmoid(self.pseudo_inputs) if self.unit_data else self.pseudo_inputs

    def distribution(self, loc: Tensor, scale: Tensor) -> MixtureSameFamily:
        """The mixture for component posteriors N(loc_k, diag(scale_k^2)), each of shape (K, latent_dim)."""
        return DiagonalGaussianMixture(loc, scale)

    @staticmethod
    def sample_from(mixture: MixtureSameFamily, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """A component drawn uniformly for each sample, then a Gaussian draw from it."""
        loc, scale = mixture.component_distribution.base_dist.loc, mixture.component_distribution.base_dist.scale
        index = torch.randint(loc.shape[0], (num_samples,), generator=generator, device=loc.device)
        eps = torch.randn(num_samples, loc.shape[1], generator=generator, device=loc.device, dtype=loc.dtype)
        return loc[index] + scale[index] * eps


class DiagonalGaussianMixture(MixtureSameFamily):
    """A uniform mixture of diagonal Gaussians whose ``log_prob`` runs on matrix products.

    sum_d (z_d - m_kd)^2 / s_kd^2 = z^2 . (1/s_k^2) - 2 z . (m_k/s_k^2) + sum_d m_kd^2/s_kd^2: two products of
    (samples x latent_dim) by (latent_dim x K) instead of a (samples x K x latent_dim) tensor, which for the
    VampPrior (K = 500) would be the largest tensor of the model. Equal to ``MixtureSameFamily.log_prob``
    up to float rounding (tested).
    """

    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        weights = Categorical(logits=torch.zeros(loc.shape[0], device=loc.device, dtype=loc.dtype), validate_args=False)
        components = Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)
        super().__init__(weights, components, validate_args=False)
        precision = scale.pow(-2)
        self._precision_t = precision.T.contiguous()
        self._scaled_loc_t = (loc * precision).T.contiguous()
        self._constant = (-0.5 * (loc * loc * precision).sum(-1) - torch.log(scale).sum(-1)
                          - 0.5 * loc.shape[1] * math.log(2 * math.pi) - math.log(loc.shape[0]))

    def log_prob(self, value: Tensor) -> Tensor:
        flat = value.reshape(-1, value.shape[-1])
        per_component = torch.addmm(self._constant, flat * flat, self._precision_t, alpha=-0.5)
        per_component = torch.addmm(per_component, flat, self._scaled_loc_t)
        return torch.logsumexp(per_component, dim=-1).reshape(value.shape[:-1])


# Values of one (rows, components, latent_dim) block of the mixture's per-dimension densities: 64 MiB of float32.
MIXTURE_BLOCK_VALUES = 2**24


def log_prob_per_dim(prior: Distribution, z: Tensor) -> Tensor:
    """log p(z_d) for every dimension d, shape (..., latent_dim).

    For a factorized prior these sum to log p(z). For a mixture (the VampPrior) they are the log-densities
    of its one-dimensional marginals, which do not: the mixture couples the dimensions. Those need every
    component's density of every value, so the rows of ``z`` are taken in blocks of bounded memory (one
    evaluation's 64 samples x 1024 examples x 500 components x 50 dimensions would be 6.5 GB at once).
    """
    if isinstance(prior, MixtureSameFamily):
        base = prior.component_distribution.base_dist
        flat = z.reshape(-1, z.shape[-1])
        rows = max(1, MIXTURE_BLOCK_VALUES // base.loc.numel())
        blocks = [torch.logsumexp(base.log_prob(block.unsqueeze(-2)), dim=-2) for block in flat.split(rows)]
        return (torch.cat(blocks) - math.log(base.loc.shape[0])).reshape(z.shape)
    return prior.base_dist.log_prob(z)
