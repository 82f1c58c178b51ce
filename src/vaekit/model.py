"""The VAE itself: encoder q(z|x), reparameterized sampling, decoder p(x|z), prior p(z), ELBO.

    q(z|x) = N(mu(x), diag(sigma(x)^2))        mean head and log-variance head on the encoder body
    z      = mu + sigma * eps, eps ~ N(0, I)   the reparameterization trick: gradients reach mu and sigma
    p(x|z)                                     a likelihood from ``vaekit.likelihoods`` on the decoder output
    -ELBO  = E_q[-log p(x|z)] + KL(q(z|x) || p(z))   in nats per example, KL in closed form
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, kl_divergence

from .config import ModelConfig
from .likelihoods import make_likelihood, soft_clamp
from .networks import build_decoder, build_encoder
from .priors import StandardNormalPrior

# Posterior log-variances are kept in this range (smoothly, see ``soft_clamp``): wide enough that a
# well-behaved model never gets near it, narrow enough that exp() neither underflows nor overflows.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


@dataclass
class ElboTerms:
    """Per-example parts of the negative ELBO, in nats: ``reconstruction`` = -log p(x|z), ``kl``."""

    reconstruction: Tensor
    kl: Tensor
    kl_per_dim: Tensor

    @property
    def neg_elbo(self) -> Tensor:
        return self.reconstruction + self.kl


class VAEModel(nn.Module):
    """A variational autoencoder built from a ``ModelConfig``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder, features = build_encoder(config)
        self.mean_head = nn.Linear(features, config.latent_dim)
        self.logvar_head = nn.Linear(features, config.latent_dim)
        self.likelihood = make_likelihood(config.likelihood, config.input_shape, config.gaussian_std)
        self.decoder = build_decoder(config, self.likelihood.params_per_value)
        self.prior = StandardNormalPrior(config.latent_dim)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.config.input_shape

    # --- inference network -------------------------------------------------------------------
    def posterior_params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z|x), each of shape (batch, latent_dim)."""
        features = self.encoder(x)
        logvar = soft_clamp(self.logvar_head(features), LOGVAR_MIN, LOGVAR_MAX)
        return self.mean_head(features), logvar

    def encode(self, x: Tensor) -> Distribution:
        """q(z|x) as a distribution with event shape (latent_dim,)."""
        mu, logvar = self.posterior_params(x)
        return Independent(Normal(mu, torch.exp(0.5 * logvar), validate_args=False), 1, validate_args=False)

    @staticmethod
    def reparameterize(mu: Tensor, std: Tensor, num_samples: int | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """z = mu + std * eps with eps ~ N(0, I); with ``num_samples`` the result has a leading sample axis."""
        shape = mu.shape if num_samples is None else (num_samples, *mu.shape)
        eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + std * eps

    # --- generative network ------------------------------------------------------------------
    def decoder_params(self, z: Tensor) -> Tensor:
        """The likelihood's parameters for latent vectors of shape (..., latent_dim), batch axes kept."""
        params = self.decoder(z.reshape(-1, z.shape[-1]))
        return params.reshape(*z.shape[:-1], *params.shape[1:])

    def decode(self, z: Tensor) -> Distribution:
        """p(x|z) for latent vectors of shape (..., latent_dim); batch axes before the last are kept."""
        return self.likelihood(self.decoder_params(z))

    def sample_latent(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        return self.prior.sample(num_samples, generator=generator)

    # --- objectives --------------------------------------------------------------------------
    def elbo_terms(self, x: Tensor, generator: torch.Generator | None = None) -> ElboTerms:
        """One-sample reconstruction term and closed-form KL for every example of ``x``."""
        q = self.encode(x)
        z = self.reparameterize(q.base_dist.loc, q.base_dist.scale, generator=generator)
        reconstruction = self.likelihood.negative_log_prob(self.decoder_params(z), x)  # = -decode(z).log_prob(x)
        kl_per_dim = kl_divergence(q.base_dist, self.prior.distribution().base_dist)
        return ElboTerms(reconstruction=reconstruction, kl=kl_per_dim.sum(-1), kl_per_dim=kl_per_dim)

    def log_importance_weights(self, x: Tensor, num_samples: int,
                               generator: torch.Generator | None = None) -> Tensor:
        """log p(x, z_k) - log q(z_k|x) for z_k ~ q(z|x), shape (num_samples, batch)."""
        q = self.encode(x)
        z = self.reparameterize(q.base_dist.loc, q.base_dist.scale, num_samples=num_samples, generator=generator)
        log_px_z = self.decode(z).log_prob(x)
        return log_px_z + self.prior.distribution().log_prob(z) - q.log_prob(z)
