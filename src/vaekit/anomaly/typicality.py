"""Typicality of the model's own statistics (DoSE: Morningstar et al., AISTATS 2021).

A likelihood alone ranks simple images from another distribution as *more* likely than the data the
model was trained on (Nalisnick et al. 2019). DoSE looks instead at how *typical* an example is: per
example it collects statistics the model computes anyway and fits a density to them on clean data;
the score is that density's negative log, so an example is anomalous when its statistics are unusual
in either direction (a likelihood that is too high is as suspicious as one that is too low).

The statistics (per example, from ``num_samples`` seeded posterior draws):

    reconstruction      E_q[-log p(x|z)], nats
    kl                  KL(q(z|x) || p(z)), nats (one column per stochastic layer when there are several)
    posterior_log_std   mean over latent dimensions of log sigma(x): the posterior's entropy per dimension
    code_norm           mean over latent dimensions of mu(x)^2: how far the code lies from the prior's centre
    compressed_bits     (images only) the PNG code length of x (``scores.compressed_bits``): the generic
                        complexity that makes simple images look likely (Serra et al. 2020)
    mu_i, log_var_i     the posterior's mean and log-variance per dimension of the first stochastic layer

The per-dimension statistics are used when the fitting data hold at least twice as many examples as one
full-covariance Gaussian over all statistics has parameters (2,162 for a 20-dimensional latent space);
with fewer, the density is fitted on the summary statistics alone. Without ``compressed_bits`` a blank image, whose reconstruction is easy, lies near simple clean images;
without the per-dimension posterior, digits lie near Fashion-MNIST's own statistics (measured in
``benchmarks/anomaly.py``). They are scaled robustly (median and median absolute deviation on the
fitting data) and modelled by a Gaussian mixture with full covariances whose number of components
(1, 2, 4, ... up to ``max_components``, and at most one per twice its parameter count in examples)
is chosen by BIC (``vaekit.models.mixture``: scikit-learn's EM, batched in PyTorch). The fitted state is plain JSON (``typicality.json`` in the run
directory), tied to the weights by their fingerprint; nothing is pickled.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..api import VAE
from ..config import dataclass_from_dict
from ..errors import CheckpointError, ConfigError, DataError
from ..fileio import atomic_write_json, read_json

TYPICALITY_FILE = "typicality.json"
TYPICALITY_FORMAT_VERSION = 1
DEFAULT_NUM_SAMPLES = 4
DEFAULT_MAX_COMPONENTS = 16
DEFAULT_FIT_SIZE = 20_000
"""Examples the state is fitted on at most (a seeded subsample): enough for a few-dimensional mixture."""


def statistic_names(vae: VAE) -> list[str]:
    layers = len(vae.model_.latent_dims)
    kl = ["kl"] if layers == 1 else [f"kl_layer_{i}" for i in range(1, layers + 1)]
    complexity = ["compressed_bits"] if _has_complexity(vae) else []
    d = vae.model_.latent_dim
    return ["reconstruction", *kl, "posterior_log_std", "code_norm", *complexity,
            *(f"mu_{i}" for i in range(d)), *(f"log_var_{i}" for i in range(d))]


def _has_complexity(vae: VAE) -> bool:
    """Images with values in [0, 1], which ``compressed_bits`` codes (1 bit per pixel if binary, else 8 bits)."""
    return len(vae.input_shape_) == 3 and vae.config_.data.kind == "unit"


@torch.no_grad()
def model_statistics(vae: VAE, x: np.ndarray, num_samples: int = DEFAULT_NUM_SAMPLES, seed: int = 0,
                     labels: Any = None) -> np.ndarray:
    """The statistics of ``statistic_names(vae)`` for prepared inputs ``x`` (model units), shape (n, k), float64;
    a conditional model's are computed given the examples' ``labels``."""
    if num_samples < 1:
        raise ConfigError(f"num_samples must be at least 1, got {num_samples}")
    model = vae.model_
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    prior = model.prior_distribution()
    dims = model.latent_dims
    y_all = vae._labels(labels, len(x))
    rows = []
    try:
        size = max(1, vae.config_.train.eval_batch_size // num_samples)  # the draws share one batch's memory
        for start in range(0, len(x), size):
            batch = torch.as_tensor(x[start:start + size], device=device)
            y = None if y_all is None else y_all[start:start + size].to(device)
            terms = model.elbo_terms(batch, generator=generator, prior=prior, num_samples=num_samples, y=y)
            mu, logvar = model.posterior_params(batch, y)
            columns = [terms.reconstruction]
            if len(dims) == 1:
                columns.append(terms.kl)
            else:
                per_dim = terms.kl_per_dim
                edges = np.cumsum([0, *dims])
                columns += [per_dim[:, a:b].sum(-1) for a, b in zip(edges[:-1], edges[1:])]
            columns += [0.5 * logvar.mean(-1), (mu**2).mean(-1)]
            rows.append(torch.cat([torch.stack([c.double() for c in columns], dim=-1), mu.double(), logvar.double()],
                                  dim=-1).cpu())
    finally:
        model.train(was_training)
    stats = torch.cat(rows).numpy()
    if _has_complexity(vae):
        from .scores import compressed_bits

        at = len(statistic_names(vae)) - 2 * model.latent_dim - 1
        stats = np.insert(stats, at, compressed_bits(np.clip(x, 0.0, 1.0)), axis=1)
    return stats


@dataclass
class TypicalityModel:
    """A fitted density over the statistics: robust scaling, then a Gaussian mixture (full covariances)."""

    statistics: list[str]
    center: list[float]
    scale: list[float]
    weights: list[float]
    means: list[list[float]]
    covariances: list[list[list[float]]]
    fit_size: int
    num_samples: int
    seed: int
    model_fingerprint: str
    fit_scores: list[float] = field(default_factory=list)  # quantiles of the fitting data's scores, for reports

    def log_density(self, stats: np.ndarray) -> np.ndarray:
        """log density of the scaled statistics under the mixture, per example (exact, in closed form)."""
        z = (np.asarray(stats, dtype=np.float64) - np.asarray(self.center)) / np.asarray(self.scale)
        k = z.shape[1]
        parts = []
        for weight, mean, cov in zip(self.weights, self.means, self.covariances):
            chol = np.linalg.cholesky(np.asarray(cov))
            solved = np.linalg.solve(chol, (z - np.asarray(mean)).T)  # L^-1 (z - m)
            maha = (solved**2).sum(0)
            log_det = 2.0 * np.log(np.diag(chol)).sum()
            parts.append(math.log(weight) - 0.5 * (maha + log_det + k * math.log(2 * math.pi)))
        stacked = np.stack(parts)
        top = stacked.max(0)
        return top + np.log(np.exp(stacked - top).sum(0))

    def score(self, vae: VAE, x: np.ndarray, labels: Any = None) -> np.ndarray:
        """-log density of each prepared example's statistics: higher = less typical (``labels``: a conditional
        model's labels of the examples)."""
        names = statistic_names(vae)
        if not set(self.statistics) <= set(names):
            raise ConfigError(f"this typicality model was fitted on the statistics {self.statistics}; the model "
                              f"gives {names}: fit it again for this run")
        columns = [names.index(n) for n in self.statistics]
        return -self.log_density(model_statistics(vae, x, self.num_samples, self.seed, labels)[:, columns])


