"""Anomaly scores from a trained VAE, and their evaluation against known anomalies (AUROC, AUPRC).

Every score is per example and **higher means more anomalous**:

    neg_elbo              -ELBO, nats (one seeded posterior sample)
    neg_log_likelihood    importance-weighted -log p(x), nats (Burda et al. 2016; ``num_importance_samples``)
    reconstruction_error  mean squared error between x and the decoded latent mean
    input_complexity      -log2 p(x) - L(x), bits: the input-complexity correction of Serra et al. (2020),
                          "Input complexity and out-of-distribution detection with likelihood-based generative
                          models", where L(x) is the code length of x under a lossless compressor (PNG or zlib)
    likelihood_ratio      -log p(x) + log p_bg(x), nats: the likelihood ratio of Ren et al. (2019) against a
                          background model trained on perturbed inputs (needs ``background=``; see ``perturb``)
    likelihood_regret     nats the bound gains when a copy of the encoder is fine-tuned on the example alone (Xiao
                          et al. 2020; 100 Adam steps, lr 2e-4, batched with torch.func); slow: only when asked for
    posterior_regret      nats the bound gains when the example's posterior (mu, log-variance) is optimized directly:
                          the amortization gap, the cheap variant of likelihood regret (50 Adam steps, lr 0.05)
    llr                   LLR^{>k} = ELBO - L^{>k}, nats: how much worse the top layers alone explain x than the whole
                          hierarchy (Havtorn et al. 2021; ``llr_k``, default 1); models with 2+ stochastic layers
    typicality            -log density of the model's own per-example statistics (reconstruction, KL, posterior
                          entropy, code norm) under a mixture fitted on clean data: DoSE (Morningstar et al. 2021);
                          needs ``typicality=`` (``vaekit train`` fits one on the training data; see ``typicality.py``)

Raw likelihood is known to fail as an anomaly score: images with less detail get a higher likelihood
even when they come from another distribution (Nalisnick et al. 2019). Both corrections divide out the
part of the likelihood that measures generic complexity; typicality asks instead whether an example's
statistics look like those of clean data, in either direction. ``DEFAULT_SCORE`` (typicality) is the
best-performing score on the default path in ``benchmarks/anomaly.py`` (the table: docs/benchmarks.md);
it applies to every model and data type once a typicality model is fitted.

The calibrated detector built on these scores is ``detector.AnomalyDetector``. Inputs are prepared as the model's training data was: when the run binarized its data, examples are
binarized with a fixed, seeded draw (already binary inputs pass through unchanged).
"""

from __future__ import annotations

import hashlib
import io
import math
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..api import VAE
from ..data.transforms import binarize
from ..errors import ConfigError, DataError
from ..names import (BACKGROUND_DIR, COMPRESSORS, DEFAULT_SCORE, DETECTOR_FILE,  # noqa: F401  (re-exported)
                     SCORE_DESCRIPTIONS, SCORE_NAMES)
from ..plots import new_figure

if TYPE_CHECKING:
    from .typicality import TypicalityModel

SLOW_SCORES = ("likelihood_regret",)
"""Scores computed only when asked for by name: about 10-15 examples/s on 2 cores (see ``regret.py``)."""
ONE_LAYER_SCORES = ("likelihood_regret", "posterior_regret")
MULTI_LAYER_SCORES = ("llr",)
CONDITIONAL_UNSUPPORTED = ("likelihood_regret", "posterior_regret", "llr", "likelihood_ratio")
"""Scores that fine-tune a copy of the encoder, cut the hierarchy or need a background model: unconditional only."""
# Without a typicality model (a run from before it existed whose data cannot be read again): input complexity
# for images it applies to, else -log p(x).
LEGACY_SCORE = "input_complexity"
FALLBACK_SCORE = "neg_log_likelihood"
DETECTOR_FORMAT_VERSION = 1


# --- preparing inputs ----------------------------------------------------------------------------

