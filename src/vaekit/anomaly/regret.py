"""Likelihood Regret: how much a VAE's bound on one example improves when its inference is refit to it.

Xiao, Yan and Amit (NeurIPS 2020), "Likelihood Regret: An Out-of-Distribution Detection Score For
Variational Auto-encoder". The encoder of a VAE is amortized over the training data: for an example
like those it was trained on it is already close to the best posterior the decoder allows, so refitting
it to that example alone gains little; for an out-of-distribution example it is not, and the gain is
large. The score is that gain, in nats (higher = more anomalous, >= 0 by construction):

    regret(x) = -ELBO(x; encoder) - min over the fine-tuning steps t = 0 .. T of -ELBO(x; encoder_t)

Decoder, likelihood and prior stay frozen. Two variants:

    likelihood_regret   the paper's score: a private copy of the encoder (body, mean head, log-variance head)
                        is fine-tuned per example with Adam (default lr 2e-4, 100 steps)
    posterior_regret    the cheaper amortization gap: each example's posterior parameters (mu, log-variance),
                        starting from the encoder's output, are optimised directly with Adam (lr 5e-2, 50 steps)

Common random numbers: the reparameterization noise eps (``num_samples`` draws per example) is drawn once,
``torch.randn((n, num_samples, latent_dim))`` from a ``torch.Generator`` seeded with ``seed`` (row i for
example i; ``noise=`` passes it explicitly), and the same eps serves every step. The bound is therefore a
deterministic function of the encoder weights (or posterior parameters), the minimum over steps includes
step 0, and the regret is exactly 0 for ``steps=0`` or ``lr=0``. With the same noise the bound equals
``model.elbo_terms(x, num_samples=num_samples).neg_elbo`` (the KL in closed form against the standard-normal
prior; under a VampPrior the Monte Carlo KL against the prior as the original encoder defines it, which is
kept frozen too). The model's parameters are never changed; it runs in eval mode (batch-norm layers use
their running statistics; buffers are shared by all examples).

Batching, never a Python loop over examples: ``likelihood_regret`` stacks per-example copies of the encoder
parameters (leading axis = the examples of a chunk), takes every example's loss and gradient at once with
``torch.func.vmap(torch.func.grad(...))`` over ``torch.func.functional_call`` of the encoder, and applies
Adam's update (``torch.optim.Adam``'s single-tensor formula, bias-corrected, betas (0.9, 0.999), eps 1e-8)
elementwise to the stacked tensors. Each example holds four copies of the encoder's parameters (weights,
gradient and Adam's two moments) and the chunk one scratch tensor the size of the largest parameter (Adam's
denominator); chunks are sized so that these fit ``MEMORY_BUDGET_BYTES`` (1 GiB): 164 examples for the
784-400-20 MLP in float32 (``encoder_chunk_size``). ``posterior_regret`` needs only (n, latent_dim) tensors
and one batched decoder pass (forward and backward) per step.

Measured on 2 CPU cores shared with other jobs (torch 2.13, float32, random weights, binary 28x28 inputs,
``torch.set_num_threads(2)``, best of two runs; load average 2.3-2.7, so single runs varied up to 5x):

    model                                       likelihood_regret, 100 steps    posterior_regret, 50 / 100 steps
    MLP 784-400-20, Bernoulli                   11 examples/s                   1900 / 980 examples/s
    conv 1x28x28, hidden (32, 64), latent 20    15 examples/s                   420 / 210 examples/s

With one thread on the same busy machine: 6 and 10 examples/s, posterior 1340 / 690 and 220 / 110.
The fine-tuning is bound by memory traffic over the per-example encoder copies (each Adam step passes over
them about ten times), so its cost grows with the encoder's size times ``steps``: 100 steps of a
330,000-value encoder are 33 million Adam updates per example. The posterior variant costs ``steps``
batched decoder passes per example: at equal steps 90 times cheaper for the MLP, 14 times for the conv
model (whose decoder is the expensive half and whose encoder is small).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Normal, kl_divergence

from ..errors import ConfigError, DataError
from ..models.model import VAEModel
from ..models.priors import StandardNormalPrior

MEMORY_BUDGET_BYTES = 2**30
"""What the stacked per-example encoder copies of one ``likelihood_regret`` chunk may take (1 GiB)."""
ADAM_TENSORS = 3
"""Per-example tensors besides the weights themselves: the gradient and Adam's two moment estimates."""
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
POSTERIOR_LR = 5e-2
POSTERIOR_CHUNK_DRAWS = 4096
"""Examples x samples per ``posterior_regret`` chunk: bounds the decoder's activations and their gradients
(about 0.7 GB for the 28x28 conv decoder with hidden (32, 64))."""


