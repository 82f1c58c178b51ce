"""Evaluation: the ELBO, the importance-weighted estimate of log p(x), bits/dim and active units.

Every number is in nats per example unless it says otherwise. The importance-weighted estimate
(Burda, Grosse and Salakhutdinov 2016) is

    log p(x) ~= log (1/K) sum_k exp(log p(x, z_k) - log q(z_k|x)),   z_k ~ q(z|x),

a lower bound in expectation that rises with K towards log p(x) (K = 1 gives the ELBO). It is
computed in chunks of (samples x examples) sized to a memory budget, with a running log-sum-exp in
float64, so memory stays bounded whatever K is. Each example draws its noise from its own seeded
stream, so a result depends on the seed, never on batch sizes, the memory budget or which other
examples are evaluated with it.

Where the time goes (784-400-20 MLP, Bernoulli, on a CPU): the decoder's last matrix product
(K x 400 x 784 multiply-adds per example), then the log-likelihood of its K x 784 logits. Both run on
chunks as large as the memory budget allows; for a Bernoulli MLP decoder the log-likelihood is one
fused loop over the logits (``decoder_kernels``), compiled with ``torch.compile`` when the work is
large enough to repay the compilation; so is the discretized logistic's over the decoder's (location,
log-scale) pairs, for any decoder. For a Bernoulli decoder with one ReLU hidden layer, the hidden
units that are active for all of an example's draws are folded into a latent-sized matrix and those
active for none are dropped, which halves the last product (exact; see ``decoder_kernels``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..models.decoder_kernels import BernoulliMLPLogProb, DiscretizedLogisticLogProb
from ..errors import ConfigError, DataError
from ..models.likelihoods import BernoulliLikelihood, DiscretizedLogisticLikelihood
from ..models.model import VAEModel
from ..models.priors import StandardNormalPrior
from ..names import LIKELIHOOD_MEMORY_BUDGET_MB as DEFAULT_MEMORY_BUDGET_MB


# Chunks beyond this many (sample, example) rows gain nothing (the matrix products already run at full
# speed) and fall out of the processor's caches.
MAX_CHUNK_ROWS = 4096

ACTIVE_UNIT_THRESHOLD = 0.01
"""Burda et al.'s criterion: a latent unit is active when Cov_x(E_q[u|x]) exceeds this."""

# Compiling the fused Bernoulli reduction costs seconds once; below this many logits eager code is as fast overall.
COMPILE_MIN_LOGITS = 2_000_000_000
# The discretized logistic's compiled loop saves more per value (the evaluation runs 1.8 times faster than with
# its eager form, itself 1.6 times faster than the distribution's): it repays its compilation (4 s, 10 s
# with an empty inductor cache; once per process) from about this many values, 130 images at K = 5000.
COMPILE_MIN_VALUES_DISCRETIZED_LOGISTIC = 500_000_000


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
def elbo(model: VAEModel, x: Tensor, batch_size: int = 1024, seed: int = 0, labels: Tensor | None = None,
         ) -> ElboResult:
    """Negative ELBO of every example (one posterior sample each, seeded), on the model's device; a conditional
    model's ``labels`` (class indices, one per example) make it the bound on log p(x|y)."""
    device = _device_of(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    prior = model.prior_distribution()
    parts = []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size].to(device, non_blocking=True)
        terms = model.elbo_terms(batch, generator=generator, prior=prior, y=_labels_of(labels, start, len(batch), device))
        parts.append((terms.reconstruction.float(), terms.kl.float(), terms.kl_per_dim.float()))
    model.train(was_training)
    rec, kl, kl_dim = (torch.cat(p) for p in zip(*parts))
    return ElboResult(reconstruction=rec, kl=kl, kl_per_dim=kl_dim)


def _labels_of(labels: Tensor | None, start: int, size: int, device: torch.device) -> Tensor | None:
    """The labels of the batch x[start:start + size] (None for an unconditional model)."""
    return None if labels is None else labels[start:start + size].to(device)


