"""Training objectives: what the trainer minimises, one function per name in ``OBJECTIVES``.

Every objective is called as ``objective(model, x, kl_weight, generator)`` (and ``y=labels`` for a conditional
model) and returns
``(loss, reconstruction_sum, kl_sum)``: the batch mean to minimise, and the batch's summed
-log p(x|z) and KL terms (detached) for the training log. Settings beyond these (samples per
example, free bits) are bound by ``make_objective`` from the run's ``TrainConfig``.

    elbo   -ELBO = E_q[-log p(x|z)] + kl_weight * KL, one posterior draw per example or the mean of k
    iwae   -log (1/k) sum_k w_k with w_k = p(x, z_k) / q(z_k|x) (Burda et al. 2016): a tighter bound
           that tends to -log p(x) as k grows; with a KL warm-up the weights are annealed likewise
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..config import TrainConfig
from .model import VAEModel

Objective = Callable[[VAEModel, Tensor, float, "torch.Generator | None"], tuple[Tensor, Tensor, Tensor]]


def elbo_objective(model: VAEModel, x: Tensor, kl_weight: float, generator: torch.Generator | None = None, *,
                   num_samples: int = 1, free_bits: float = 0.0, y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Mean over the batch of -log p(x|z) + kl_weight * KL; also the batch's summed parts (detached).

    With ``free_bits`` lambda > 0 the KL of each latent dimension, averaged over the batch, counts as
    max(lambda, KL_d) (Kingma et al. 2016), so the optimiser gains nothing by pushing a dimension's
    information below lambda nats: a guard against posterior collapse.
    """
    hide = getattr(model.likelihood, "hide_cells", None)  # a table: q learns to infer rows with empty cells
    encoder_x = hide(x, generator) if hide is not None and model.training else None
    terms = model.elbo_terms(x, generator=generator, num_samples=None if num_samples == 1 else num_samples,
                             encoder_x=encoder_x, y=y)
    loss = (terms.reconstruction + kl_weight * terms.kl).mean()
    if free_bits > 0:
        # sum_d max(lambda, KL_d) = KL + sum_d relu(lambda - KL_d): the second term cancels the gradient of
        # every dimension below lambda.
        loss = loss + kl_weight * torch.relu(free_bits - terms.kl_per_dim.mean(0)).sum()
    return loss, terms.reconstruction.detach().sum(), terms.kl.detach().sum()


def iwae_objective(model: VAEModel, x: Tensor, kl_weight: float, generator: torch.Generator | None = None, *,
                   num_samples: int = 5, y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Mean over the batch of -log (1/k) sum_k w_k; the logged parts are the k-sample averages of
    -log p(x|z_k) and log q(z_k|x) - log p(z_k) (the ELBO's parts, from the same draws)."""
    log_px_z, log_pz, log_qz = model.importance_weight_terms(x, num_samples, generator=generator, y=y)
    log_w = log_px_z - kl_weight * (log_qz - log_pz)
    bound = torch.logsumexp(log_w, dim=0) - math.log(num_samples)
    return -bound.mean(), -log_px_z.detach().mean(0).sum(), (log_qz - log_pz).detach().mean(0).sum()


OBJECTIVES: dict[str, Callable[..., tuple[Tensor, Tensor, Tensor]]] = {
    "elbo": elbo_objective,
    "iwae": iwae_objective,
}


def make_objective(config: TrainConfig) -> Objective:
    """The objective named in ``config`` with its settings bound: call it as ``f(model, x, kl_weight, generator)``."""
    settings = {"num_samples": config.objective_samples}
    if config.objective == "elbo":
        settings["free_bits"] = config.free_bits
    return functools.partial(OBJECTIVES[config.objective], **settings)
