"""Looking at and moving through the latent space of a trained VAE.

Each tool is a function returning arrays plus a ``*_figure`` function returning a matplotlib figure:

    interpolate(vae, x_start, x_end, steps)   decoded points on the line (or great circle) between two latent means
    informative_dimensions(vae, X)            latent dimensions ranked by KL to the prior or by active-unit variance
    traverse(vae, dims)                       vary one latent dimension at a time around a base point
    latent_embedding(vae, X)                  latent means in 2-D: the latent itself, PCA or t-SNE
    manifold(vae, steps)                      decode a regular grid over the prior's quantiles (2-D latents)

All of them work through the estimator's public methods (``encode``, ``transform``, ``decode``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..api import VAE
from ..errors import ConfigError, DataError
from ..names import EMBEDDINGS, INTERPOLATION_METHODS, RANKINGS
from ..plots import image_grid, new_figure, to_display

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2016): a unit is active when Var_x(E_q[z_d|x]) exceeds this


# --- interpolation -------------------------------------------------------------------------------

def interpolate_latents(z_start: np.ndarray, z_end: np.ndarray, steps: int, method: str = "linear") -> np.ndarray:
    """``steps`` latent vectors from ``z_start`` to ``z_end`` (both included), shape (steps, latent_dim).

    ``linear`` moves along the straight line; ``spherical`` (slerp, Shoemake 1985; White 2016) moves
    along the great circle with the norm interpolated linearly, which keeps intermediate points at
    the typical distance from the origin of a Gaussian prior instead of cutting through its centre.
    """
    if method not in INTERPOLATION_METHODS:
        raise ConfigError(f"interpolation method must be one of {', '.join(INTERPOLATION_METHODS)}, got {method!r}")
    if steps < 2:
        raise ConfigError(f"an interpolation needs at least 2 steps, got {steps}")
    start, end = np.asarray(z_start, dtype=np.float64), np.asarray(z_end, dtype=np.float64)
    if start.shape != end.shape or start.ndim != 1:
        raise DataError(f"both end points must be latent vectors of one shape, got {start.shape} and {end.shape}")
    t = np.linspace(0.0, 1.0, steps)[:, None]
    if method == "linear":
        return ((1 - t) * start + t * end).astype(np.float32)
    norm_start, norm_end = np.linalg.norm(start), np.linalg.norm(end)
    if norm_start < 1e-12 or norm_end < 1e-12:  # a direction is undefined at the origin: fall back to the line
        return ((1 - t) * start + t * end).astype(np.float32)
    u, v = start / norm_start, end / norm_end
    angle = math.acos(float(np.clip(u @ v, -1.0, 1.0)))
    if angle < 1e-6:
        direction = (1 - t) * u + t * v
    else:
        direction = (np.sin((1 - t) * angle) * u + np.sin(t * angle) * v) / math.sin(angle)
    norms = (1 - t) * norm_start + t * norm_end
    return (direction * norms).astype(np.float32)


def interpolate(vae: VAE, x_start: Any, x_end: Any, steps: int = 10,
                method: str = "linear") -> tuple[np.ndarray, np.ndarray]:
    """Latent path between the latent means of two examples and its decoding: ``(z (steps, d), x (steps, ...))``."""
    means = vae.transform(np.stack([_one_example(vae, x_start), _one_example(vae, x_end)]))
    z = interpolate_latents(means[0], means[1], steps, method)
    return z, decoded_values(vae, z)


def _one_example(vae: VAE, x: Any) -> np.ndarray:
    array = np.asarray(x)
    if array.size != vae.n_features_in_:
        raise DataError(f"an end point must be one example with {vae.n_features_in_} values, got shape {array.shape}")
    return array.reshape(vae.input_shape_)


# --- which dimensions matter ---------------------------------------------------------------------

@dataclass
class DimensionStats:
    """Per-dimension statistics of the posterior means and variances over a data set."""

    kl: np.ndarray               # mean over x of KL(q(z_d|x) || N(0, 1)), nats
    mean_variance: np.ndarray    # Var_x(E_q[z_d|x]): the active-unit statistic of Burda et al. (2016)

    @property
    def active(self) -> np.ndarray:
        """Boolean mask of active units (mean variance above ``ACTIVE_UNIT_THRESHOLD``)."""
        return self.mean_variance > ACTIVE_UNIT_THRESHOLD


def dimension_stats(vae: VAE, X: Any) -> DimensionStats:
    """KL to the standard normal and active-unit variance of every latent dimension, over the examples ``X``."""
    mean, variance = vae.encode(X)
    if len(mean) < 2:
        raise DataError("ranking latent dimensions needs at least 2 examples")
    mean, variance = mean.astype(np.float64), variance.astype(np.float64)
    kl = 0.5 * (mean**2 + variance - np.log(variance) - 1.0)
    return DimensionStats(kl=kl.mean(axis=0), mean_variance=mean.var(axis=0))


def informative_dimensions(vae: VAE, X: Any, by: str = "kl", top: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Latent dimensions ordered from most to least informative, and their statistic.

    ``by='kl'`` ranks by the average KL(q(z_d|x) || N(0, 1)) (nats the dimension carries about x);
    ``by='variance'`` by Var_x(E_q[z_d|x]), the active-unit statistic. ``top`` keeps the first ``top``.
    """
    if by not in RANKINGS:
        raise ConfigError(f"rank latent dimensions by one of {', '.join(RANKINGS)}, got {by!r}")
    stats = dimension_stats(vae, X)
    values = stats.kl if by == "kl" else stats.mean_variance
    order = np.argsort(-values, kind="stable")
    if top is not None:
        if top < 1:
            raise ConfigError(f"the number of dimensions must be at least 1, got {top}")
        order = order[:top]
    return order, values[order]


