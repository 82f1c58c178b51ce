"""Fast log p(x|z) for a Bernoulli likelihood on an MLP decoder: the hot path of evaluation.

An importance-weighted estimate with K = 5000 samples on 10,000 images evaluates the decoder 5 * 10^7
times. For the 784-400-20 MLP the time goes to the last matrix product (400 x 784 multiply-adds per
draw) and to the log-likelihood of its logits. The product runs on large chunks (without a separate
pass to add the bias); the log-likelihood is one compiled loop over the logits, written as

    log p(x|z) = sum_d x_d l_d - relu(l_d) - log(1 + e^-|l_d|)

with the last sum taken as the log of products of eight factors in (1, 2] (no overflow, no
underflow): one logarithm per eight values instead of one each, 2.3 times faster than a softplus.
It equals the plain formula up to float rounding (tested).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def bernoulli_log_prob(logits: Tensor, x: Tensor, bias: Tensor | None = None) -> Tensor:
    """sum_d log Bernoulli(x_d; sigmoid(l_d)) over the last axis, l = logits + bias: the plain formula."""
    if bias is not None:
        logits = logits + bias
    return (logits * x).sum(-1) - F.softplus(logits).sum(-1)


def bernoulli_log_prob_grouped(logits: Tensor, x: Tensor, bias: Tensor | None = None) -> Tensor:
    """The same value, with sum_d log(1 + e^-|l_d|) taken as the log of products of 8 factors in (1, 2].

    Meant to be compiled into one loop; the last axis must be a multiple of 8.
    """
    if bias is not None:
        logits = logits + bias
    factors = 1 + torch.exp(-logits.abs())
    products = torch.prod(factors.reshape(*logits.shape[:-1], 8, logits.shape[-1] // 8), dim=-2)
    return (logits * x - logits.clamp_min(0)).sum(-1) - torch.log(products).sum(-1)


_COMPILED: dict[str, Any] = {}


def _compiled(name: str, function: Any, probe: tuple[Tensor, ...], compile: bool) -> Any:
    """``function`` compiled by ``torch.compile`` (checked on ``probe``), or itself where compiling fails or is off."""
    if not compile:
        return function
    if name not in _COMPILED:
        try:
            compiled = torch.compile(function, dynamic=True)
            for got, want in zip(*(torch.utils._pytree.tree_leaves(f(*probe)) for f in (compiled, function))):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
            _COMPILED[name] = compiled
        except Exception:  # noqa: BLE001 - any failure of the compiler stack means: stay eager
            _COMPILED[name] = function
    return _COMPILED[name]


def bernoulli_kernel(values_per_example: int, compile: bool) -> Any:
    """The fastest available form of ``bernoulli_log_prob``: compiled and grouped where ``torch.compile``
    works here (it needs a C++ compiler), else the plain eager formula."""
    if not compile:
        return bernoulli_log_prob
    logits, target = torch.randn(3, 16) * 5, (torch.rand(16) > 0.5).float()
    if values_per_example % 8 == 0:
        return _compiled("grouped", bernoulli_log_prob_grouped, (logits, target, torch.zeros(16)), compile)
    return _compiled("plain", bernoulli_log_prob, (logits, target, torch.zeros(16)), compile)


class BernoulliMLPLogProb:
    """log p(x|z) for draws z of shape (samples, batch, latent) under a Bernoulli MLP decoder, shape (samples, batch)."""

    def __init__(self, decoder: nn.Module, data_values: int, compile: bool = False) -> None:
        layers = list(decoder[0])
        self.body = nn.Sequential(*layers[:-1])
        self.weight_t = layers[-1].weight.detach().t().contiguous()  # (hidden, values)
        self.bias = layers[-1].bias.detach()
        self.kernel = bernoulli_kernel(data_values, compile)

    def __call__(self, z: Tensor, x: Tensor) -> Tensor:
        samples, batch = z.shape[:2]
        x = x.reshape(batch, -1)
        hidden = self.body(z.reshape(samples * batch, -1))
        logits = (hidden @ self.weight_t).view(samples, batch, -1)
        return self.kernel(logits, x, self.bias)