def prepare_inputs(vae: VAE, X: Any, seed: int = 0) -> np.ndarray:
    """``X`` as float32 examples of the model's shape, binarized as the run's data were (a seeded draw)."""
    # The estimator's own validation (shape, layout, dtype, uint8 scaling, finiteness); values stay in original units.
    x = vae._as_model_input(X, units="model").numpy()
    data = vae.config_.data
    if data.binarize == "none":
        return x
    if x.size and (x.min() < 0 or x.max() > 1):
        raise DataError("the model was trained on binarized [0, 1] data, but these values lie outside [0, 1]")
    generator = torch.Generator().manual_seed(seed)
    return binarize(torch.from_numpy(x), data.binarize_threshold, generator=generator).numpy()


def is_image_model(vae: VAE) -> bool:
    return len(vae.input_shape_) == 3


def complexity_problem(vae: VAE, x: np.ndarray | None = None) -> str | None:
    """Why input complexity does not apply to this model (and data), or ``None`` when it does.

    The score subtracts two code lengths of the same object, so the model must be a distribution over
    what the compressor codes: a Bernoulli likelihood over binary images, or a density over [0, 1]
    intensities (coded as 8-bit images).
    """
    if not is_image_model(vae):
        return (f"input_complexity needs image data (it compresses each example as an image); this model's "
                f"examples have shape {vae.input_shape_}")
    if vae.config_.data.kind != "unit":
        return "input_complexity needs images with values in [0, 1]; this model was trained on real-valued data"
    if vae.config_.model.likelihood == "bernoulli":
        if x is None and vae.config_.data.binarize == "none":
            return ("input_complexity with a Bernoulli likelihood needs binary images; this run did not binarize "
                    "its data (train with --binarize dynamic or static)")
        if x is not None and not np.isin(x, (0.0, 1.0)).all():
            return ("input_complexity with a Bernoulli likelihood needs binary images (the likelihood of grey "
                    "values is not a code length); train with --binarize dynamic or static")
    return None


def default_score(vae: VAE, typicality: "TypicalityModel | None" = None) -> str:
    """``DEFAULT_SCORE`` when a typicality model is at hand, else input complexity where it applies, else -log p(x)."""
    if typicality is not None:
        return DEFAULT_SCORE
    return LEGACY_SCORE if complexity_problem(vae) is None else FALLBACK_SCORE


# --- the scores ----------------------------------------------------------------------------------

def compressed_bits(images: np.ndarray, compressor: str = "png") -> np.ndarray:
    """Lossless code length in bits of each image (n, c, h, w) with values in [0, 1].

    Binary images (every value 0 or 1) are coded with one bit per pixel before compression, others are
    quantized to 8 bits per value. ``png`` is Pillow's PNG writer at compression level 9 (whole file,
    so a constant header overhead is included); ``zlib`` compresses the raw pixel bytes at level 9.
    """
    if compressor not in COMPRESSORS:
        raise ConfigError(f"compressor must be one of {', '.join(COMPRESSORS)}, got {compressor!r}")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"compression needs images of shape (n, 1 or 3, height, width), got {images.shape}")
    if images.size and (images.min() < 0 or images.max() > 1):
        raise DataError("compression needs image values in [0, 1]")
    binary = bool(np.isin(images, (0.0, 1.0)).all())
    bits = np.empty(len(images), dtype=np.float64)
    for i, image in enumerate(images):
        bits[i] = 8 * len(compress_image(image, binary, compressor))
    return bits