# --- traversal -----------------------------------------------------------------------------------

def traverse(vae: VAE, dims: Sequence[int], base: np.ndarray | None = None, steps: int = 9,
             span: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``base`` with one dimension at a time set to ``base[d] + v`` for ``v`` in linspace(-span, span, steps).

    Returns the offsets ``(steps,)`` and the decoded grid ``(len(dims), steps, *input_shape)``. The
    base point defaults to the origin (the prior's mean); pass an example's latent mean to vary around it.
    """
    latent_dim = vae.latent_dim_
    dims = [int(d) for d in dims]
    if not dims:
        raise ConfigError("name at least one latent dimension to traverse")
    bad = [d for d in dims if not 0 <= d < latent_dim]
    if bad:
        raise ConfigError(f"latent dimension(s) {bad} do not exist: the latent has dimensions 0..{latent_dim - 1}")
    if steps < 2:
        raise ConfigError(f"a traversal needs at least 2 steps, got {steps}")
    if not (math.isfinite(span) and span > 0):
        raise ConfigError(f"the traversal span must be a positive number, got {span}")
    base = np.zeros(latent_dim, dtype=np.float32) if base is None else np.asarray(base, dtype=np.float32).reshape(-1)
    if base.shape != (latent_dim,):
        raise DataError(f"the base point must have {latent_dim} values, got {base.size}")
    offsets = np.linspace(-span, span, steps).astype(np.float32)
    z = np.repeat(base[None, None], len(dims), axis=0).repeat(steps, axis=1)  # (dims, steps, latent_dim)
    for row, d in enumerate(dims):
        z[row, :, d] += offsets
    decoded = decoded_values(vae, z.reshape(-1, latent_dim))
    return offsets, decoded.reshape(len(dims), steps, *decoded.shape[1:])


# --- 2-D views -----------------------------------------------------------------------------------

def latent_embedding(vae: VAE, X: Any, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """The latent means of ``X`` in two dimensions, and the method used.

    ``auto`` uses the latent itself when it is 2-D (or 1-D, drawn against zero) and PCA otherwise;
    ``tsne`` runs scikit-learn's t-SNE (seeded) on the latent means.
    """
    if method not in EMBEDDINGS:
        raise ConfigError(f"embedding method must be one of {', '.join(EMBEDDINGS)}, got {method!r}")
    z = vae.transform(X).astype(np.float64)
    latent_dim = z.shape[1]
    if method == "auto":
        method = "latent" if latent_dim <= 2 else "pca"
    if method == "latent":
        if latent_dim > 2:
            raise ConfigError(f"the latent has {latent_dim} dimensions; plot it with method 'pca' or 'tsne'")
        coords = z if latent_dim == 2 else np.column_stack([z[:, 0], np.zeros(len(z))])
        return coords, method
    if latent_dim < 2:
        raise ConfigError("a 1-D latent needs no projection; use method 'latent'")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(z), method
    from sklearn.manifold import TSNE

    if len(z) < 5:
        raise DataError(f"t-SNE needs at least 5 examples, got {len(z)}")
    perplexity = min(30.0, (len(z) - 1) / 3.0)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(z), method


def prior_quantile_grid(vae: VAE, steps: int = 20, quantile_range: tuple[float, float] = (0.05, 0.95)) -> np.ndarray:
    """For a 2-D latent: a (steps, steps, 2) grid whose axes are evenly spaced quantiles of the prior's marginals.

    Row ``i`` holds the ``i``-th quantile of z_2 from the top (largest first, as a picture's y axis), column
    ``j`` the ``j``-th quantile of z_1, as in Kingma & Welling (2014), figure 4.
    """
    if vae.latent_dim_ != 2:
        raise ConfigError(f"a manifold grid needs a 2-D latent; this model's latent has {vae.latent_dim_} dimensions "
                          "(use traverse or latent-plot instead)")
    low, high = quantile_range
    if not 0.0 < low < high < 1.0:
        raise ConfigError(f"the quantile range must satisfy 0 < low < high < 1, got {quantile_range}")
    if steps < 2:
        raise ConfigError(f"a manifold grid needs at least 2 steps per axis, got {steps}")
    probs = np.linspace(low, high, steps)
    marginals = _prior_marginal_quantiles(vae, probs)  # (steps, 2)
    z1, z2 = marginals[:, 0], marginals[::-1, 1]
    return np.stack(np.meshgrid(z1, z2), axis=-1).astype(np.float32)


def _prior_marginal_quantiles(vae: VAE, probs: np.ndarray) -> np.ndarray:
    """Quantiles of each prior marginal: exact where the prior's distribution has an inverse CDF, else from draws."""
    model = vae.model_
    p = torch.as_tensor(probs, dtype=torch.float64)
    try:
        base = model.prior.distribution().base_dist
        loc, scale = base.loc.double().cpu(), base.scale.double().cpu()
        return torch.distributions.Normal(loc, scale).icdf(p[:, None]).numpy()
    except (AttributeError, NotImplementedError):
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(vae.seed)
        with torch.no_grad():
            draws = model.sample_latent(100_000, generator=generator).double().cpu().numpy()
        return np.quantile(draws, probs, axis=0)


def decoded_values(vae: VAE, z: np.ndarray) -> np.ndarray:
    """The decoder's mean for latent vectors as an array: ``vae.decode`` for images and arrays; for a table run its
    encoded values (standardized numbers, P(second value), category probabilities), which pictures can show."""
    return vae._decode_values(z) if vae.is_table_ else vae.decode(z)


def manifold(vae: VAE, steps: int = 20, quantile_range: tuple[float, float] = (0.05, 0.95)) -> tuple[np.ndarray, np.ndarray]:
    """Decode the prior-quantile grid of a 2-D latent: ``(z (steps, steps, 2), x (steps, steps, *input_shape))``."""
    grid = prior_quantile_grid(vae, steps, quantile_range)
    decoded = decoded_values(vae, grid.reshape(-1, 2))
    return grid, decoded.reshape(steps, steps, *decoded.shape[1:])


# --- figures ---------------------------------------------------------------------------------------

def _cell_grid_axes(ax, examples: np.ndarray, row_labels: Sequence[str] | None = None,
                    col_labels: Sequence[str] | None = None) -> None:
    """Draw examples (rows, cols, *shape) on ``ax``: images as a tiled grid, vectors as stacked heat-map rows."""
    rows, cols = examples.shape[:2]
    if examples.ndim == 5:  # images (rows, cols, c, h, w)
        h, w = examples.shape[-2:]
        padding = 2
        grid = np.asarray(image_grid(examples.reshape(rows * cols, *examples.shape[2:]), ncols=cols,
                                     padding=padding, scale=1))
        ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ys = padding + np.arange(rows) * (h + padding) + h / 2
        xs = padding + np.arange(cols) * (w + padding) + w / 2
    else:  # vectors (rows, cols, features): every cell is one heat-map row, grouped by row
        flat = examples.reshape(rows * cols, -1)
        ax.imshow(to_display(flat), aspect="auto", cmap="viridis", interpolation="nearest")
        ys = np.arange(rows) * cols + (cols - 1) / 2
        xs = None
    if row_labels is not None:
        ax.set_yticks(ys)
        ax.set_yticklabels(row_labels, fontsize=8)
    else:
        ax.set_yticks([])
    if xs is not None and col_labels is not None:
        ax.set_xticks(xs)
        ax.set_xticklabels(col_labels, fontsize=7, rotation=90 if cols > 12 else 0)
    else:
        ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)


def _figsize(examples: np.ndarray, extra: tuple[float, float] = (1.2, 0.9)) -> tuple[float, float]:
    """Inches for a grid of (rows, cols, ...) examples: about half an inch per image, a fifth per heat-map row."""
    rows, cols = examples.shape[:2]
    if examples.ndim == 5:
        return min(16.0, extra[0] + 0.55 * cols), min(16.0, extra[1] + 0.55 * rows)
    return 8.0, min(14.0, extra[1] + 0.2 * rows * cols)


def interpolation_figure(decoded: np.ndarray, originals: tuple[np.ndarray, np.ndarray] | None = None,
                         title: str = "latent interpolation"):
    """A strip of decoded interpolation steps; with ``originals`` the two examples themselves stand at the ends."""
    steps = len(decoded)
    labels = [f"{t:.2f}" for t in np.linspace(0, 1, steps)]
    cells = decoded
    if originals is not None:
        start, end = (np.asarray(o, dtype=np.float32).reshape(decoded.shape[1:]) for o in originals)
        cells = np.concatenate([start[None], decoded, end[None]])
        labels = ["start"] + labels + ["end"]
    strip = cells[None]
    fig = new_figure(_figsize(strip))
    ax = fig.add_subplot(1, 1, 1)
    _cell_grid_axes(ax, strip, col_labels=labels)
    ax.set_xlabel("t along the latent path" + (" (the examples themselves at the ends)" if originals is not None else ""))
    ax.set_title(title)
    return fig


def traverse_figure(offsets: np.ndarray, decoded: np.ndarray, dims: Sequence[int],
                    stats: Sequence[float] | None = None, stat_name: str = "KL", title: str = "latent traversal"):
    """One row per latent dimension, one column per offset from the base point."""
    labels = [f"z{d}" + (f" ({stat_name} {s:.2f})" if stats is not None else "") for d, s in
              zip(dims, stats if stats is not None else [0.0] * len(dims))]
    fig = new_figure(_figsize(decoded, extra=(2.0, 0.9)))
    ax = fig.add_subplot(1, 1, 1)
    _cell_grid_axes(ax, decoded, row_labels=labels, col_labels=[f"{v:+.1f}" for v in offsets])
    ax.set_xlabel("offset from the base point")
    ax.set_title(title)
    return fig


def manifold_figure(grid: np.ndarray, decoded: np.ndarray, title: str = "decoded latent manifold"):
    """The decoded prior-quantile grid with the latent coordinates on the axes."""
    fig = new_figure(_figsize(decoded, extra=(1.2, 1.0)))
    ax = fig.add_subplot(1, 1, 1)
    _cell_grid_axes(ax, decoded, row_labels=[f"{v:.2f}" for v in grid[:, 0, 1]],
                    col_labels=[f"{v:.2f}" for v in grid[0, :, 0]])
    ax.set_xlabel("z1 (prior quantiles)")
    ax.set_ylabel("z2 (prior quantiles)")
    ax.set_title(title)
    return fig


def latent_scatter_figure(coords: np.ndarray, labels: np.ndarray | None = None,
                          class_names: Sequence[str] | None = None, method: str = "latent",
                          title: str | None = None):
    """A scatter plot of 2-D latent coordinates, coloured by label when there are labels."""
    fig = new_figure((7.0, 6.0))
    ax = fig.add_subplot(1, 1, 1)
    size = max(2.0, min(20.0, 4000.0 / max(len(coords), 1)))
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=size, alpha=0.6, linewidths=0)
    else:
        labels = np.asarray(labels)
        classes = np.unique(labels)
        cmap = _class_colormap(len(classes))
        for i, cls in enumerate(classes):
            mask = labels == cls
            name = _class_name(cls, class_names)
            ax.scatter(coords[mask, 0], coords[mask, 1], s=size, alpha=0.6, linewidths=0, color=cmap(i), label=name)
        if len(classes) <= 20:
            ax.legend(markerscale=max(1.0, 12.0 / size), fontsize=8, loc="best", framealpha=0.8)
    axis_names = {"latent": ("z1", "z2"), "pca": ("principal component 1", "principal component 2"),
                  "tsne": ("t-SNE 1", "t-SNE 2")}[method]
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(title or {"latent": "latent means", "pca": "latent means, PCA", "tsne": "latent means, t-SNE"}[method])
    ax.grid(True, alpha=0.2)
    return fig


def _class_colormap(n: int):
    from matplotlib import colormaps

    if n <= 10:
        return colormaps["tab10"]
    if n <= 20:
        return colormaps["tab20"]
    return colormaps["viridis"].resampled(n)


def _class_name(label: Any, class_names: Sequence[str] | None) -> str:
    if class_names is not None and isinstance(label, (int, np.integer)) and 0 <= int(label) < len(class_names):
        return str(class_names[int(label)])
    return str(label)
