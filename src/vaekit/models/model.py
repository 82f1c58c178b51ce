"""The VAE itself: encoder q(z|x), reparameterized sampling, decoder p(x|z), prior p(z), ELBO.

    q(z|x) = N(mu(x), diag(sigma(x)^2))        mean head and log-variance head on the encoder body
    z      = mu + sigma * eps, eps ~ N(0, I)   the reparameterization trick: gradients reach mu and sigma
    p(x|z)                                     a likelihood from ``vaekit.models.likelihoods`` on the decoder output
    -ELBO  = E_q[-log p(x|z)] + KL(q(z|x) || p(z))   in nats per example, KL in closed form

With more stochastic layers (Burda et al. 2016) z = (z_1, ..., z_L) and both directions are chains,

    q(z|x) = q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1})        p(x, z) = p(x|z_1) p(z_1|z_2) ... p(z_L),

every conditional a diagonal Gaussian from a small MLP (``StochasticLayer``). One layer is the case
L = 1: the same modules, names and numbers as a plain VAE. The KL term is then the Monte Carlo estimate
E_q[log q(z|x) - log p(z)], in closed form wherever it has one (the top layer under a normal prior).

With ``inference="top-down"`` (the Ladder VAE, Sønderby et al. 2016) the generative chain is the same,
but q runs from the top. A deterministic bottom-up pass d_1 = encoder(x), d_{i+1} = MLP(d_i) gives every
layer a Gaussian N(mu_hat_i, var_hat_i); then

    q(z_L|x)           = N(mu_hat_L, var_hat_L)
    q(z_i|x, z_{i+1})  = N(mu_q, var_q),  var_q = 1 / (1/var_hat_i + 1/var_p),  mu_q = var_q (mu_hat_i/var_hat_i + mu_p/var_p)

with N(mu_p, var_p) = p(z_i|z_{i+1}) (Sønderby et al. eq. 17-18). Both Gaussians of layer i condition on
the same z_{i+1}, so its KL term KL(q(z_i|x, z_{i+1}) || p(z_i|z_{i+1})) is in closed form for the drawn
z_{i+1}: the ELBO is E_q[log p(x|z_1)] - sum_i E_q[KL_i], with lower variance than the single-sample
estimate. ``encode``/``posterior_params`` give q(z_1|x, z_2) along the mean path (z_L at its mean, each
layer below at the mean of its q given the mean above), a deterministic code for z_1.

With ``num_classes`` set the model is a conditional VAE (Sohn et al. 2015): q(z|x, y) and p(x|z, y) read the
one-hot label y (the encoder beside x: extra values after an MLP's flattened input, constant extra channels of a
convolutional encoder's image; the decoder beside z_1), the prior stays p(z), and every bound is one on
log p(x|y). Every method that takes x or z then also takes ``y``, the class indices, shape (batch,).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, kl_divergence

from ..allocator import tune_allocator
from ..config import ModelConfig
from .likelihoods import DISCRETE_LIKELIHOODS, make_likelihood, soft_clamp
from .networks import build_decoder, build_encoder, join_label, mlp
from .priors import StandardNormalPrior, VampPrior, log_prob_per_dim

# Posterior log-variances are kept in this range (smoothly, see ``soft_clamp``): wide enough that a
# well-behaved model never gets near it, narrow enough that exp() neither underflows nor overflows.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class ElboTerms:
    """Per-example parts of the negative ELBO, in nats: ``reconstruction`` = -log p(x|z), ``kl``.

    ``kl_per_dim`` has one column per latent dimension (all layers, bottom first). Under a factorized
    prior its rows sum to ``kl``; under the VampPrior the top layer's columns are measured against the
    prior's one-dimensional marginals, a diagnostic that does not sum to the exact ``kl``. It is
    computed when first asked for (for the VampPrior it costs more than the rest of the terms).
    """

    def __init__(self, reconstruction: Tensor, kl: Tensor, kl_per_dim: Tensor | Callable[[], Tensor]) -> None:
        self.reconstruction = reconstruction
        self.kl = kl
        self._kl_per_dim = kl_per_dim

    @property
    def kl_per_dim(self) -> Tensor:
        if callable(self._kl_per_dim):
            self._kl_per_dim = self._kl_per_dim()
        return self._kl_per_dim

    @property
    def neg_elbo(self) -> Tensor:
        return self.reconstruction + self.kl


def full_precision(t: Tensor) -> Tensor:
    """bf16/fp16 network outputs (under torch.autocast) as float32; float32 and float64 pass unchanged."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def diagonal_gaussian(mu: Tensor, logvar: Tensor) -> Independent:
    return Independent(Normal(mu, torch.exp(0.5 * logvar), validate_args=False), 1, validate_args=False)


