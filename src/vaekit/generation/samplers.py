"""Samplers: where the latent codes come from that ``VAE.sample`` decodes, as plug-ins registered by name.

    prior   z ~ p(z), what the model was trained with: N(0, I), the VampPrior, or the hierarchy's top prior
            followed down the generative chain (``VAEModel.sample_latent``)
    gmm     ex-post density estimation (Ghosh et al. 2020, "From variational to deterministic autoencoders";
            pythae's GaussianMixtureSampler): after training, a Gaussian mixture with full covariances is
            fitted to the training set's latent means; its number of components is chosen by BIC

The aggregate posterior q(z) = E_x q(z|x) of a trained VAE is not N(0, I): it has holes and denser regions,
and prior draws that fall in a hole decode to blurry or mixed examples. A density fitted to where the
training set's codes actually are samples from the regions the decoder was trained on.

Every sampler has one method, ``sample_latent(vae, n, generator) -> Tensor`` of shape (n, latent_dim): the
bottom layer's code z_1 that the decoder takes. ``VAE.sample(n, sampler=...)`` takes a name ("prior", or
one fitted on that estimator by ``fit_sampler`` / ``load_sampler``) or any object with that method; the
rest of sampling (decoding, a table's DataFrame) is the same for all.

With several stochastic layers the mixture is fitted on the top layer z_L; z_{L-1}, ..., z_1 are then
drawn from the model's own conditional priors p(z_i | z_{i+1}), exactly as prior sampling goes down the
chain. The lower layers' conditionals were trained to match the posterior given the layer above, so
only the top, where q(z_L) and p(z_L) disagree, is replaced.

A conditional model's mixture is fitted per label by default (``per_label``): one BIC-chosen mixture over the
codes of each label's examples, encoded under that label, and ``vae.sample(n, y=...)`` draws each example's code
from its own label's mixture. The codes q(z|x, y) of a trained conditional VAE still depend on the label (the
encoder sees x, which shows the class), so codes from the prior, or from one mixture shared by all labels, mix
the style of one class with the label of another and decode to examples the label does not describe;
``benchmarks/generation.py`` measures both (docs/benchmarks.md, "Generation").

Why the means, not posterior draws (``source="draw"`` fits on one draw z ~ q(z|x) per example instead):
the mixture of draws estimates q(z) itself, whose spread includes every posterior's own noise, which
the decoder averages into blur; the means are the points that decode to the sharpest training-like
examples, and ``benchmarks/samplers.py`` measures both (docs/generation.md has the numbers).

A fitted mixture is saved with the run as ``sampler_gmm.json`` (what was fitted, on what, for which
weights: the model fingerprint) and ``sampler_gmm.safetensors`` (weights, means, covariances and their
Cholesky factors, float64): no pickle; loading checks both files belong together and to the run's weights.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from .._version import __version__
from ..anomaly.scores import model_fingerprint
from ..anomaly.typicality import component_parameters
from ..api import VAE
from ..errors import CheckpointError, ConfigError, DataError
from ..fileio import atomic_write_bytes, atomic_write_json, read_json
from ..names import FITTED_KINDS
from ..names import SAMPLER_MAX_COMPONENTS as DEFAULT_MAX_COMPONENTS
from ..names import SAMPLER_SOURCES as SOURCES

SAMPLER_FORMAT_VERSION = 2  # 2: per-label mixtures (component_labels); version 1 files load as they are
READABLE_FORMATS = (1, 2)
DEFAULT_MAX_FIT_SIZE = 20_000
DEFAULT_REG_COVAR = 1e-4  # added to every covariance's diagonal (latent units are of order 1)


@runtime_checkable
class Sampler(Protocol):
    """What ``VAE.sample`` draws its latent codes from."""

    kind: str

    def sample_latent(self, vae: VAE, n: int, generator: torch.Generator) -> Tensor:
        """n codes z_1 for the decoder, shape (n, latent_dim), on the model's device. For a conditional model
        ``VAE.sample`` also passes ``y=`` (n class indices, a tensor), the labels the codes will be decoded under."""
        ...


class PriorSampler:
    """z ~ p(z): the model's own prior, then down the generative chain (nothing to fit)."""

    kind = "prior"

    def sample_latent(self, vae: VAE, n: int, generator: torch.Generator, y: Tensor | None = None) -> Tensor:
        with torch.no_grad():  # the prior N(0, I) is the same for every label
            return vae.model_.sample_latent(n, generator=generator)