# --- the bound ---------------------------------------------------------------------------------

def _neg_elbo(model: VAEModel, mu: Tensor, logvar: Tensor, eps: Tensor, x: Tensor, prior: Distribution) -> Tensor:
    """-ELBO of each example: posterior N(mu, exp(logvar)), each (batch, latent); noise eps (samples, batch, latent).

    The same terms as ``VAEModel.elbo_terms`` with ``num_samples`` draws: reconstruction averaged over the
    draws, KL in closed form under the standard-normal prior, else the Monte Carlo estimate.
    """
    q = Normal(mu, torch.exp(0.5 * logvar), validate_args=False)
    z = q.loc + q.scale * eps
    reconstruction = model.likelihood.negative_log_prob(model.decoder_params(z), x).mean(0)
    if isinstance(model.prior, StandardNormalPrior):
        kl = kl_divergence(q, prior.base_dist).sum(-1)
    else:
        kl = (q.log_prob(z).sum(-1) - prior.log_prob(z)).mean(0)
    return reconstruction + kl


class _Encoder(nn.Module):
    """The model's inference network (shared modules, not copies) as one module for ``functional_call``.

    The attribute names are the model's, so its parameter names are too (``encoder.*``, ``mean_head.*``,
    ``logvar_head.*``), and the forward pass is the model's own ``first_layer_params`` (= ``posterior_params`` for one layer).
    """

    def __init__(self, model: VAEModel) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.mean_head = model.mean_head
        self.logvar_head = model.logvar_head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return VAEModel.first_layer_params(self, x)  # type: ignore[arg-type]


def _adam_update(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                 step: int, lr: float, scratch: Tensor) -> None:
    """One in-place Adam step on every tensor, ``torch.optim.Adam``'s single-tensor formula (no weight decay).

    ``scratch`` (at least as many values as the largest tensor) holds the denominator: a fresh allocation of
    that size every step costs as much again as the square root itself (new pages of memory). The second
    moments are raised to the smallest normal number before the square root: sqrt(0) runs about ten times
    slower than sqrt of a normal number on these CPUs, and most moments of a first layer stay 0 (inputs that
    are 0 give gradients that are 0). The denominator is bit for bit the same: for any value below that
    floor, sqrt(value) / sqrt(1 - beta2^t) < 4e-18 is below half a unit in the last place of eps = 1e-8 in
    float32 and float64 alike, so the denominator rounds to eps either way.
    """
    beta1, beta2 = ADAM_BETAS
    step_size = lr / (1 - beta1 ** step)
    bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
    for param, grad, exp_avg, exp_avg_sq in zip(params, grads, exp_avgs, exp_avg_sqs):
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = scratch[:exp_avg_sq.numel()].view(exp_avg_sq.shape)
        torch.clamp(exp_avg_sq, min=torch.finfo(exp_avg_sq.dtype).tiny, out=denom).sqrt_()
        denom.div_(bias_correction2_sqrt).add_(ADAM_EPS)
        param.addcdiv_(exp_avg, denom, value=-step_size)


def _scratch_for(tensors: list[Tensor]) -> Tensor:
    largest = max(tensors, key=Tensor.numel)
    return torch.empty(largest.numel(), dtype=largest.dtype, device=largest.device)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode for the duration, every module's own mode restored afterwards."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


# --- checks ------------------------------------------------------------------------------------