class GaussianConditional(nn.Module):
    """An MLP from one vector to the mean and log-variance of a diagonal Gaussian over another."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], n_out: int, activation: str) -> None:
        super().__init__()
        self.body = mlp([n_in, *hidden], activation, final_activation=True) if hidden else nn.Identity()
        features = hidden[-1] if hidden else n_in
        self.mean_head = nn.Linear(features, n_out)
        self.logvar_head = nn.Linear(features, n_out)

    def forward(self, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.heads(self.body(v.reshape(-1, v.shape[-1])), v.shape[:-1])

    def heads(self, features: Tensor, batch_shape: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor]:
        """Mean and (soft-clamped) log-variance from the body's output ``features`` of shape (rows, width)."""
        batch_shape = features.shape[:-1] if batch_shape is None else batch_shape
        # Under mixed precision the networks run in bf16/fp16, the probabilistic part in float32.
        mu = full_precision(self.mean_head(features)).reshape(*batch_shape, -1)
        logvar = soft_clamp(full_precision(self.logvar_head(features)), LOGVAR_MIN, LOGVAR_MAX).reshape(*batch_shape, -1)
        return mu, logvar


class StochasticLayer(nn.Module):
    """A stochastic layer above the first: inference q(z_above | z_below), generative p(z_below | z_above).

    Under top-down inference ``inference`` takes the deterministic features d_below of width
    ``inference_in`` instead of z_below: its body gives d_above, its heads (mu_hat, logvar_hat) of z_above.
    """

    def __init__(self, below_dim: int, above_dim: int, hidden: tuple[int, ...], activation: str,
                 inference_in: int | None = None) -> None:
        super().__init__()
        self.inference = GaussianConditional(below_dim if inference_in is None else inference_in, hidden, above_dim,
                                             activation)
        self.generative = GaussianConditional(above_dim, tuple(reversed(hidden)), below_dim, activation)


