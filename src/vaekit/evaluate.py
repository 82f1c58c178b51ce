"""Evaluation: the ELBO and the importance-weighted estimate of log p(x), in nats per example.

The importance-weighted estimate (Burda et al. 2016) is

    log p(x) ~= log (1/K) sum_k exp(log p(x, z_k) - log q(z_k|x)),   z_k ~ q(z|x),

computed over chunks of samples with a running log-sum-exp, so memory stays bounded whatever K is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .model import VAEModel


@dataclass
class ElboResult:
    """Per-example negative ELBO and its parts, in nats."""

    reconstruction: Tensor
    kl: Tensor
    kl_per_dim: Tensor

    @property
    def neg_elbo(self) -> Tensor:
        return self.reconstruction + self.kl

    def means(self) -> dict[str, float]:
        return {"neg_elbo": self.neg_elbo.mean().item(), "reconstruction": self.reconstruction.mean().item(),
                "kl": self.kl.mean().item()}


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def elbo(model: VAEModel, x: Tensor, batch_size: int = 1024, seed: int = 0) -> ElboResult:
    """Negative ELBO of every example (one posterior sample each, seeded), on the model's device."""
    device = _device_of(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size].to(device, non_blocking=True)
        terms = model.elbo_terms(batch, generator=generator)
        parts.append((terms.reconstruction.float(), terms.kl.float(), terms.kl_per_dim.float()))
    model.train(was_training)
    rec, kl, kl_dim = (torch.cat(p) for p in zip(*parts))
    return ElboResult(reconstruction=rec, kl=kl, kl_per_dim=kl_dim)


@torch.no_grad()
def log_likelihood(model: VAEModel, x: Tensor, num_importance_samples: int = 1000, batch_size: int = 256,
                   sample_chunk: int = 250, seed: int = 0) -> Tensor:
    """Importance-weighted estimate of log p(x) for every example, in nats (shape ``(n,)``)."""
    if num_importance_samples < 1:
        raise ValueError("num_importance_samples must be at least 1")
    device = _device_of(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size].to(device, non_blocking=True)
        running = torch.full((len(batch),), -math.inf, device=device, dtype=torch.float64)
        remaining = num_importance_samples
        while remaining > 0:
            chunk = min(sample_chunk, remaining)
            log_w = model.log_importance_weights(batch, chunk, generator=generator).double()
            running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
            remaining -= chunk
        out.append(running - math.log(num_importance_samples))
    model.train(was_training)
    return torch.cat(out).float().cpu()
