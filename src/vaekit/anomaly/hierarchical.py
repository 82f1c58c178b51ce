"""The hierarchical bounds L^{>k} and the likelihood ratio LLR^{>k} of Havtorn et al. (ICML 2021),
"Hierarchical VAEs Know What They Don't Know".

For a model with stochastic layers z_1 (next to the data) .. z_L, the bound L^{>k} takes only the layers
above k from the posterior and the k lowest from the generative model given them:

    L^{>k}(x) = E_{q(z_{>k}|x)} [ log p(x | z*_1) - sum_{i>k} KL_i ],
    z*_k = mean of p(z_k | z_{k+1}),  z*_i = mean of p(z_i | z*_{i+1})  for i < k,

where KL_i is layer i's term of the ELBO (``VAEModel.elbo_terms``: closed form top-down and at a normal top
layer, single-sample Monte Carlo for the lower layers of a bottom-up model). L^{>0} is the ELBO itself. As in
the paper's code (``scripts/ood-llr.py`` with ``oodd/models/dvae.py``: ``decode_from_p`` for the k lowest
stages with ``use_mode``), the layers at and below k are set to the conditional prior's mean, not sampled,
and contribute no KL term. For a bottom-up model z_{>k} ~ q(z_{>k}|x) is drawn through q(z_{<=k}|x), whose
draws are then discarded; the estimate is still a lower bound on log of the same integral.

    LLR^{>k}(x) = L^{0}(x) - L^{>k}(x)       (nats)

is large when the top layers, which carry the semantics, explain x much worse than the whole hierarchy does:
out-of-distribution data get a **higher** LLR^{>k} (the paper ranks OOD data by it directly, anomalies as the
positive class), which is vaekit's convention for anomaly scores (higher = more anomalous), so no sign flip.
Both bounds use the same seeded noise (common random numbers): LLR^{>0} is exactly 0 and the Monte Carlo
noise of the shared layers cancels. With ``num_samples`` S the bounds are averages over S draws.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import kl_divergence

from ..errors import ConfigError
from ..models.model import VAEModel
from ..models.priors import StandardNormalPrior

DEFAULT_K = 1


def check_k(model: VAEModel, k: int, *, for_ratio: bool = False) -> None:
    """``k`` must be a whole number with 0 <= k < L (and, for the ratio, the model must have two or more layers)."""
    layers = len(model.latent_dims)
    if for_ratio and layers < 2:
        raise ConfigError("llr (the hierarchical likelihood ratio of Havtorn et al. 2021) needs a model with two or "
                          "more stochastic layers; this one has 1 (train with --latent-layers 3, for instance)")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < layers:
        raise ConfigError(f"k must be a whole number from 0 to {layers - 1} (the model has {layers} stochastic "
                          f"layers; k counts the lowest ones taken from the prior), got {k!r}")


def _layer_kls(model: VAEModel, drawn, priors, prior) -> list[Tensor]:
    """Each layer's KL term of the ELBO for these draws, bottom first, summed over its dimensions."""
    kls = [terms.sum(-1) for terms in model.lower_layer_kl_per_dim(drawn, priors)]
    z_top, q_top = drawn[-1]
    if isinstance(model.prior, StandardNormalPrior):
        top = kl_divergence(q_top.base_dist, prior.base_dist).sum(-1)
        top = top.expand(z_top.shape[:-1])  # the closed form has no sample axis
    else:
        top = q_top.base_dist.log_prob(z_top).sum(-1) - prior.log_prob(z_top)
    return [*kls, top]


def _prior_mean_path(model: VAEModel, z_above: Tensor, k: int) -> Tensor:
    """z*_1 from z_{k+1}: each layer at and below k set to the mean of p(z_i | the one above)."""
    z = z_above
    for i in reversed(range(k)):
        z, _ = model.upper_layers[i].generative(z)
    return z


@torch.no_grad()
def _bounds(model: VAEModel, x: Tensor, k: int, num_samples: int, seed: int, batch_size: int,
            ) -> tuple[Tensor, Tensor]:
    """(L^0, L^{>k}) per example, from the same noise."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be a whole number of at least 1, got {num_samples!r}")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    prior = model.prior_distribution()
    full, above = [], []
    try:
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size].to(device)
            dtype = next(model.parameters()).dtype
            # The same standard-normal draws whatever k is: common random numbers for L^0 and L^{>k}.
            noise = [torch.randn(num_samples, len(batch), d, generator=generator, device=device, dtype=dtype)
                     for d in model.latent_dims]
            drawn, priors = model._infer_with_priors(batch, num_samples=num_samples, noise=noise)
            kls = _layer_kls(model, drawn, priors, prior)
            zs = [z for z, _ in drawn]
            log_px = -model.likelihood.negative_log_prob(model.decoder_params(zs[0]), batch)
            log_px_k = -model.likelihood.negative_log_prob(model.decoder_params(_prior_mean_path(model, zs[k], k)), batch)
            bound = log_px
            for kl in kls:
                bound = bound - kl
            bound_k = log_px_k
            for kl in kls[k:]:
                bound_k = bound_k - kl
            full.append(bound.double().mean(0).cpu())
            above.append(bound_k.double().mean(0).cpu())
    finally:
        model.train(was_training)
    return torch.cat(full), torch.cat(above)


def bound_above(model: VAEModel, x: Tensor, k: int, num_samples: int = 1, seed: int = 0,
                batch_size: int = 1024) -> Tensor:
    """L^{>k} of every example of ``x`` (model units), nats, float64 on the CPU; k = 0 gives the ELBO."""
    check_k(model, k)
    return _bounds(model, x, k, num_samples, seed, batch_size)[1]


def llr_above(model: VAEModel, x: Tensor, k: int = DEFAULT_K, num_samples: int = 1, seed: int = 0,
              batch_size: int = 1024) -> Tensor:
    """LLR^{>k} = L^0 - L^{>k} of every example (nats, float64, CPU); higher = more anomalous. Needs 2+ layers."""
    check_k(model, k, for_ratio=True)
    full, above = _bounds(model, x, k, num_samples, seed, batch_size)
    return full - above