def compress_image(image: np.ndarray, binary: bool, compressor: str = "png") -> bytes:
    """The compressed bytes of one image (c, h, w) in [0, 1]: 1 bit per pixel when ``binary``, else 8 bits per value."""
    channels = image.shape[0]
    if binary and channels == 1:
        pixels = image[0] > 0.5
        if compressor == "zlib":
            return zlib.compress(np.packbits(pixels, axis=-1).tobytes(), 9)
        from PIL import Image

        return _png_bytes(Image.fromarray(pixels))  # mode "1": a 1-bit PNG
    values = np.rint(image * 255.0).astype(np.uint8)
    if compressor == "zlib":
        return zlib.compress(values.tobytes(), 9)
    from PIL import Image

    # uint8 arrays of shape (h, w) and (h, w, 3) become "L" and "RGB" images.
    return _png_bytes(Image.fromarray(values[0] if channels == 1 else np.ascontiguousarray(values.transpose(1, 2, 0))))


def _png_bytes(img) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def model_bits(vae: VAE, neg_log_likelihood: np.ndarray) -> np.ndarray:
    """-log2 P(x) in bits from -log p(x) in nats.

    For a discrete likelihood (Bernoulli) this is the model's code length of x itself. For a continuous
    density on [0, 1] intensities, the probability of x's 8-bit bin is about p(x) * (1/255)^D, so
    D log2(255) bits are added, putting both terms of the input-complexity score in the same units.
    """
    bits = np.asarray(neg_log_likelihood, dtype=np.float64) / math.log(2.0)
    if vae.config_.model.likelihood != "bernoulli":
        bits = bits + vae.n_features_in_ * math.log2(255.0)
    return bits


def perturb(X: Any, rate: float = 0.2, seed: int = 0, levels: int | None = None) -> np.ndarray:
    """Copies of ``X`` (values in [0, 1]) with each value replaced by a uniform random one with probability ``rate``.

    Train a background model on these (same settings as the main model) for the likelihood ratio of
    Ren et al. (2019): the background model learns the generic statistics that dominate the likelihood.
    ``levels`` keeps replacements on the data's grid (2 for binary data, 256 for 8-bit images). Training
    with ``perturb_rate`` (``vaekit train --perturb RATE``) does the same with a fresh draw every step.
    """
    if not 0.0 < rate < 1.0:
        raise ConfigError(f"the perturbation rate must lie strictly between 0 and 1, got {rate}")
    x = np.array(X, dtype=np.float32, copy=True)
    if x.size and (x.min() < 0 or x.max() > 1):
        raise DataError("perturbation needs values in [0, 1]")
    rng = np.random.default_rng(seed)  # NumPy's stream, so the anomaly benchmark's background data stay as published
    mask = rng.random(x.shape) < rate
    values = rng.random(int(mask.sum()), dtype=np.float32)
    x[mask] = values if levels is None else np.floor(values * levels) / (levels - 1)
    return x


def available_scores(vae: VAE, background: VAE | None = None, x: np.ndarray | None = None,
                     typicality: "TypicalityModel | None" = None) -> tuple[str, ...]:
    """The scores that apply: input complexity needs suitable images, the likelihood ratio a background model,
    typicality a fitted typicality model."""
    names = [n for n in SCORE_NAMES if n != "input_complexity" or complexity_problem(vae, x) is None]
    names = [n for n in names if n != "typicality" or typicality is not None]
    names = [n for n in names if n not in ONE_LAYER_SCORES or len(vae.model_.latent_dims) == 1]
    names = [n for n in names if n not in MULTI_LAYER_SCORES or len(vae.model_.latent_dims) > 1]
    names = [n for n in names if not (vae.model_.conditional and n in CONDITIONAL_UNSUPPORTED)]
    return tuple(n for n in names if n != "likelihood_ratio" or background is not None)