class VAEModel(nn.Module):
    """A variational autoencoder built from a ``ModelConfig``: one or more stochastic layers."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        tune_allocator()  # once per process: freed activations stay in the heap for the next batch (allocator.py)
        self.config = config
        self.num_classes = config.num_classes or 0
        self.encoder, features = build_encoder(config)
        self.mean_head = nn.Linear(features, config.latent_dim)
        self.logvar_head = nn.Linear(features, config.latent_dim)
        self.likelihood = make_likelihood(config.likelihood, config.input_shape, config.gaussian_std,
                                          config.num_levels, config.table_columns)
        used = config.table_columns is not None and config.table_outputs == "used"
        reads = self.likelihood.read_positions() if used else None
        self.decoder = build_decoder(config, self.likelihood.params_per_value, reads)
        dims = self.latent_dims
        # Empty for a one-layer model, which therefore has exactly the weights (and names) of a plain VAE.
        # Top-down: the inference MLPs chain the deterministic features, d_1 (the encoder's) to d_L.
        widths = [features] + [config.upper_hidden[-1] if config.upper_hidden else features] * (len(dims) - 2)
        self.upper_layers = nn.ModuleList(
            StochasticLayer(below, above, config.upper_hidden, config.activation,
                            inference_in=width if config.inference == "top-down" else None)
            for below, above, width in zip(dims[:-1], dims[1:], widths))
        if config.prior == "vamp":
            unit_data = config.likelihood in ("bernoulli", *DISCRETE_LIKELIHOODS)
            self.prior = VampPrior(dims[-1], config.input_shape, config.vamp_components, unit_data)
        else:
            self.prior = StandardNormalPrior(dims[-1])

    @property
    def latent_dim(self) -> int:
        """Size of the first stochastic layer, the code that ``encode`` gives and ``decode`` takes."""
        return self.config.latent_dim

    @property
    def latent_dims(self) -> tuple[int, ...]:
        """Sizes of all stochastic layers, from the one next to the data to the top."""
        return (self.config.latent_dim, *self.config.upper_latent_dims)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.config.input_shape

    @property
    def top_down(self) -> bool:
        """Whether q runs top-down (Ladder VAE); a one-layer model is the same either way and says False."""
        return self.config.inference == "top-down" and len(self.upper_layers) > 0

    @property
    def conditional(self) -> bool:
        """Whether q and p see a label y beside x and z (a conditional VAE, Sohn et al. 2015)."""
        return self.num_classes > 0

    def label_one_hot(self, y: Tensor | None, dtype: torch.dtype = torch.float32) -> Tensor | None:
        """The one-hot labels of a conditional model, shape (batch, num_classes); None for an unconditional one.

        ``y`` holds class indices (``config.class_names`` order); a conditional model refuses to run without them.
        """
        if not self.num_classes:
            if y is not None:
                raise ValueError("this model is not conditional: it takes no labels")
            return None
        if y is None:
            raise ValueError("this model is conditional: pass the examples' labels (class indices) as y")
        return torch.nn.functional.one_hot(y.long(), self.num_classes).to(dtype)

    def _encoder_input(self, x: Tensor, y: Tensor | None) -> Tensor:
        one_hot = self.label_one_hot(y, x.dtype)
        return x if one_hot is None else join_label(x, one_hot, planes=self.config.arch == "conv")

    # --- inference network -------------------------------------------------------------------
    def first_layer_params(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The encoder and its heads: q(z_1|x) bottom-up, (mu_hat_1, logvar_hat_1) top-down (given y if conditional)."""
        # Called on the one-layer encoder of ``anomaly.regret`` too, which holds just these three modules.
        if y is not None or getattr(self, "num_classes", 0):
            x = self._encoder_input(x, y)
        return VAEModel._first_heads(self, self.encoder(x))  # type: ignore[arg-type]

    def _first_heads(self, features: Tensor) -> tuple[Tensor, Tensor]:
        # Under mixed precision (torch.autocast) only the networks run in bf16/fp16; densities,
        # KL terms and their sums stay in float32 (a no-op without autocast).
        logvar = soft_clamp(full_precision(self.logvar_head(features)), LOGVAR_MIN, LOGVAR_MAX)
        return full_precision(self.mean_head(features)), logvar

    def posterior_params(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z_1|x), each of shape (batch, latent_dim).

        Top-down: of q(z_1|x, z_2) with z_2 on the mean path (z_L = mu_hat_L, then each layer at the
        mean of its q given the one above); the exact E_q[z_1|x] is ``posterior_means``' Monte Carlo average.
        """
        if not self.top_down:
            return self.first_layer_params(x, y)
        params = self.bottom_up_params(x, y)
        mu, logvar = params[-1]
        for i in reversed(range(len(self.upper_layers))):
            mu, logvar = self.precision_weighted(*params[i], *self.upper_layers[i].generative(mu))
        return mu, logvar

    def bottom_up_params(self, x: Tensor, y: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        """Top-down inference's deterministic pass: (mu_hat_i, logvar_hat_i) of every layer, bottom first."""
        d = self.encoder(self._encoder_input(x, y))
        params = [self._first_heads(d)]
        for layer in self.upper_layers:
            d = layer.inference.body(d)
            params.append(layer.inference.heads(d))
        return params

    @staticmethod
    def precision_weighted(mu_hat: Tensor, logvar_hat: Tensor, mu_p: Tensor, logvar_p: Tensor) -> tuple[Tensor, Tensor]:
        """The product of N(mu_hat, var_hat) and N(mu_p, var_p), normalized (Sønderby et al. eq. 17-18).

        var_q = 1 / (1/var_hat + 1/var_p) as -logaddexp(-logvar_hat, -logvar_p); mu_q = var_q (mu_hat/var_hat +
        mu_p/var_p) as w mu_hat + (1 - w) mu_p with w = var_p / (var_hat + var_p), which never divides.
        """
        logvar = soft_clamp(-torch.logaddexp(-logvar_hat, -logvar_p), LOGVAR_MIN, LOGVAR_MAX)
        weight = torch.sigmoid(logvar_p - logvar_hat)
        return mu_p + weight * (mu_hat - mu_p), logvar

    def encode(self, x: Tensor, y: Tensor | None = None) -> Distribution:
        """q(z_1|x) as a distribution with event shape (latent_dim,) (top-down: see ``posterior_params``)."""
        mu, logvar = self.posterior_params(x, y)
        return diagonal_gaussian(mu, logvar)

    @staticmethod
    def reparameterize(mu: Tensor, std: Tensor, num_samples: int | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """z = mu + std * eps with eps ~ N(0, I); with ``num_samples`` the result has a leading sample axis."""
        shape = mu.shape if num_samples is None else (num_samples, *mu.shape)
        eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + std * eps

    def infer(self, x: Tensor, num_samples: int | None = None, generator: torch.Generator | None = None,
              noise: list[Tensor] | None = None, y: Tensor | None = None) -> list[tuple[Tensor, Distribution]]:
        """Draw z_1, ..., z_L from q; returns (z_i, q(z_i | what it is conditioned on)) for every layer, bottom first.

        Bottom-up the layers are drawn from the first up, top-down from the top down. ``noise`` may give the
        standard-normal draws to use, one tensor per layer (bottom first) shaped like its z.
        """
        return self._infer_with_priors(x, num_samples, generator, noise, y)[0]

    def _infer_with_priors(self, x: Tensor, num_samples: int | None = None, generator: torch.Generator | None = None,
                           noise: list[Tensor] | None = None, y: Tensor | None = None,
                           ) -> tuple[list[tuple[Tensor, Distribution]], list[Distribution]]:
        """``infer``'s draws and the conditional priors p(z_i|z_{i+1}) at them, i = 1 .. L-1."""
        if self.top_down:
            return self._infer_top_down(x, num_samples, generator, noise, y)
        drawn = self._infer_bottom_up(x, num_samples, generator, noise, y)
        return drawn, self.conditional_priors([z for z, _ in drawn])

    def _infer_top_down(self, x: Tensor, num_samples: int | None, generator: torch.Generator | None,
                        noise: list[Tensor] | None, y: Tensor | None = None,
                        ) -> tuple[list[tuple[Tensor, Distribution]], list[Distribution]]:
        params = self.bottom_up_params(x, y)
        top = len(params) - 1
        q = diagonal_gaussian(*params[top])
        if noise is None:
            z = self.reparameterize(q.base_dist.loc, q.base_dist.scale, num_samples=num_samples, generator=generator)
        else:
            z = q.base_dist.loc + q.base_dist.scale * noise[top]
        drawn, priors = [(z, q)], []
        for i in reversed(range(top)):
            mu_p, logvar_p = self.upper_layers[i].generative(z)
            priors.append(diagonal_gaussian(mu_p, logvar_p))
            q = diagonal_gaussian(*self.precision_weighted(*params[i], mu_p, logvar_p))
            if noise is None:
                z = self.reparameterize(q.base_dist.loc, q.base_dist.scale, generator=generator)
            else:
                z = q.base_dist.loc + q.base_dist.scale * noise[i]
            drawn.append((z, q))
        return drawn[::-1], priors[::-1]

    def _infer_bottom_up(self, x: Tensor, num_samples: int | None, generator: torch.Generator | None,
                         noise: list[Tensor] | None, y: Tensor | None = None) -> list[tuple[Tensor, Distribution]]:
        q = self.encode(x, y)
        if noise is None:
            z = self.reparameterize(q.base_dist.loc, q.base_dist.scale, num_samples=num_samples, generator=generator)
        else:
            z = q.base_dist.loc + q.base_dist.scale * noise[0]
        drawn = [(z, q)]
        for i, layer in enumerate(self.upper_layers, start=1):
            q = diagonal_gaussian(*layer.inference(z))
            if noise is None:
                z = self.reparameterize(q.base_dist.loc, q.base_dist.scale, generator=generator)
            else:
                z = q.base_dist.loc + q.base_dist.scale * noise[i]
            drawn.append((z, q))
        return drawn

    def posterior_means(self, x: Tensor, num_samples: int = 100, generator: torch.Generator | None = None,
                        y: Tensor | None = None) -> list[Tensor]:
        """E_q[z_i | x] for every layer, each (batch, dim_i): exact for the first layer, Monte Carlo above it.

        Above the first layer the conditional means E[z_i | z_{i-1}] are averaged over draws of the
        layers below, so a unit whose mean does not depend on x gets no Monte Carlo noise. Top-down the
        other way round: exact for the top layer, below it the means of q(z_i|x, z_{i+1}) averaged over
        draws of the layers above.
        """
        if self.top_down:
            drawn = self.infer(x, num_samples=num_samples, generator=generator, y=y)
            return [q.base_dist.loc.mean(0) if q.base_dist.loc.dim() > 2 else q.base_dist.loc for _, q in drawn]
        q = self.encode(x, y)
        means = [q.base_dist.loc]
        if not len(self.upper_layers):
            return means
        z = self.reparameterize(q.base_dist.loc, q.base_dist.scale, num_samples=num_samples, generator=generator)
        for layer in self.upper_layers:
            mu, logvar = layer.inference(z)
            means.append(mu.mean(0))
            z = self.reparameterize(mu, torch.exp(0.5 * logvar), generator=generator)
        return means

    # --- generative network ------------------------------------------------------------------
    def decoder_params(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """The likelihood's parameters for latent vectors of shape (..., latent_dim), batch axes kept.

        A conditional model's labels ``y`` have shape (batch,), the axis before latent_dim (a leading sample axis
        of z shares them)."""
        flat = z.reshape(-1, z.shape[-1])
        one_hot = self.label_one_hot(y, z.dtype)
        if one_hot is not None:
            flat = torch.cat([flat, one_hot.expand(*z.shape[:-1], self.num_classes).reshape(-1, self.num_classes)], -1)
        params = full_precision(self.decoder(flat))  # float32 likelihood under autocast
        return params.reshape(*z.shape[:-1], *params.shape[1:])

    def decode(self, z: Tensor, y: Tensor | None = None) -> Distribution:
        """p(x|z_1[, y]) for latent vectors of shape (..., latent_dim); batch axes before the last are kept."""
        return self.likelihood(self.decoder_params(z, y))

    @torch.no_grad()
    def initialize_output_bias(self, x: Tensor) -> bool:
        """Start the decoder at the data's marginal: its output bias becomes the z-independent best fit to ``x``.

        The bias of the decoder's last layer is set to ``likelihood.marginal_params`` of the mean and variance
        of ``x`` (training rows in model units): per value for an MLP decoder, per channel (over all pixels)
        for a convolutional one. From the zero bias of PyTorch's default initialization, the first steps of a
        Bernoulli model instead use the code to draw the average image: every posterior moves by the same
        few units, and a tanh encoder saturates there. Under the VampPrior, whose pseudo-inputs move along
        with the data, nothing pulls it back, and the model never leaves that state (measured in
        docs/benchmarks.md). Returns whether a bias was set: False for likelihoods without a marginal (tables)
        and for decoders whose last layer is not one output per value or per channel.
        """
        layers = [m for m in self.decoder.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
        if not layers or layers[-1].bias is None or not len(x):
            return False
        last, shape, per_value = layers[-1], self.likelihood.data_shape, self.likelihood.params_per_value
        # Sums of x and x^2 per value in float64, a block of rows at a time (x may be a large float32 sample).
        total = torch.zeros(2, *shape, dtype=torch.float64, device=x.device)
        for block in x.reshape(len(x), *shape).split(1024):
            block = block.to(torch.float64)
            total += torch.stack([block.sum(0), (block * block).sum(0)])
        if isinstance(last, nn.Linear) and last.out_features == per_value * math.prod(shape):
            moments = total / len(x)
        elif not isinstance(last, nn.Linear) and len(shape) == 3 and last.out_channels == per_value * shape[0]:
            moments = total.flatten(2).sum(2) / (len(x) * shape[1] * shape[2])  # per channel, over all pixels
        else:
            return False
        mean, var = moments[0], (moments[1] - moments[0] ** 2).clamp_min(0)
        params = self.likelihood.marginal_params(mean, var)
        if params is None:
            return False
        last.bias.copy_(params.reshape(-1).to(last.bias))
        return True

    def prior_distribution(self) -> Distribution:
        """p(z_L) over the top layer. For the VampPrior its components are encodings of the pseudo-inputs
        (through the means of the layers below the top one, when there are several)."""
        if not isinstance(self.prior, VampPrior):
            return self.prior.distribution()
        mu, logvar = self.posterior_params(self.prior.inputs())
        for layer in self.upper_layers:
            mu, logvar = layer.inference(mu)
        return self.prior.distribution(mu, torch.exp(0.5 * logvar))

    def conditional_priors(self, zs: list[Tensor]) -> list[Distribution]:
        """p(z_i | z_{i+1}) for i = 1 .. L-1, each evaluated at the drawn layer above."""
        return [diagonal_gaussian(*layer.generative(above)) for layer, above in zip(self.upper_layers, zs[1:])]

    def sample_latent(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw z_1 from the generative model: the top layer from the prior, then down the chain."""
        if isinstance(self.prior, VampPrior):
            z = VampPrior.sample_from(self.prior_distribution(), num_samples, generator=generator)
        else:
            z = self.prior.sample(num_samples, generator=generator)
        for layer in reversed(self.upper_layers):
            mu, logvar = layer.generative(z)
            z = self.reparameterize(mu, torch.exp(0.5 * logvar), generator=generator)
        return z

    # --- objectives --------------------------------------------------------------------------
    def elbo_terms(self, x: Tensor, generator: torch.Generator | None = None, prior: Distribution | None = None,
                   num_samples: int | None = None, encoder_x: Tensor | None = None,
                   y: Tensor | None = None) -> ElboTerms:
        """Reconstruction and KL terms for every example of ``x`` (closed-form KL where it has one).

        One posterior draw per example, or the average over ``num_samples`` draws (Burda et al.'s
        k-sample VAE objective). ``prior`` may pass a precomputed ``prior_distribution()``. ``encoder_x``, when
        given, is what q(z|.) sees instead of ``x`` (a table's rows with cells hidden, see ``TableLikelihood``);
        any q gives a lower bound on log p(x). A conditional model's labels ``y`` (class indices, (batch,)) make it
        the bound on log p(x|y).
        """
        drawn, priors = self._infer_with_priors(x if encoder_x is None else encoder_x, num_samples=num_samples,
                                                generator=generator, y=y)
        zs = [z for z, _ in drawn]
        reconstruction = self.likelihood.negative_log_prob(self.decoder_params(zs[0], y), x)  # = -decode(z).log_prob(x)
        per_dim = self.lower_layer_kl_per_dim(drawn, priors)
        z_top, q_top = drawn[-1]
        if isinstance(self.prior, StandardNormalPrior):
            top_kl = StandardNormalPrior.kl_from(q_top.base_dist)  # closed form, per dimension
            top_total = top_kl.sum(-1)
            top_per_dim = lambda: top_kl  # noqa: E731
        else:
            prior = self.prior_distribution() if prior is None else prior
            log_q = q_top.base_dist.log_prob(z_top)
            top_total = log_q.sum(-1) - prior.log_prob(z_top)
            top_per_dim = lambda: log_q - log_prob_per_dim(prior, z_top)  # noqa: E731
        # With several draws, average over the sample axis, which every term has but a one-layer model's
        # closed-form KL.
        keep = lambda t: t  # noqa: E731
        average = (lambda t: t.mean(0)) if num_samples is not None else keep  # noqa: E731
        average_top = average if top_total.dim() == reconstruction.dim() else keep
        reconstruction = average(reconstruction)
        per_dim = [average(terms) for terms in per_dim]
        kl = average_top(top_total)
        for terms in per_dim:
            kl = kl + terms.sum(-1)
        kl_per_dim = lambda: torch.cat([*per_dim, average_top(top_per_dim())], dim=-1)  # noqa: E731
        return ElboTerms(reconstruction=reconstruction, kl=kl, kl_per_dim=kl_per_dim)

    def lower_layer_kl_per_dim(self, drawn: list[tuple[Tensor, Distribution]],
                               priors: list[Distribution]) -> list[Tensor]:
        """The KL terms of the layers below the top, per dimension, for draws and priors from ``_infer_with_priors``.

        Bottom-up: single-sample Monte Carlo log q(z_i|z_{i-1}) - log p(z_i|z_{i+1}), since the two depend on
        different draws and have no closed-form KL. Top-down: KL(q(z_i|x, z_{i+1}) || p(z_i|z_{i+1})) in closed
        form, both conditioned on the same drawn z_{i+1}.
        """
        if self.top_down:
            return [kl_divergence(q.base_dist, p.base_dist) for (_, q), p in zip(drawn[:-1], priors)]
        return [q.base_dist.log_prob(z) - p.base_dist.log_prob(z) for (z, q), p in zip(drawn[:-1], priors)]

    def latent_log_densities(self, x: Tensor, num_samples: int, generator: torch.Generator | None = None,
                             prior: Distribution | None = None, noise: list[Tensor] | None = None,
                             y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Draws z_1 ~ q (shape (num_samples, batch, latent_dim)) with log p(z) and log q(z|x) over all layers."""
        drawn, priors = self._infer_with_priors(x, num_samples=num_samples, generator=generator, noise=noise, y=y)
        zs = [z for z, _ in drawn]
        prior = self.prior_distribution() if prior is None else prior
        log_pz = prior.log_prob(zs[-1])
        for p, z in zip(priors, zs[:-1]):
            log_pz = log_pz + p.log_prob(z)
        log_qz = drawn[0][1].log_prob(zs[0])
        for z, q in drawn[1:]:
            log_qz = log_qz + q.log_prob(z)
        return zs[0], log_pz, log_qz

    def importance_weight_terms(self, x: Tensor, num_samples: int, generator: torch.Generator | None = None,
                                prior: Distribution | None = None, y: Tensor | None = None,
                                ) -> tuple[Tensor, Tensor, Tensor]:
        """log p(x|z_k), log p(z_k) and log q(z_k|x) for z_k ~ q(z|x), each of shape (num_samples, batch)."""
        z, log_pz, log_qz = self.latent_log_densities(x, num_samples, generator=generator, prior=prior, y=y)
        return self.decode(z, y).log_prob(x), log_pz, log_qz

    def log_importance_weights(self, x: Tensor, num_samples: int, generator: torch.Generator | None = None,
                               prior: Distribution | None = None, y: Tensor | None = None) -> Tensor:
        """log p(x, z_k) - log q(z_k|x) for z_k ~ q(z|x), shape (num_samples, batch) (given y if conditional)."""
        log_px_z, log_pz, log_qz = self.importance_weight_terms(x, num_samples, generator=generator, prior=prior,
                                                                y=y)
        return log_px_z + log_pz - log_qz
