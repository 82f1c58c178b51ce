"""Priors p(z) over the latent space."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal


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

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``num_samples`` latent vectors (the encoder is not involved)."""
        return torch.randn(num_samples, self.latent_dim, generator=generator,
                           device=self.loc.device, dtype=self.loc.dtype)