def anomaly_scores(vae: VAE, X: Any, scores: tuple[str, ...] | list[str] | None = None, *,
                   num_importance_samples: int = 100, compressor: str = "png", seed: int = 0,
                   background: VAE | None = None, typicality: "TypicalityModel | None" = None,
                   llr_k: int = 1, labels: Any = None) -> dict[str, np.ndarray]:
    """Per-example anomaly scores (higher = more anomalous), one array per name in ``scores`` (default: all that apply).

    ``llr_k``: the k of the ``llr`` score, how many of the lowest stochastic layers its second bound takes from the prior.
    ``labels``: a conditional model scores each example given its label (how unusual x is for its class); the
    scores that fine-tune or cut the model (regret, llr, likelihood_ratio) do not apply to conditional models.
    """
    if num_importance_samples < 1:
        raise ConfigError(f"num_importance_samples must be at least 1, got {num_importance_samples}")
    x = prepare_inputs(vae, X, seed=seed)
    names = list([n for n in available_scores(vae, background, x, typicality) if n not in SLOW_SCORES]
                 if scores is None else scores)
    _check_score_names(vae, names, background, x, typicality)
    if vae.model_.conditional:
        unsupported = [n for n in names if n in CONDITIONAL_UNSUPPORTED]
        if unsupported:
            raise ConfigError(f"{', '.join(unsupported)} do(es) not apply to conditional models; use "
                              f"{', '.join(n for n in SCORE_NAMES if n not in CONDITIONAL_UNSUPPORTED)}")
    vae._labels(labels, len(x))  # a conditional model needs them, an unconditional one refuses them
    if "llr" in names:
        from .hierarchical import check_k

        check_k(vae.model_, llr_k, for_ratio=True)
    result: dict[str, np.ndarray] = {}
    need_nll = {"neg_log_likelihood", "input_complexity", "likelihood_ratio"} & set(names)
    nll = -vae.score_samples(x, num_importance_samples=num_importance_samples, seed=seed, y=labels) \
        if need_nll else None
    for name in names:
        if name == "neg_elbo":
            result[name] = vae.elbo(x, seed=seed, y=labels)["neg_elbo"].astype(np.float64) + _log_scale(vae)
        elif name == "neg_log_likelihood":
            result[name] = nll
        elif name == "reconstruction_error":
            result[name] = reconstruction_error(vae, x, labels)
        elif name == "input_complexity":
            result[name] = model_bits(vae, nll) - compressed_bits(x, compressor)
        elif name == "likelihood_ratio":
            x_bg = prepare_inputs(background, x, seed=seed)
            result[name] = nll + background.score_samples(x_bg, num_importance_samples=num_importance_samples, seed=seed)
        elif name == "typicality":
            result[name] = typicality.score(vae, model_units(vae, x), labels)
        elif name in ONE_LAYER_SCORES:
            result[name] = _regret(vae, x, name, seed)
        elif name == "llr":
            from .hierarchical import llr_above

            result[name] = llr_above(vae.model_, _model_tensor(vae, x), llr_k, seed=seed).cpu().numpy()
    return result


def _regret(vae: VAE, x: np.ndarray, name: str, seed: int) -> np.ndarray:
    from .regret import likelihood_regret, posterior_regret

    regret = likelihood_regret if name == "likelihood_regret" else posterior_regret
    # chunked inside (memory), batched within each chunk
    return regret(vae.model_, _model_tensor(vae, x), seed=seed).cpu().numpy()


def reconstruction_error(vae: VAE, x: np.ndarray, labels: Any = None) -> np.ndarray:
    """Mean squared error of each example's reconstruction, in model units: standardized columns, so that every
    column counts on its own scale (one column with large values does not make up the whole error); for a table,
    over its observed encoded values (one-hot categories, 0/1 booleans, standardized numbers)."""
    target = model_units(vae, x).reshape(len(x), -1).astype(np.float64)
    if vae.is_table_:
        recon = vae._decode_values(vae.transform(x, labels), y=labels).reshape(len(x), -1).astype(np.float64)
        return np.nanmean((target - recon) ** 2, axis=1)
    recon = model_units(vae, vae.reconstruct(x, labels)).reshape(len(x), -1).astype(np.float64)
    return ((target - recon) ** 2).mean(axis=1)


def model_units(vae: VAE, x: np.ndarray) -> np.ndarray:
    """Prepared examples (original units) in the units the model sees (standardized for real-valued tables)."""
    return vae._as_model_input(x).numpy()  # the estimator's own conversion