def _check_labels(model: VAEModel, x: Tensor, labels: Tensor | None) -> None:
    if model.conditional and labels is None:
        raise ConfigError("this model is conditional: give the examples' labels (class indices)")
    if not model.conditional and labels is not None:
        raise ConfigError("this model is not conditional; it takes no labels")
    if labels is not None and (labels.shape != (len(x),) or bool(((labels < 0) | (labels >= model.num_classes)).any())):
        raise ConfigError(f"labels must be one class index in [0, {model.num_classes}) per example")


# --- the importance-weighted estimate ---------------------------------------------------------------

def _example_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for example ``index`` (splitmix64 of the pair)."""
    value = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % 2**64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) % 2**64
    return (value ^ (value >> 31)) % 2**63


# Each example's noise comes in blocks of this many samples (fewer when K is smaller), so that how the
# samples are chunked never changes which draws an example gets.
NOISE_BLOCK = 1024


class _ExampleNoise:
    """Standard-normal draws for one example from its own seeded stream, handed out in any chunk sizes."""

    def __init__(self, seed: int, dim: int, block: int, device: torch.device) -> None:
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.dim, self.block, self.device = dim, block, device
        self.buffer = torch.empty(0, dim, device=device)

    def take(self, count: int) -> Tensor:
        parts, needed = [], count
        while needed:
            if not len(self.buffer):
                self.buffer = torch.randn(self.block, self.dim, generator=self.generator, device=self.device)
            part, self.buffer = self.buffer[:needed], self.buffer[needed:]
            parts.append(part)
            needed -= len(part)
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def _bytes_per_row(model: VAEModel) -> int:
    """Rough working memory of one (sample, example) pair: decoder activations, logits and temporaries."""
    config = model.config
    data_values = math.prod(config.input_shape)
    decoder_widths = sum(config.hidden) if config.arch == "mlp" else 4 * data_values * max(config.hidden)
    floats = 3 * model.likelihood.params_per_value * data_values + 2 * decoder_widths
    floats += 8 * sum(model.latent_dims) + 4 * len(model.upper_layers) * sum(config.upper_hidden)
    if not isinstance(model.prior, StandardNormalPrior):
        floats += 3 * config.vamp_components  # log-densities under every mixture component
    return 4 * floats


def chunk_shape(model: VAEModel, num_importance_samples: int, memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
                ) -> tuple[int, int]:
    """(examples per batch, samples per chunk): the largest chunk that fits the memory budget."""
    rows = int(memory_budget_mb * 2**20 // _bytes_per_row(model))
    rows = max(1, min(rows, MAX_CHUNK_ROWS))
    chunks_per_example = math.ceil(num_importance_samples / rows)
    samples = math.ceil(num_importance_samples / chunks_per_example)  # equal chunks, not one full and one short
    return max(1, rows // samples), samples


def _decoder_log_prob(model: VAEModel, compile: bool):
    """log p(x|z_1) for draws of shape (samples, batch, latent): the model's own distribution, or the fused,
    exact kernels of ``decoder_kernels`` for a Bernoulli likelihood on an MLP decoder and for the
    discretized logistic on any decoder."""
    if model.conditional:  # the fused kernels read the decoder's input as z alone
        return lambda z, x, y: model.decode(z, y).log_prob(x)
    if isinstance(model.likelihood, BernoulliLikelihood) and model.config.arch == "mlp":
        return BernoulliMLPLogProb(model.decoder, math.prod(model.input_shape), compile=compile)
    if isinstance(model.likelihood, DiscretizedLogisticLikelihood):
        return DiscretizedLogisticLogProb(model, compile=compile)
    return lambda z, x: model.decode(z).log_prob(x)


@dataclass
class _Accumulators:
    """Per-example running sums over importance samples, in float64."""

    log_sum_w: Tensor
    sum_log_px_z: Tensor
    sum_kl: Tensor


@torch.no_grad()
def _importance_pass(model: VAEModel, x: Tensor, num_importance_samples: int, seed: int,
                     batch_size: int | None, sample_chunk: int | None, memory_budget_mb: float,
                     compile: bool | None, progress: bool = False, labels: Tensor | None = None) -> _Accumulators:
    _check_labels(model, x, labels)
    if num_importance_samples < 1:
        raise ConfigError(f"the number of importance samples must be at least 1, got {num_importance_samples}")
    device = _device_of(model)
    auto_batch, auto_chunk = chunk_shape(model, num_importance_samples, memory_budget_mb)
    sample_chunk = min(sample_chunk or auto_chunk, num_importance_samples)
    batch_size = batch_size or max(1, auto_batch if sample_chunk == auto_chunk else
                                   (auto_batch * auto_chunk) // sample_chunk)
    if compile is None:
        enough = (COMPILE_MIN_VALUES_DISCRETIZED_LOGISTIC if isinstance(model.likelihood, DiscretizedLogisticLikelihood)
                  else COMPILE_MIN_LOGITS)
        compile = len(x) * num_importance_samples * math.prod(model.input_shape) >= enough
    log_prob_x = _decoder_log_prob(model, compile)
    dims = model.latent_dims
    total_dim = sum(dims)
    was_training = model.training
    model.eval()
    prior = model.prior_distribution()
    n = len(x)
    out = _Accumulators(*(torch.zeros(n, dtype=torch.float64) for _ in range(3)))
    bar = _progress_bar(n, f"K={num_importance_samples}") if progress else None
    for start in range(0, n, batch_size):
        batch = x[start:start + batch_size].to(device, non_blocking=True)
        size = len(batch)
        y = _labels_of(labels, start, size, device)
        block = min(num_importance_samples, NOISE_BLOCK)
        sources = [_ExampleNoise(_example_seed(seed, start + i), total_dim, block, device) for i in range(size)]
        running = torch.full((size,), -math.inf, device=device, dtype=torch.float64)
        sum_log_px_z = torch.zeros(size, device=device, dtype=torch.float64)
        sum_kl = torch.zeros(size, device=device, dtype=torch.float64)
        done = 0
        while done < num_importance_samples:
            chunk = min(sample_chunk, num_importance_samples - done)
            eps = torch.stack([source.take(chunk) for source in sources], dim=1)
            noise = list(torch.split(eps.to(batch.dtype), dims, dim=-1))
            z, log_pz, log_qz = model.latent_log_densities(batch, chunk, prior=prior, noise=noise, y=y)
            log_px_z = (log_prob_x(z, batch) if y is None else log_prob_x(z, batch, y)).double()
            kl = (log_qz - log_pz).double()
            running = torch.logaddexp(running, torch.logsumexp(log_px_z - kl, dim=0))
            sum_log_px_z += log_px_z.sum(0)
            sum_kl += kl.sum(0)
            done += chunk
        stop = start + size
        out.log_sum_w[start:stop] = running.cpu()
        out.sum_log_px_z[start:stop] = sum_log_px_z.cpu()
        out.sum_kl[start:stop] = sum_kl.cpu()
        if bar is not None:
            bar.update(size)
    if bar is not None:
        bar.close()
    model.train(was_training)
    return out


def _progress_bar(total: int, description: str):
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="example", leave=False, file=sys.stderr, dynamic_ncols=True,
                disable=None)


def log_likelihood(model: VAEModel, x: Tensor, num_importance_samples: int = 1000, batch_size: int | None = None,
                   sample_chunk: int | None = None, seed: int = 0, *,
                   memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB, compile: bool | None = None,
                   labels: Tensor | None = None) -> Tensor:
    """Importance-weighted estimate of log p(x) for every example, in nats (float32, shape ``(n,)``, on the CPU).

    ``x`` holds examples as the model sees them (binarized where the model was trained on binary data).
    Chunks of ``sample_chunk`` samples for ``batch_size`` examples at a time are chosen to fit
    ``memory_budget_mb`` unless given; they change the speed, never the result, which depends only on
    ``seed``. ``compile``: fuse the Bernoulli or discretized-logistic log-likelihood with ``torch.compile``
    (default: when the evaluation is large enough to repay the compilation, seconds once per process;
    ``False`` keeps every computation eager). A conditional model's ``labels`` (class indices) give log p(x|y).
    """
    sums = _importance_pass(model, x, num_importance_samples, seed, batch_size, sample_chunk, memory_budget_mb,
                            compile, labels=labels)
    return (sums.log_sum_w - math.log(num_importance_samples)).float()


# --- the full evaluation ---------------------------------------------------------------------------

def _mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


@dataclass
class Evaluation:
    """The results of ``evaluate``: means over the data set with standard errors, and per-example values.

    Nats per example throughout; ``bits_per_dim`` (of the importance-weighted estimate) and
    ``elbo_bits_per_dim`` are set when the likelihood gives probabilities of discrete data.
    """

    num_examples: int
    importance_samples: int
    seed: int
    neg_elbo: float
    neg_elbo_stderr: float
    reconstruction: float
    reconstruction_stderr: float
    kl: float
    kl_stderr: float
    nll: float
    nll_stderr: float
    active_units: int
    active_units_per_layer: list[int]
    kl_per_dim: list[float]
    posterior_mean_variance: list[float]
    bits_per_dim: float | None = None
    bits_per_dim_stderr: float | None = None
    elbo_bits_per_dim: float | None = None
    seconds: float = 0.0
    per_example: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self, per_example: bool = False) -> dict[str, Any]:
        """A JSON-ready dict (per-example arrays as lists only when asked for)."""
        result = {k: v for k, v in self.__dict__.items() if k != "per_example"}
        if per_example:
            result["per_example"] = {k: v.tolist() for k, v in self.per_example.items()}
        return result


@torch.no_grad()
def active_units(model: VAEModel, x: Tensor, batch_size: int = 1024, seed: int = 0,
                 labels: Tensor | None = None) -> tuple[list[int], list[float]]:
    """Active units per stochastic layer (Burda et al.: Cov_x(E_q[u|x]) > 0.01) and those covariances, one per unit."""
    device = _device_of(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    parts = [model.posterior_means(x[start:start + batch_size].to(device), generator=generator,
                                   y=_labels_of(labels, start, batch_size, device))
             for start in range(0, len(x), batch_size)]
    model.train(was_training)
    counts, variances = [], []
    for layer in zip(*parts):
        means = torch.cat(layer).double()
        variance = means.var(0, unbiased=True) if len(means) > 1 else torch.zeros(means.shape[1], dtype=torch.float64)
        counts.append(int((variance > ACTIVE_UNIT_THRESHOLD).sum()))
        variances.extend(variance.tolist())
    return counts, variances


KL_DIAGNOSTIC_DRAWS = 2**16  # posterior draws, over all examples, for the KL per dimension without a closed form


@torch.no_grad()
def _kl_per_example_and_dim(model: VAEModel, x: Tensor, batch_size: int, seed: int,
                            samples: int | None = None, labels: Tensor | None = None,
                            ) -> tuple[Tensor | None, Tensor]:
    """The closed-form KL per example where there is one (else ``None``) and the mean KL per latent dimension.

    Without a closed form the KL per dimension is a Monte Carlo average over all examples and ``samples``
    draws each; by default the draws total about KL_DIAGNOSTIC_DRAWS (64 per example for small sets, a
    few for large ones, where the average over examples already makes the estimate precise). A VampPrior's
    marginals cost (components x dimensions) per draw, so 64 draws for each of 10,000 examples took minutes.
    """
    if samples is None:
        samples = min(64, max(4, math.ceil(KL_DIAGNOSTIC_DRAWS / max(len(x), 1))))
    device = _device_of(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    exact = not len(model.upper_layers) and isinstance(model.prior, StandardNormalPrior)
    prior = model.prior_distribution()
    totals, per_dim = [], torch.zeros(sum(model.latent_dims), dtype=torch.float64)
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size].to(device)
        terms = model.elbo_terms(batch, generator=generator, prior=prior, num_samples=None if exact else samples,
                                 y=_labels_of(labels, start, len(batch), device))
        totals.append(terms.kl.double().cpu())
        per_dim += terms.kl_per_dim.double().sum(0).cpu()
    return (torch.cat(totals) if exact else None), per_dim / max(len(x), 1)


def evaluate(model: VAEModel, x: Tensor, num_importance_samples: int = 5000, seed: int = 0, *,
             batch_size: int | None = None, memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
             compile: bool | None = None, progress: bool = False, labels: Tensor | None = None) -> Evaluation:
    """Negative ELBO (reconstruction + KL), importance-weighted -log p(x), bits/dim, active units and KL per
    latent dimension of ``model`` on examples ``x`` (as the model sees them), with standard errors over ``x``.

    The reconstruction term averages -log p(x|z_k) over the same K draws as the importance-weighted
    estimate; the KL term is in closed form where it has one (one layer, normal prior), else their average.
    A conditional model is evaluated given ``labels`` (class indices, one per example): every number is then of
    log p(x|y).
    """
    if len(x) == 0:
        raise ConfigError("there are no examples to evaluate")
    started = time.perf_counter()
    model.likelihood.check_data(x)
    sums = _importance_pass(model, x, num_importance_samples, seed, batch_size, None, memory_budget_mb, compile,
                            progress, labels=labels)
    k = num_importance_samples
    nll = -(sums.log_sum_w - math.log(k)).numpy()
    reconstruction = (-sums.sum_log_px_z / k).numpy()
    exact_kl, kl_per_dim = _kl_per_example_and_dim(model, x, 1024, seed, labels=labels)
    kl = exact_kl.numpy() if exact_kl is not None else (sums.sum_kl / k).numpy()
    neg_elbo = reconstruction + kl
    counts, variances = active_units(model, x, seed=seed, labels=labels)
    stats = {name: _mean_and_stderr(values) for name, values in
             (("neg_elbo", neg_elbo), ("reconstruction", reconstruction), ("kl", kl), ("nll", nll))}
    result = Evaluation(
        num_examples=len(x), importance_samples=k, seed=seed,
        neg_elbo=stats["neg_elbo"][0], neg_elbo_stderr=stats["neg_elbo"][1],
        reconstruction=stats["reconstruction"][0], reconstruction_stderr=stats["reconstruction"][1],
        kl=stats["kl"][0], kl_stderr=stats["kl"][1], nll=stats["nll"][0], nll_stderr=stats["nll"][1],
        active_units=sum(counts), active_units_per_layer=counts, kl_per_dim=kl_per_dim.tolist(),
        posterior_mean_variance=variances,
        per_example={"neg_elbo": neg_elbo, "reconstruction": reconstruction, "kl": kl, "nll": nll},
    )
    if model.likelihood.is_discrete(x):
        to_bits = 1.0 / (math.prod(model.input_shape) * math.log(2.0))
        result.bits_per_dim = result.nll * to_bits
        result.bits_per_dim_stderr = result.nll_stderr * to_bits
        result.elbo_bits_per_dim = result.neg_elbo * to_bits
        result.per_example["bits_per_dim"] = nll * to_bits
    result.seconds = time.perf_counter() - started
    return result


@torch.no_grad()
def column_log_likelihood(model: VAEModel, x: Tensor, num_importance_samples: int = 100, seed: int = 0,
                          batch_size: int = 256, labels: Tensor | None = None) -> Tensor:
    """Importance-weighted estimate of log p(x_c) for every column c of every table row, shape (n, columns).

    p(x_c) = E_{z~q(z|x)}[p(x_c|z) p(z) / q(z|x)]: the proposal may condition on the whole row, the estimate is
    still of the column's marginal. A missing cell's term is the probability of its being missing (for columns
    with missing cells in training), else 0. In nats, continuous columns in their own units.
    """
    likelihood = model.likelihood
    if not hasattr(likelihood, "column_nll"):
        raise DataError("per-column log-likelihoods apply to models of tables")
    device = _device_of(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size].to(device)
        y = _labels_of(labels, start, len(batch), device)
        z, log_pz, log_qz = model.latent_log_densities(batch, num_importance_samples, generator=generator, y=y)
        log_px_z = -likelihood.column_nll(model.decoder_params(z, y), batch)  # (K, batch, columns)
        log_w = log_px_z + (log_pz - log_qz).unsqueeze(-1)
        out.append((torch.logsumexp(log_w, 0) - math.log(num_importance_samples)).cpu())
    return torch.cat(out)
