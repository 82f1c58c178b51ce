"""Which pixels or columns make an example anomalous: per-feature shares of -log p(x|z).

Every likelihood in ``vaekit.models.likelihoods`` factorizes over the data dimensions, so the
reconstruction term splits exactly into one share per value:

    -log p(x|z) = sum_j -log p(x_j|z)        contribution_j = E_{z ~ q(z|x)}[-log p(x_j|z)], nats

The expectation is a Monte Carlo average over ``num_samples`` seeded posterior draws; the
contributions of an example sum to its reconstruction term over those draws (the part of -ELBO
the KL term does not explain). For standardized real-valued data each column gains log(std_j), so
that contributions are -log densities in the data's own units, as ``anomaly_scores`` reports them.
Contributions of a density can be negative (a value the model predicts more sharply than one unit).

``feature_contributions`` computes them, ``top_features`` ranks the columns of a table,
``explanation_figure`` draws one image beside its reconstruction and its heat map, and
``write_explanations`` writes one PNG per selected image, or one CSV for a table.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent

from ..api import VAE
from ..errors import ConfigError, DataError
from ..fileio import atomic_write_text
from ..plots import new_figure, save_figure, to_display
from .scores import is_image_model, model_units, prepare_inputs

TABLE_FILE = "explanations.csv"
"""What ``write_explanations`` writes for a model of tabular data (one PNG per example for images)."""
TABLE_COLUMNS = ("example", "rank", "column", "contribution_nats", "value")
"""The columns of ``top_features``; ``explanations.csv`` adds ``name`` (and ``score`` when given)."""
MAX_NAME_LENGTH = 100


# --- the contributions ---------------------------------------------------------------------------

def feature_contributions(vae: VAE, X: Any, *, num_samples: int = 16, seed: int = 0, labels: Any = None) -> np.ndarray:
    """Each value's share of -log p(x|z) in nats, averaged over ``num_samples`` draws z ~ q(z|x) (a conditional
    model: q(z|x, y) and p(x|z, y) under ``labels``, one for all examples or one each).

    Returns float64 of shape (n, *vae.input_shape_) (a table run: (n, columns), each column's likelihood term);
    summed over the dimensions it is the reconstruction term over the same draws, in the data's own units
    (+ log std_j per column for standardized data).
    ``X`` is prepared as ``anomaly_scores`` prepares it (validated, binarized with the seeded draw the
    run used). The draws come from one ``torch.Generator`` seeded with ``seed`` on the model's device,
    ``(num_samples, batch, latent_dim)`` per batch of ``eval_batch_size`` examples: for one batch these
    are exactly the first-layer draws of ``model_.elbo_terms(x, generator, num_samples=num_samples)``.
    """
    _check_count(num_samples, "num_samples")
    _check_seed(seed)
    x = prepare_inputs(vae, X, seed=int(seed))  # original units, binarized as the run's data were
    x_model = model_units(vae, x)
    y_all = vae._labels(labels, len(x_model))
    model = vae.model_
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(int(seed))
    batch_size = vae.config_.train.eval_batch_size
    was_training = model.training
    model.eval()
    parts = []
    try:
        with torch.no_grad():
            for start in range(0, len(x_model), batch_size):
                batch = torch.from_numpy(x_model[start:start + batch_size]).to(device)
                y = None if y_all is None else y_all[start:start + batch_size].to(device)
                q = model.encode(batch, y)
                z = model.reparameterize(q.base_dist.loc, q.base_dist.scale, num_samples=num_samples,
                                         generator=generator)
                table = vae.is_table_  # a table's contributions are per column: its likelihood's terms
                shape = (len(batch), len(vae.schema_.columns)) if table else batch.shape
                total = torch.zeros(shape, dtype=torch.float64, device=device)
                for draw in z:  # one decoder pass per draw: memory of one batch, whatever num_samples is
                    if table:
                        total += model.likelihood.column_nll(model.decoder_params(draw, y), batch).double()
                    else:
                        total -= per_dimension_log_prob(model.decode(draw, y), batch).double()
                parts.append((total / num_samples).cpu())
    finally:
        model.train(was_training)
    contributions = torch.cat(parts).numpy()
    std = vae.config_.data.standardize_std
    if std is not None:  # -log p_orig(x_j) = -log p_model(x_j) + log std_j
        contributions = contributions + np.log(np.asarray(std, dtype=np.float64)).reshape(vae.input_shape_)
    return contributions


def per_dimension_log_prob(dist: Distribution, x: Tensor) -> Tensor:
    """log p(x_j|z) of every data value: the base distribution of the likelihood's ``Independent``.

    Shape ``(*batch, *data_shape)``; it sums over the data dimensions to ``dist.log_prob(x)``.
    """
    if not isinstance(dist, Independent):
        raise TypeError(f"a likelihood must give an Independent distribution over the data dimensions, "
                        f"got {type(dist).__name__}")
    log_prob = dist.base_dist.log_prob(x)
    expected = (*dist.batch_shape, *dist.event_shape)
    if tuple(log_prob.shape) != tuple(expected):
        raise TypeError(f"{type(dist.base_dist).__name__}.log_prob gives shape {tuple(log_prob.shape)}, "
                        f"not one value per data dimension {tuple(expected)}")
    return log_prob


# --- tables --------------------------------------------------------------------------------------

def top_features(contributions: Any, names: Sequence[str] | None = None, k: int = 10, *,
                 values: Any = None, examples: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Per example, the ``k`` columns with the largest contribution: one row each, largest first.

    A table as equally long columns (``pandas.DataFrame(result)`` makes it a data frame; vaekit does
    not depend on pandas): ``example`` (``examples``, default 0..n-1), ``rank`` (1 = largest),
    ``column`` (from ``names``, default x0, x1, ...; pass ``vae.config_.data.columns``),
    ``contribution_nats`` and ``value`` (from ``values``, the examples in original units, shaped like
    ``contributions``; NaN without). Ties keep the columns' order; a ``k`` larger than the number of
    columns gives every column.
    """
    c = np.asarray(contributions, dtype=np.float64)
    if c.ndim < 2 or c.shape[0] == 0 or c[0].size == 0:
        raise DataError(f"contributions must have one row per example (shape (n, features)), got shape {c.shape}")
    n = len(c)
    c = c.reshape(n, -1)
    d = c.shape[1]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a whole number of at least 1, got {k!r}")
    columns = _column_names(names, d)
    if values is None:
        v = np.full((n, d), np.nan)
    else:
        v = np.asarray(values, dtype=np.float64)
        if v.size != c.size or len(v) != n:
            raise DataError(f"values must match the contributions ({n} examples of {d} values), got shape {v.shape}")
        v = v.reshape(n, d)
    ids = np.arange(n) if examples is None else np.asarray(examples)
    if ids.shape != (n,):
        raise DataError(f"give one example id per row of the contributions ({n}), got {ids.shape[0] if ids.ndim else 0}")
    kk = min(int(k), d)
    order = np.argsort(-c, axis=1, kind="stable")[:, :kk]
    rows = np.arange(n)[:, None]
    return {
        "example": np.repeat(ids, kk),
        "rank": np.tile(np.arange(1, kk + 1), n),
        "column": np.asarray(columns, dtype=object)[order].reshape(-1),
        "contribution_nats": c[rows, order].reshape(-1),
        "value": v[rows, order].reshape(-1),
    }


def _column_names(names: Sequence[str] | None, d: int) -> list[str]:
    if names is None:
        return [f"x{j}" for j in range(d)]
    names = [str(name) for name in names]
    if len(names) != d:
        raise DataError(f"{len(names)} column names for {d} columns; give one name per column")
    return names


# --- pictures ------------------------------------------------------------------------------------

def explanation_figure(original: Any, reconstruction: Any, heat: Any, title: str | None = None):
    """Three panels side by side: the image (c, h, w), its reconstruction, and the heat map of ``heat``.

    ``heat`` holds the contributions (c, h, w) or (h, w), summed over the channels of an RGB image; its
    colour bar is in nats. Original and reconstruction share one display scaling, as in the
    reconstruction grids of ``vaekit.plots``.
    """
    original, reconstruction = np.asarray(original, dtype=np.float32), np.asarray(reconstruction, dtype=np.float32)
    if original.ndim != 3 or original.shape[0] not in (1, 3):
        raise DataError(f"an explanation figure needs one image of shape (1 or 3, height, width), got {original.shape}")
    if reconstruction.shape != original.shape:
        raise DataError(f"the reconstruction has shape {reconstruction.shape}, the image {original.shape}")
    heat = np.asarray(heat, dtype=np.float64)
    heat = heat.sum(axis=0) if heat.ndim == 3 else heat
    if heat.shape != original.shape[1:]:
        raise DataError(f"the heat map has shape {heat.shape}, the image {original.shape[1:]}")
    shown = to_display(np.stack([original, reconstruction]))
    fig = new_figure((9.6, 3.4))
    axes = fig.subplots(1, 3)
    for ax, image, label in zip(axes[:2], shown, ("original", "reconstruction")):
        if image.shape[0] == 1:
            ax.imshow(image[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(image.transpose(1, 2, 0), interpolation="nearest")
        ax.set_title(label, fontsize=9)
    drawn = axes[2].imshow(heat, cmap="viridis", interpolation="nearest")
    axes[2].set_title("-log p(x|z) per pixel", fontsize=9)
    fig.colorbar(drawn, ax=axes[2], fraction=0.046, pad=0.04).set_label("nats")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# --- writing -------------------------------------------------------------------------------------

def write_explanations(vae: VAE, X: Any, out_dir: str | Path, *, indices: Sequence[int],
                       names: Sequence[Any] | None = None, scores: Any = None, num_samples: int = 16,
                       seed: int = 0) -> list[Path]:
    """Explain the examples ``indices`` of ``X`` in ``out_dir`` (created if missing); returns the paths written.

    Image models: one PNG per example (``explanation_figure``), named ``<name>.png``. Tables: one
    ``explanations.csv`` with a row per example and column (every column, ranked as ``top_features``
    ranks them) giving the contribution and the value in original units. ``names`` and ``scores`` hold
    one entry per example of ``X`` (not per selected one), as ``anomaly_scores`` returns them; names
    default to the zero-padded index and are made safe file names (no path separators, no '..').
    """
    out = _check_out_dir(out_dir)
    x_all = prepare_inputs(vae, X, seed=_check_seed(seed))
    n = len(x_all)
    chosen = _check_indices(indices, n)
    labels = _example_names(names, n)
    score_values = None
    if scores is not None:
        try:
            score_values = np.asarray(scores, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as err:
            raise DataError(f"scores must be numbers, one per example of X: {err}") from None
        if len(score_values) != n:
            raise DataError(f"{len(score_values)} scores for {n} examples; give one score per example of X")
    x = x_all[chosen]  # binarized once, over all of X as anomaly_scores does; binary values pass through again
    contributions = feature_contributions(vae, x, num_samples=num_samples, seed=seed)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the folder {out} for the explanations: {err.strerror or err}") from None
    if not is_image_model(vae):
        return [_write_table(vae, out, x, contributions, chosen, labels, score_values)]
    reconstructions = vae.reconstruct(x)
    paths, used = [], set()
    for row, i in enumerate(chosen):
        stem = _unique(safe_file_name(labels[i], fallback=_padded(i, n)), i, used)
        title = labels[i] if score_values is None else f"{labels[i]}   score {score_values[i]:.4g}"
        path = out / f"{stem}.png"
        save_figure(explanation_figure(x[row], reconstructions[row], contributions[row], title=title), path)
        paths.append(path)
    return paths


def _write_table(vae: VAE, out: Path, x: np.ndarray, contributions: np.ndarray, chosen: list[int],
                 labels: list[str], scores: np.ndarray | None) -> Path:
    d = contributions[0].size
    columns = vae.config_.data.columns
    table = top_features(contributions, columns if columns is not None and len(columns) == d else None, k=d,
                         values=x, examples=chosen)  # x: prepared examples, in the data's original units
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["example", "name", *(["score"] if scores is not None else []), *TABLE_COLUMNS[1:]])
    for i, rank, column, contribution, value in zip(*(table[name] for name in TABLE_COLUMNS)):
        i = int(i)
        writer.writerow([str(i), labels[i], *([f"{scores[i]:.10g}"] if scores is not None else []), str(int(rank)),
                         column, f"{contribution:.10g}", f"{value:.10g}"])
    path = out / TABLE_FILE
    atomic_write_text(path, buffer.getvalue())
    return path


def safe_file_name(name: Any, fallback: str = "example") -> str:
    """``name`` as one safe file name: letters, digits, '-', '_' and inner dots; no separators, no '..'."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))
    text = re.sub(r"\.{2,}", "_", text).strip("._ ")[:MAX_NAME_LENGTH].rstrip("._ ")
    return text or fallback


def _unique(stem: str, index: int, used: set[str]) -> str:
    """``stem``, or ``stem-INDEX`` when another example already took it (names that sanitize alike)."""
    if stem.lower() in used:
        stem = f"{stem}-{index}"
    used.add(stem.lower())  # case-insensitive file systems would overwrite too
    return stem


def _padded(i: int, n: int) -> str:
    return str(i).zfill(len(str(max(n - 1, 0))))


def _example_names(names: Sequence[Any] | None, n: int) -> list[str]:
    if names is None:
        return [_padded(i, n) for i in range(n)]
    if isinstance(names, (str, bytes)):
        raise DataError("names must be a sequence with one name per example of X, not one string")
    labels = [str(name) for name in names]
    if len(labels) != n:
        raise DataError(f"{len(labels)} names for {n} examples; give one name per example of X (or none)")
    return labels


def _check_indices(indices: Sequence[int], n: int) -> list[int]:
    """The selected examples as distinct ints in [0, n), in the given order (repeats dropped)."""
    try:
        array = np.asarray(indices).reshape(-1)
    except (TypeError, ValueError) as err:
        raise DataError(f"indices must be whole numbers: {err}") from None
    if array.size == 0:
        raise ConfigError("choose at least one example to explain (indices is empty)")
    if array.dtype.kind not in "iu":
        raise DataError(f"indices must be whole numbers (positions in X), got dtype {array.dtype}")
    bad = array[(array < 0) | (array >= n)]
    if bad.size:
        raise DataError(f"index {int(bad[0])} is outside X, which holds {n} examples (valid: 0 to {n - 1})")
    return list(dict.fromkeys(int(i) for i in array))


def _check_out_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a folder; name a new or existing folder for the explanations")
    return out


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
    return int(value)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
        raise ConfigError(f"a seed must be a whole number in [0, 2**64), got {seed!r}")
    return int(seed)


__all__ = ["feature_contributions", "top_features", "explanation_figure", "write_explanations",
           "per_dimension_log_prob", "safe_file_name", "TABLE_FILE", "TABLE_COLUMNS"]