@dataclass(eq=False)
class GaussianMixtureSampler:
    """A Gaussian mixture (full covariances) over the top stochastic layer, fitted after training.

    ``weights`` (k,), ``means`` (k, d), ``covariances`` (k, d, d) and ``scale_tril`` (their Cholesky
    factors) are float64 tensors; ``bic`` holds the criterion of every candidate number of components.

    A per-label mixture (a conditional model's) also has ``component_labels`` (k,), the class index of each
    component: label c's mixture is the components of that class, with their weights renormalized, and
    ``weights`` are the joint p(label, component) (summing to 1 over all). ``bic_by_label`` then holds each
    label's criteria (and ``bic`` is empty)."""

    weights: Tensor
    means: Tensor
    covariances: Tensor
    scale_tril: Tensor
    model_fingerprint: str
    layer: int  # the stochastic layer it models, 0 = the bottom (z_1)
    fit_size: int
    seed: int
    source: str = "mean"
    reg_covar: float = DEFAULT_REG_COVAR
    bic: dict[int, float] = field(default_factory=dict)
    component_labels: Tensor | None = None
    bic_by_label: dict[int, dict[int, float]] = field(default_factory=dict)
    kind: str = "gmm"

    @property
    def per_label(self) -> bool:
        return self.component_labels is not None

    def label_components(self) -> dict[int, int]:
        """Per-label mixtures: the number of components of each label (class index) fitted; {} otherwise."""
        if self.component_labels is None:
            return {}
        labels, counts = torch.unique(self.component_labels, return_counts=True)
        return {int(c): int(k) for c, k in zip(labels.tolist(), counts.tolist())}

    @property
    def components(self) -> int:
        return int(self.weights.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def distribution(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> MixtureSameFamily:
        """The mixture as a ``torch.distributions`` object over the top layer's codes."""
        return MixtureSameFamily(Categorical(probs=self.weights.to(device, dtype)),
                                 MultivariateNormal(self.means.to(device, dtype),
                                                    scale_tril=self.scale_tril.to(device, dtype)))

    def log_prob(self, z: Any) -> np.ndarray:
        """log density of codes ``z`` (n, d) under the mixture, nats per code (float64)."""
        z = torch.as_tensor(np.asarray(z, dtype=np.float64))
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise DataError(f"codes must have shape (n, {self.dim}), got {tuple(z.shape)}")
        return self.distribution().log_prob(z).numpy()

    def sample_top(self, n: int, generator: torch.Generator, y: Tensor | None = None, classes: Any = None) -> Tensor:
        """n draws from the mixture, on the generator's device: a component per draw, then mean + L eps; for a
        per-label mixture the component is drawn among those of each draw's label ``y`` (n class indices; an
        error names a label without components by ``classes``, the model's class names, when given)."""
        device = generator.device
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        weights = self.weights.to(device, dtype)
        if self.component_labels is None:
            component = torch.multinomial(weights, n, replacement=True, generator=generator)
        else:
            if y is None or len(y) != n:
                raise DataError("this gmm sampler holds one mixture per label: give the label of every sample (y)")
            y = torch.as_tensor(y, device=device).long()
            own = self.component_labels.to(device)[None, :] == y[:, None]  # (n, k)
            missing = ~own.any(1)
            if missing.any():
                absent = sorted(set(y[missing].tolist()))
                names = ", ".join(str(c if classes is None else classes[c]) for c in absent)
                raise DataError(f"this gmm sampler was fitted on no examples of {names}: fit it on data that has "
                                f"them (vaekit fit-sampler RUN DATA), or sample those labels with the prior")
            component = torch.multinomial(weights[None, :] * own.to(dtype), 1, replacement=True,
                                          generator=generator).squeeze(1)
        eps = torch.randn((n, self.dim, 1), generator=generator, device=device, dtype=dtype)
        tril = self.scale_tril.to(device, dtype)[component]
        return self.means.to(device, dtype)[component] + (tril @ eps).squeeze(-1)

    def check_model(self, vae: VAE) -> None:
        """Refuse a model whose weights are not those the mixture was fitted on."""
        dims = vae.model_.latent_dims
        if self.layer != len(dims) - 1 or self.dim != dims[-1]:
            raise CheckpointError(f"this gmm sampler models a {self.dim}-dimensional layer {self.layer + 1}; the "
                                  f"model's top layer is {len(dims)} with {dims[-1]} dimensions: fit the sampler again")
        if self.component_labels is not None:
            classes = vae.model_.num_classes if vae.model_.conditional else 0
            if not classes or int(self.component_labels.max()) >= classes:
                raise CheckpointError(f"this gmm sampler holds one mixture per label of a conditional model; this "
                                      f"model {'has ' + str(classes) + ' classes' if classes else 'is not conditional'}"
                                      f": fit the sampler again")
        if model_fingerprint(vae) != self.model_fingerprint:
            raise CheckpointError("this gmm sampler was fitted for other weights than this model's; fit it again "
                                  "(vaekit fit-sampler RUN, or vaekit.generation.fit_sampler(vae, X))")

    def sample_latent(self, vae: VAE, n: int, generator: torch.Generator, y: Tensor | None = None) -> Tensor:
        self.check_model(vae)
        model = vae.model_
        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            z = self.sample_top(n, generator, y, getattr(vae, "classes_", None)).to(dtype)
            for layer in reversed(model.upper_layers):  # down the chain as VAEModel.sample_latent goes
                mu, logvar = layer.generative(z)
                z = model.reparameterize(mu, torch.exp(0.5 * logvar), generator=generator)
        return z

    def describe(self, classes: Any = None, data: str | None = None) -> str:
        """One line: what was fitted and what BIC chose (``classes``: a conditional model's class names; ``data``:
        what the examples were, for the line)."""
        where = f"layer z_{self.layer + 1}" if self.layer else "z"
        head = (f"gmm sampler: {self.components} component{'s' * (self.components != 1)} (full covariance) over "
                f"{where} ({self.dim} dimensions), fitted on the posterior {self.source}s of {self.fit_size:,} "
                f"examples" + (f" of {data}" if data else ""))
        if self.component_labels is not None:
            def name(c: int) -> str:
                return str(classes[c]) if classes is not None and c < len(classes) else str(c)
            each = ", ".join(f"{name(c)}: {k}" for c, k in self.label_components().items())
            return f"{head}; one mixture per label (a label's samples are drawn from its own), BIC chose {{{each}}} components"
        tried = ", ".join(f"{k}: {v:.1f}" for k, v in sorted(self.bic.items()))
        return f"{head}; BIC per components {{{tried}}}"


SAMPLERS: dict[str, type] = {cls.kind: cls for cls in (PriorSampler, GaussianMixtureSampler)}
"""The samplers by name; ``fit_sampler`` and the benchmark list them from here, the CLI from ``vaekit.names``."""

SAMPLER_DESCRIPTIONS = {
    "prior": "z ~ p(z), the model's prior (what training used)",
    "gmm": "a Gaussian mixture fitted after training on the training set's latent means (BIC picks its size)",
}


# --- fitting ------------------------------------------------------------------------------------------

def latent_codes(vae: VAE, X: Any, *, source: str = "mean", seed: int = 0, num_samples: int = 100,
                 y: Any = None) -> np.ndarray:
    """The top stochastic layer's codes of every example of ``X`` (n, d_top), float64: posterior means
    (``source="mean"``; above a bottom-up model's first layer a Monte Carlo average over ``num_samples`` draws,
    see ``VAEModel.posterior_means``) or one draw z_L ~ q per example (``source="draw"``). A conditional model
    encodes each example under its label ``y``."""
    return _latent_codes(vae, X, source=source, seed=seed, num_samples=num_samples, y=y)[0]


def _latent_codes(vae: VAE, X: Any, *, source: str, seed: int, num_samples: int = 100,
                  y: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``latent_codes`` and the examples' class indices (None for an unconditional model)."""
    if source not in SOURCES:
        raise ConfigError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    vae._check_fitted()
    model = vae.model_
    x = vae._as_model_input(X)
    labels = vae._labels(y, len(x))
    generator = torch.Generator(device=vae._device()).manual_seed(int(seed))
    parts = []
    with torch.no_grad():
        for batch, batch_labels in vae._labelled_batches(x, labels):
            if source == "mean":
                if len(model.latent_dims) == 1:
                    top = model.posterior_params(batch, batch_labels)[0]
                else:
                    top = model.posterior_means(batch, num_samples=num_samples, generator=generator,
                                                y=batch_labels)[-1]
            else:
                top = model.infer(batch, generator=generator, y=batch_labels)[-1][0]
            parts.append(top.double().cpu())
    return torch.cat(parts).numpy(), None if labels is None else labels.numpy()


def max_components_for(n: int, dim: int, max_components: int = DEFAULT_MAX_COMPONENTS) -> int:
    """The most components BIC may choose among for n codes of ``dim`` dimensions: every component needs
    two examples per free parameter (its weight, mean and full covariance, 1 + d + d(d+1)/2), as for the
    typicality mixture of ``vaekit.anomaly``."""
    return max(1, min(int(max_components), n // (2 * component_parameters(dim))))


def _bic_mixture(codes: np.ndarray, max_components: int, reg_covar: float, seed: int):
    """Full-covariance Gaussian mixtures (``vaekit.models.mixture``: scikit-learn's EM, batched in PyTorch) for
    1 .. ``max_components_for(n, d)`` components: the one of lowest BIC and the criterion of each."""
    from ..models.mixture import select_by_bic

    n, dim = codes.shape
    return select_by_bic(codes, range(1, max_components_for(n, dim, max_components) + 1), reg_covar=reg_covar,
                         seed=seed)


def _subset(codes: np.ndarray, most: int, seed: int) -> np.ndarray:
    """At most ``most`` of the rows, a seeded subset in their order."""
    if len(codes) <= most:
        return codes
    return codes[np.sort(np.random.default_rng(seed).choice(len(codes), most, replace=False))]


def fit_gmm(vae: VAE, X: Any, *, seed: int = 0, max_components: int = DEFAULT_MAX_COMPONENTS,
            source: str = "mean", max_fit_size: int = DEFAULT_MAX_FIT_SIZE,
            reg_covar: float = DEFAULT_REG_COVAR, y: Any = None,
            per_label: bool | None = None) -> GaussianMixtureSampler:
    """Fit the ``gmm`` sampler on ``X`` (at most ``max_fit_size`` examples, a seeded subset): full-covariance Gaussian
    mixtures (scikit-learn's EM, ``vaekit.models.mixture``) for 1 .. ``max_components_for(n, d)`` components, the
    lowest BIC kept.

    ``per_label`` (a conditional model's, the default for one): one such mixture per label over the codes of
    that label's examples (at most ``max_fit_size`` each), weighted by the label's share of ``X``; labels with
    fewer than 2 examples get no mixture (sampling them is then a clear error). ``per_label=False``: one mixture
    shared by all labels."""
    for name, value, low in (("max_components", max_components, 1), ("max_fit_size", max_fit_size, 2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"{name} must be a whole number of at least {low}, got {value!r}")
    if not (isinstance(reg_covar, (int, float)) and math.isfinite(reg_covar) and reg_covar >= 0):
        raise ConfigError(f"reg_covar must be a number of at least 0, got {reg_covar!r}")
    vae._check_fitted()
    conditional = vae.model_.conditional
    if per_label is None:
        per_label = conditional
    elif per_label and not conditional:
        raise ConfigError("per_label mixtures need a conditional model (one trained with conditional=True)")
    codes, labels = _latent_codes(vae, X, source=source, seed=seed, y=y)
    if len(codes) < 2:
        raise DataError(f"the gmm sampler needs at least 2 examples to fit on, got {len(codes)}")
    if not np.isfinite(codes).all():
        raise DataError("the model's latent codes of these examples hold NaN or infinite values")
    common = dict(model_fingerprint=model_fingerprint(vae), layer=len(vae.model_.latent_dims) - 1, seed=int(seed),
                  source=source, reg_covar=float(reg_covar))
    if not per_label:
        codes = _subset(codes, max_fit_size, seed)
        best, bic = _bic_mixture(codes, max_components, reg_covar, seed)
        weights, means, covariances = best.weights, best.means, best.covariances
        extra: dict[str, Any] = dict(bic=bic, fit_size=len(codes))
    else:
        parts, bic_by_label, fitted = [], {}, 0
        for c in np.unique(labels):
            own = _subset(codes[labels == c], max_fit_size, seed)
            if len(own) < 2:
                continue
            best, bic_by_label[int(c)] = _bic_mixture(own, max_components, reg_covar, seed)
            share = float(np.mean(labels == c))
            parts.append((int(c), best.weights * share, best.means, best.covariances))
            fitted += len(own)
        if not parts:
            raise DataError("the per-label gmm sampler needs at least 2 examples of some label to fit on")
        total = sum(w.sum() for _, w, _, _ in parts)
        weights = np.concatenate([w / total for _, w, _, _ in parts])
        means = np.concatenate([m for _, _, m, _ in parts])
        covariances = np.concatenate([v for _, _, _, v in parts])
        extra = dict(bic={}, bic_by_label=bic_by_label, fit_size=fitted,
                     component_labels=torch.tensor([c for c, w, _, _ in parts for _ in range(len(w))],
                                                   dtype=torch.long))
    covariances = torch.from_numpy(np.ascontiguousarray(covariances, dtype=np.float64))
    return GaussianMixtureSampler(
        weights=torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float64)),
        means=torch.from_numpy(np.ascontiguousarray(means, dtype=np.float64)),
        covariances=covariances, scale_tril=torch.linalg.cholesky(covariances), **common, **extra)


def fit_sampler(vae: VAE, X: Any = None, kind: str = "gmm", *, seed: int = 0, y: Any = None,
                **options: Any) -> Sampler:
    """Fit the sampler ``kind`` on ``X`` (the training set, as ``vae.fit`` took it) and make it the estimator's
    sampler of that name, so ``vae.sample(n, sampler=kind)`` uses it. ``options`` go to the kind's fitting
    (for ``gmm``: ``max_components``, ``source``, ``max_fit_size``, ``reg_covar``, ``per_label``; see ``fit_gmm``).
    A conditional model's examples are encoded under their labels ``y``."""
    if kind not in SAMPLERS:
        raise ConfigError(f"unknown sampler {kind!r}; the samplers are {', '.join(SAMPLERS)}")
    vae._check_fitted()
    if kind == "prior":
        if options:
            raise ConfigError(f"the prior sampler takes no options, got {', '.join(options)}")
        sampler: Sampler = PriorSampler()
    else:
        if X is None:
            raise DataError(f"the {kind} sampler is fitted on data: pass the training set as X")
        sampler = fit_gmm(vae, X, seed=seed, y=y, **options)
    attach(vae, sampler)
    return sampler


def attach(vae: VAE, sampler: Sampler) -> None:
    """Make ``sampler`` the estimator's sampler of its kind (``vae.samplers_[kind]``)."""
    if not hasattr(vae, "samplers_"):
        vae.samplers_ = {}
    vae.samplers_[sampler.kind] = sampler


# --- saving and loading -------------------------------------------------------------------------------

def sampler_paths(run_dir: str | Path, kind: str = "gmm") -> tuple[Path, Path]:
    """``RUN/sampler_KIND.json`` and ``RUN/sampler_KIND.safetensors``."""
    return Path(run_dir) / f"sampler_{kind}.json", Path(run_dir) / f"sampler_{kind}.safetensors"


TENSOR_NAMES = ("weights", "means", "covariances", "scale_tril")


def save_sampler(sampler: GaussianMixtureSampler, run_dir: str | Path) -> Path:
    """Write the sampler beside the run's model (atomically; the tensors first, then the JSON that names
    their SHA-256, so a reader never pairs one fit's metadata with another's tensors). Returns the JSON's path."""
    if not isinstance(sampler, GaussianMixtureSampler):
        raise ConfigError(f"only fitted samplers are saved ({', '.join(FITTED_KINDS)}); {sampler.kind!r} has no state")
    meta_path, tensor_path = sampler_paths(run_dir, sampler.kind)
    # No safetensors metadata (the JSON holds it): its header order is not fixed, and the same fit should
    # write the same bytes.
    names = TENSOR_NAMES + (("component_labels",) if sampler.component_labels is not None else ())
    blob = st_save({name: getattr(sampler, name).detach().cpu().contiguous().clone() for name in names})
    atomic_write_bytes(tensor_path, blob)
    by_label = {str(c): {str(k): v for k, v in sorted(b.items())} for c, b in sorted(sampler.bic_by_label.items())}
    atomic_write_json(meta_path, {
        "format_version": SAMPLER_FORMAT_VERSION, "vaekit_version": __version__, "kind": sampler.kind,
        "components": sampler.components, "covariance_type": "full", "layer": sampler.layer, "dim": sampler.dim,
        "bic": {str(k): v for k, v in sorted(sampler.bic.items())}, "fit_size": sampler.fit_size,
        "source": sampler.source, "reg_covar": sampler.reg_covar, "seed": sampler.seed,
        "per_label": sampler.per_label, "bic_by_label": by_label,
        "model_fingerprint": sampler.model_fingerprint, "tensors": tensor_path.name,
        "tensors_sha256": hashlib.sha256(blob).hexdigest()})
    return meta_path


def load_sampler(run_dir: str | Path, vae: VAE | None = None, kind: str = "gmm") -> GaussianMixtureSampler:
    """The sampler saved in a run directory, checked against ``vae``'s weights and made its sampler of that
    kind; a run without one is a ``CheckpointError`` saying how to fit it."""
    if kind not in FITTED_KINDS:
        raise ConfigError(f"{kind!r} is not a fitted sampler; the fitted ones are {', '.join(FITTED_KINDS)}")
    meta_path, tensor_path = sampler_paths(run_dir, kind)
    if not meta_path.is_file():
        raise CheckpointError(f"{run_dir} has no fitted {kind} sampler: run `vaekit fit-sampler {run_dir}` first")
    meta = read_json(meta_path)
    try:
        data = tensor_path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read {tensor_path} ({err}); fit the sampler again") from None
    try:
        sampler = _sampler_from_files(meta, data)
    except (ConfigError, SafetensorError, ValueError, TypeError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{meta_path} and {tensor_path.name} are not a valid vaekit {kind} sampler ({err}); "
                              f"fit it again with `vaekit fit-sampler {run_dir}`") from None
    if vae is not None:
        try:
            sampler.check_model(vae)
        except CheckpointError:
            raise CheckpointError(f"{meta_path} was fitted for other weights than {run_dir}'s model.safetensors; "
                                  f"fit it again with `vaekit fit-sampler {run_dir}`") from None
        attach(vae, sampler)
    return sampler


def _sampler_from_files(meta: Any, data: bytes) -> GaussianMixtureSampler:
    if not isinstance(meta, dict) or meta.get("format_version") not in READABLE_FORMATS:
        raise ConfigError(f"format_version must be one of {', '.join(map(str, READABLE_FORMATS))}")
    if meta.get("kind") != "gmm" or meta.get("covariance_type") != "full":
        raise ConfigError("it is not a full-covariance gmm sampler")
    if hashlib.sha256(data).hexdigest() != meta.get("tensors_sha256"):
        raise ConfigError("the tensors are not the ones this metadata was written with")
    tensors = st_load(data)
    per_label = meta.get("per_label", False) is True
    names = TENSOR_NAMES + (("component_labels",) if per_label else ())
    if set(tensors) != set(names):
        raise ConfigError(f"the tensors must be {', '.join(names)}, found {', '.join(sorted(tensors))}")
    weights, means, covariances, tril = (tensors[name] for name in TENSOR_NAMES)
    k, d = int(meta["components"]), int(meta["dim"])
    if (weights.shape != (k,) or means.shape != (k, d) or covariances.shape != (k, d, d) or tril.shape != (k, d, d)
            or any(t.dtype != torch.float64 for t in (weights, means, covariances, tril))):
        raise ConfigError(f"the arrays do not have the shapes of {k} components over {d} dimensions (float64)")
    if not all(torch.isfinite(t).all() for t in (weights, means, covariances, tril)):
        raise ConfigError("the arrays hold NaN or infinite values")
    if (weights <= 0).any() or abs(float(weights.sum()) - 1.0) > 1e-6:
        raise ConfigError("the component weights must be positive and sum to 1")
    diagonal = torch.diagonal(tril, dim1=-2, dim2=-1)
    if (diagonal <= 0).any() or not torch.equal(tril, torch.tril(tril)):
        raise ConfigError("the Cholesky factors must be lower triangular with a positive diagonal")
    if not torch.allclose(tril @ tril.transpose(-1, -2), covariances, rtol=1e-6, atol=1e-9):
        raise ConfigError("the Cholesky factors do not match the covariances")
    bic = {int(key): float(value) for key, value in dict(meta["bic"]).items()}
    component_labels, bic_by_label = None, {}
    if per_label:
        component_labels = tensors["component_labels"]
        if component_labels.shape != (k,) or component_labels.dtype != torch.long or (component_labels < 0).any():
            raise ConfigError(f"component_labels must be {k} class indices (int64)")
        bic_by_label = {int(c): {int(key): float(value) for key, value in dict(b).items()}
                        for c, b in dict(meta.get("bic_by_label", {})).items()}
    source = meta["source"]
    if source not in SOURCES:
        raise ConfigError(f"source must be one of {', '.join(SOURCES)}")
    return GaussianMixtureSampler(weights=weights, means=means, covariances=covariances, scale_tril=tril,
                                  model_fingerprint=str(meta["model_fingerprint"]), layer=int(meta["layer"]),
                                  fit_size=int(meta["fit_size"]), seed=int(meta["seed"]), source=source,
                                  reg_covar=float(meta["reg_covar"]), bic=bic, component_labels=component_labels,
                                  bic_by_label=bic_by_label)