def fit_typicality(vae: VAE, x: np.ndarray, *, num_samples: int = DEFAULT_NUM_SAMPLES, seed: int = 0,
                   max_components: int = DEFAULT_MAX_COMPONENTS, max_examples: int = DEFAULT_FIT_SIZE,
                   labels: Any = None) -> TypicalityModel:
    """Fit the typicality density on clean prepared examples ``x`` (at most ``max_examples``, a seeded subsample;
    ``labels``: a conditional model's labels of the examples)."""
    from ..models.mixture import select_by_bic
    from .scores import model_fingerprint

    if max_components < 1:
        raise ConfigError(f"max_components must be at least 1, got {max_components}")
    x = np.asarray(x)
    if labels is not None and not isinstance(labels, (str, int, np.integer)):
        labels = np.asarray(labels, dtype=object).reshape(-1)
    if len(x) > max_examples:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), max_examples, replace=False))
        x = x[keep]
        labels = labels[keep] if isinstance(labels, np.ndarray) else labels
    stats = model_statistics(vae, x, num_samples, seed, labels)
    names = statistic_names(vae)
    # The per-dimension posterior needs a covariance of (k^2 + k) / 2 values: only with enough examples for
    # twice that; fewer examples keep the summary statistics, which every model has.
    k = stats.shape[1]
    if len(stats) < 2 * component_parameters(k):
        keep = [i for i, n in enumerate(names) if not n.startswith(("mu_", "log_var_"))]
        stats, names, k = stats[:, keep], [names[i] for i in keep], len(keep)
    if len(stats) < 2 * (k + 1):
        raise DataError(f"{len(stats)} examples are too few to fit the typicality density of {k} statistics; "
                        f"give at least {2 * (k + 1)}")
    center = np.median(stats, axis=0)
    scale = 1.4826 * np.median(np.abs(stats - center), axis=0)
    spread = stats.std(axis=0)
    scale = np.where(scale > 1e-12, scale, np.where(spread > 1e-12, spread, 1.0))
    z = (stats - center) / scale
    # Each component needs room for its mean and covariance: at most one per twice its parameters in examples.
    limit = max(1, min(max_components, len(z) // (2 * component_parameters(k))))
    best, _ = select_by_bic(z, {1, *(2**i for i in range(1, 12) if 2**i <= limit), limit}, reg_covar=1e-4, seed=seed)
    state = TypicalityModel(statistics=names, center=center.tolist(), scale=scale.tolist(),
                            weights=best.weights.tolist(), means=best.means.tolist(),
                            covariances=best.covariances.tolist(), fit_size=len(stats), num_samples=num_samples,
                            seed=seed, model_fingerprint=model_fingerprint(vae))
    fit = -state.log_density(stats)
    state.fit_scores = np.quantile(fit, [0.5, 0.9, 0.95, 0.99]).tolist()
    return state


def component_parameters(k: int) -> int:
    """Free parameters of one full-covariance mixture component in k dimensions: weight, mean and covariance
    (also the ex-post latent sampler's bound, ``generation.samplers.max_components_for``)."""
    return 1 + k + k * (k + 1) // 2


def save_typicality(state: TypicalityModel, run_dir: str | Path) -> Path:
    path = Path(run_dir) / TYPICALITY_FILE
    atomic_write_json(path, {"format_version": TYPICALITY_FORMAT_VERSION, "vaekit_version": __version__,
                             "typicality": asdict(state)})
    return path


def load_typicality(run_dir: str | Path, vae: VAE | None = None) -> TypicalityModel | None:
    """The typicality model saved in a run directory (``None`` when there is none), checked against ``vae``'s weights."""
    from .scores import model_fingerprint

    path = Path(run_dir) / TYPICALITY_FILE
    if not path.is_file():
        return None
    raw = read_json(path)
    try:
        if not isinstance(raw, dict) or raw.get("format_version") != TYPICALITY_FORMAT_VERSION:
            raise ConfigError(f"format_version must be {TYPICALITY_FORMAT_VERSION}")
        state = dataclass_from_dict(TypicalityModel, raw.get("typicality"), "typicality")
        _check_state(state)
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} is not a valid vaekit typicality model: {err}") from None
    if vae is not None and state.model_fingerprint != model_fingerprint(vae):
        raise CheckpointError(f"{path} was fitted for other weights than the run's model.safetensors; fit it again "
                              "(vaekit fit-detector RUN, or delete the file)")
    return state


def _check_state(state: TypicalityModel) -> None:
    k = len(state.statistics)
    m = len(state.weights)
    arrays_ok = (len(state.center) == k and len(state.scale) == k and np.shape(state.means) == (m, k)
                 and np.shape(state.covariances) == (m, k, k))
    if not arrays_ok or m < 1:
        raise ConfigError("the mixture's arrays do not fit its statistics")
    values = np.concatenate([np.ravel(state.center), np.ravel(state.scale), np.ravel(state.weights),
                             np.ravel(state.means), np.ravel(state.covariances)])
    if not np.isfinite(values).all() or min(state.scale) <= 0 or min(state.weights) <= 0:
        raise ConfigError("the mixture holds non-finite, non-positive scales or weights")
    for cov in state.covariances:
        try:
            np.linalg.cholesky(np.asarray(cov))
        except np.linalg.LinAlgError:
            raise ConfigError("a covariance is not positive definite") from None
    if state.num_samples < 1:
        raise ConfigError("num_samples must be at least 1")


def describe(state: TypicalityModel) -> dict[str, Any]:
    return {"statistics": state.statistics, "components": len(state.weights), "fit_size": state.fit_size}