def _check_settings(model: VAEModel, steps: int, lr: float, num_samples: int, seed: int,
                    chunk_size: int | None) -> None:
    if not isinstance(model, VAEModel):
        raise ConfigError(f"regret needs a vaekit VAEModel (a fitted VAE's .model_), got {type(model).__name__}")
    if len(model.upper_layers):
        raise ConfigError(f"regret supports one-layer models only; this model has {1 + len(model.upper_layers)} "
                          "stochastic layers (train one without --upper-latent-dims)")
    for name, value, least in (("steps", steps, 0), ("num_samples", num_samples, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ConfigError(f"{name} must be an integer of at least {least}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not -2**63 <= seed < 2**64:
        raise ConfigError(f"seed must be an integer in [-2**63, 2**64), got {seed!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral)
                                   or chunk_size < 1):
        raise ConfigError(f"chunk_size must be a positive integer or None (chosen from memory), got {chunk_size!r}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr < 0:
        raise ConfigError(f"lr must be a finite number, zero or positive, got {lr!r}")


def _prepare(model: VAEModel, x: Tensor, num_samples: int, seed: int, noise: Tensor | None) -> tuple[Tensor, Tensor]:
    """``x`` in the model's dtype and device, checked, and the noise (n, num_samples, latent_dim) for it."""
    parameter = next(model.parameters())
    if not isinstance(x, Tensor):
        raise DataError(f"x must be a torch.Tensor of examples, got {type(x).__name__}")
    shape = tuple(model.input_shape)
    if tuple(x.shape[1:]) != shape:
        hint = " (a single example needs a leading batch axis: x[None])" if tuple(x.shape) == shape else ""
        raise DataError(f"x must have shape (n, {', '.join(map(str, shape))}) for this model, "
                        f"got {tuple(x.shape)}{hint}")
    if x.is_complex():
        raise DataError(f"x must hold real numbers, got dtype {x.dtype}")
    x = x.to(device=parameter.device, dtype=parameter.dtype)
    if not torch.isfinite(x).all():
        raise DataError("x holds NaN or infinite values; remove or impute them first")
    model.likelihood.check_data(x)
    expected = (x.shape[0], num_samples, model.latent_dim)
    if noise is None:
        generator = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(expected, generator=generator, dtype=parameter.dtype)
    elif not isinstance(noise, Tensor) or tuple(noise.shape) != expected:
        got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
        raise DataError(f"noise must have shape (n, num_samples, latent_dim) = {expected}, got {got}")
    elif not torch.isfinite(noise).all():
        raise DataError("noise holds NaN or infinite values")
    return x, noise.to(device=parameter.device, dtype=parameter.dtype)


def encoder_chunk_size(model: VAEModel, budget_bytes: int = MEMORY_BUDGET_BYTES) -> int:
    """Examples per ``likelihood_regret`` chunk: their encoder copies, gradients, Adam moments and the
    denominator scratch (one copy of the largest parameter) fit ``budget_bytes``."""
    sizes = [p.numel() * p.element_size() for p in _Encoder(model).parameters()]
    per_example = sum(sizes) * (1 + ADAM_TENSORS) + max(sizes)
    return max(1, int(budget_bytes // per_example))


# --- the scores --------------------------------------------------------------------------------

def likelihood_regret(model: VAEModel, x: Tensor, *, steps: int = 100, lr: float = 2e-4, num_samples: int = 1,
                      chunk_size: int | None = None, seed: int = 0, noise: Tensor | None = None) -> Tensor:
    """Likelihood Regret of every example, nats (float64, shape (n,)): the encoder fine-tuned per example.

    For each example a private copy of the encoder (body, mean and log-variance heads) takes ``steps``
    Adam steps (``lr``, betas (0.9, 0.999), eps 1e-8) on that example's -ELBO with fixed noise; the score
    is the -ELBO of the original encoder minus the lowest -ELBO seen (steps 0 .. ``steps``). ``lr`` 2e-4
    and 100 steps keep the refit encoder near the trained one (a local gain, not a new fit from scratch)
    and still separate: on a digits model (8x8 binarized, MLP 64, latent 4, 500 training steps) the mean
    regret of 100 training digits / 100 uniform-noise images was 2.1 / 17.3 nats (AUROC 0.997); lr 1e-4
    gave 1.5 / 12.1 (0.998), lr 1e-3 3.2 / 20.7 (0.996).
    ``chunk_size`` examples are refit at once (None: as many as ``MEMORY_BUDGET_BYTES`` allows, see
    ``encoder_chunk_size``); ``noise`` (n, num_samples, latent_dim) overrides the draw from ``seed``.
    """
    _check_settings(model, steps, lr, num_samples, seed, chunk_size)
    x, noise = _prepare(model, x, num_samples, seed, noise)
    regret = torch.zeros(x.shape[0], dtype=torch.float64)
    if not x.shape[0]:
        return regret
    size = chunk_size or encoder_chunk_size(model)
    encoder = _Encoder(model)
    names = [name for name, _ in encoder.named_parameters()]
    with torch.no_grad(), _eval_mode(model):
        prior = model.prior_distribution()  # frozen: under a VampPrior it is the original encoder's

        def loss(params: dict[str, Tensor], x_i: Tensor, eps_i: Tensor) -> tuple[Tensor, Tensor]:
            mu, logvar = torch.func.functional_call(encoder, params, (x_i.unsqueeze(0),))
            value = _neg_elbo(model, mu, logvar, eps_i.unsqueeze(1), x_i.unsqueeze(0), prior).squeeze(0)
            return value, value.detach()

        loss_and_grad = torch.func.vmap(torch.func.grad(loss, has_aux=True))
        for start in range(0, x.shape[0], size):
            x_chunk, eps_chunk = x[start:start + size], noise[start:start + size]
            count = x_chunk.shape[0]
            params = {name: p.detach().unsqueeze(0).expand(count, *p.shape).clone()
                      for name, p in encoder.named_parameters()}
            exp_avgs = [torch.zeros_like(params[name]) for name in names]
            exp_avg_sqs = [torch.zeros_like(params[name]) for name in names]
            scratch = _scratch_for(exp_avg_sqs)
            initial = best = None
            for step in range(steps + 1):
                # The final bound goes through the same (gradient) path as the others, so that with lr = 0
                # every step gives the same number to the last bit.
                grads, value = loss_and_grad(params, x_chunk, eps_chunk)
                if initial is None:
                    initial = best = value.clone()
                else:
                    best = torch.where(value < best, value, best)  # a NaN step is never the best
                if step < steps:
                    _adam_update([params[n] for n in names], [grads[n] for n in names], exp_avgs, exp_avg_sqs,
                                 step + 1, float(lr), scratch)
            regret[start:start + count] = (initial - best).double().cpu()
    return regret


def posterior_regret(model: VAEModel, x: Tensor, *, steps: int = 50, lr: float = POSTERIOR_LR, num_samples: int = 1,
                     seed: int = 0, chunk_size: int | None = None, noise: Tensor | None = None) -> Tensor:
    """The amortization gap of every example, nats (float64, shape (n,)): its posterior parameters refit.

    Each example's mu and log-variance start at the encoder's output and take ``steps`` Adam steps on its
    -ELBO with fixed noise (the same rules as ``likelihood_regret``: lowest bound over steps 0 .. ``steps``,
    so the score is >= 0). These are coordinates in latent space, of order 1, so the default ``lr`` is far
    above the encoder's: Adam moves each coordinate by at most about ``lr`` per step. Measured on a digits
    model (8x8 binarized, MLP 64, latent 4, 300 Adam steps of training), as the fraction of the converged gap
    (1000 steps) reached in 50 steps, training digits / uniform noise: lr 3e-3 0.31 / 0.37, 1e-2 0.62 / 0.77,
    3e-2 0.92 / 0.95, 5e-2 0.99 / 0.97, 1e-1 1.00 / 0.99. 5e-2 is the smallest that all but converges in 50
    steps; the AUROC of noise against digits was 0.99-1.00 at every lr, so the choice is about measuring the
    gap rather than ranking.
    ``chunk_size`` examples at a time (None: ``POSTERIOR_CHUNK_DRAWS // num_samples``); ``noise`` as for
    ``likelihood_regret``.
    """
    _check_settings(model, steps, lr, num_samples, seed, chunk_size)
    x, noise = _prepare(model, x, num_samples, seed, noise)
    regret = torch.zeros(x.shape[0], dtype=torch.float64)
    if not x.shape[0]:
        return regret
    size = chunk_size or max(1, POSTERIOR_CHUNK_DRAWS // num_samples)
    with torch.no_grad(), _eval_mode(model):
        prior = model.prior_distribution()
        for start in range(0, x.shape[0], size):
            x_chunk = x[start:start + size]
            eps = noise[start:start + size].transpose(0, 1)  # (samples, chunk, latent), as elbo_terms draws it
            params = [p.clone() for p in model.posterior_params(x_chunk)]
            exp_avgs = [torch.zeros_like(p) for p in params]
            exp_avg_sqs = [torch.zeros_like(p) for p in params]
            scratch = _scratch_for(exp_avg_sqs)
            initial = best = None
            for step in range(steps + 1):
                with torch.enable_grad():
                    leaves = [p.requires_grad_(True) for p in params]
                    value = _neg_elbo(model, *leaves, eps, x_chunk, prior)
                    # The examples are independent, so the gradient of the sum is every example's own.
                    grads = torch.autograd.grad(value.sum(), leaves)
                value = value.detach()
                params = [p.detach() for p in leaves]
                if initial is None:
                    initial = best = value.clone()
                else:
                    best = torch.where(value < best, value, best)
                if step < steps:
                    _adam_update(params, list(grads), exp_avgs, exp_avg_sqs, step + 1, float(lr), scratch)
            regret[start:start + x_chunk.shape[0]] = (initial - best).double().cpu()
    return regret