def _model_tensor(vae: VAE, x: np.ndarray) -> torch.Tensor:
    """``model_units`` as a tensor on the model's device."""
    return vae._as_model_input(x).to(vae._device())


def _log_scale(vae: VAE) -> float:
    """log |d(model units)/d(original units)|: turns densities of standardized data into the data's own units."""
    std = vae.config_.data.standardize_std
    return 0.0 if std is None else float(np.log(np.asarray(std)).sum())


def _check_score_names(vae: VAE, names: list[str], background: VAE | None, x: np.ndarray | None = None,
                       typicality: "TypicalityModel | None" = None) -> None:
    if not names:
        raise ConfigError("ask for at least one score")
    unknown = [n for n in names if n not in SCORE_NAMES]
    if unknown:
        raise ConfigError(f"unknown score(s) {', '.join(unknown)}; choose from {', '.join(SCORE_NAMES)}")
    problem = complexity_problem(vae, x) if "input_complexity" in names else None
    if problem is not None:
        raise ConfigError(problem)
    if "likelihood_ratio" in names:
        if background is None:
            raise ConfigError("likelihood_ratio needs a background model (a run trained on perturbed data)")
        if background.input_shape_ != vae.input_shape_:
            raise ConfigError(f"the background model takes examples of shape {background.input_shape_}, "
                              f"the model {vae.input_shape_}")
    if set(ONE_LAYER_SCORES) & set(names) and len(vae.model_.latent_dims) > 1:
        raise ConfigError(f"{', '.join(n for n in names if n in ONE_LAYER_SCORES)} supports models with one "
                          "stochastic layer; this one has " + str(len(vae.model_.latent_dims)))
    if "typicality" in names:
        if typicality is None:
            raise ConfigError("typicality needs a typicality model fitted on clean data (vaekit train fits one; "
                              "else vaekit fit-detector, or anomaly.fit_typicality)")
        if typicality.model_fingerprint != model_fingerprint(vae):
            raise ConfigError("the typicality model was fitted for other weights than this model's; fit it again")


# --- evaluation with known anomalies ---------------------------------------------------------------

def detection_metrics(scores: dict[str, np.ndarray], is_anomaly: Any) -> dict[str, dict[str, float]]:
    """AUROC and AUPRC (average precision, anomalies as the positive class) of every score."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    truth = _check_truth(is_anomaly, scores)
    return {name: {"auroc": float(roc_auc_score(truth, s)), "auprc": float(average_precision_score(truth, s))}
            for name, s in scores.items()}


def _check_truth(is_anomaly: Any, scores: dict[str, np.ndarray]) -> np.ndarray:
    truth = np.asarray(is_anomaly)
    if truth.dtype.kind not in "biuf" or not np.isin(truth, (0, 1)).all():
        raise DataError("anomaly labels must be 0/1 or true/false, one per example")
    truth = truth.astype(bool)
    for name, s in scores.items():
        if len(s) != len(truth):
            raise DataError(f"{len(truth)} anomaly labels for {len(s)} examples ({name}); give one label per example")
    if truth.all() or not truth.any():
        raise DataError("AUROC needs both normal examples and anomalies among the labels; "
                        f"found {int(truth.sum())} anomalies in {len(truth)} examples")
    return truth


def roc_figure(scores: dict[str, np.ndarray], is_anomaly: Any, title: str = "ROC curves"):
    """ROC curves of every score on one set of axes, AUROC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    truth = _check_truth(is_anomaly, scores)
    fig = new_figure((6.0, 5.5))
    ax = fig.add_subplot(1, 1, 1)
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(truth, s)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(truth, s):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{title} ({int(truth.sum())} anomalies, {int((~truth).sum())} normal)")
    return fig


def model_fingerprint(vae: VAE) -> str:
    """SHA-256 over the model's tensors (names, shapes, values): ties a detector to the weights it was calibrated on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.model_.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
