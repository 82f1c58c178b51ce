"""Pictures people would rather look at than read: image grids, reconstructions, loss curves."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import atomic_write_bytes

MIN_CELL_PIXELS = 48  # small images (8x8 digits) are scaled up to at least this many pixels per cell


def to_display(images: np.ndarray) -> np.ndarray:
    """Images (n, c, h, w) as values in [0, 1]: clipped when they already are intensities, else min-max scaled."""
    images = np.asarray(images, dtype=np.float32)
    low, high = float(np.nanmin(images)), float(np.nanmax(images))
    if low >= -0.05 and high <= 1.05:
        return np.clip(images, 0.0, 1.0)
    return (images - low) / max(high - low, 1e-12)


def image_grid(images: np.ndarray, ncols: int | None = None, padding: int = 2, scale: int | None = None):
    """A ``PIL.Image`` tiling images of shape (n, channels, height, width) with values in [0, 1]."""
    from PIL import Image

    images = to_display(images)
    n, c, h, w = images.shape
    ncols = ncols or max(1, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    grid = np.ones((c, nrows * (h + padding) + padding, ncols * (w + padding) + padding), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, ncols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = images[i]
    pixels = (grid * 255.0 + 0.5).astype(np.uint8)
    img = Image.fromarray(pixels[0], "L") if c == 1 else Image.fromarray(pixels.transpose(1, 2, 0)[..., :3], "RGB")
    scale = scale or max(1, math.ceil(MIN_CELL_PIXELS / max(h, w)))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def _save_pil(img, path: str | Path) -> None:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def save_image_grid(images: np.ndarray, path: str | Path, ncols: int | None = None) -> None:
    """Write a PNG grid of images (n, c, h, w)."""
    _save_pil(image_grid(images, ncols=ncols), path)


def save_reconstruction_grid(originals: np.ndarray, reconstructions: np.ndarray, path: str | Path,
                             ncols: int | None = None) -> None:
    """Originals and their reconstructions in alternating rows (originals on top)."""
    n = len(originals)
    ncols = ncols or min(n, 8)
    rows = []
    for start in range(0, n, ncols):
        block_o, block_r = originals[start:start + ncols], reconstructions[start:start + ncols]
        if len(block_o) < ncols:
            pad = np.zeros((ncols - len(block_o), *originals.shape[1:]), dtype=np.float32)
            block_o, block_r = np.concatenate([block_o, pad]), np.concatenate([block_r, pad])
        rows += [block_o, block_r]
    # One grid, so originals and reconstructions share one display scaling.
    _save_pil(image_grid(np.concatenate(rows), ncols=ncols), path)


def _figure_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def new_figure(figsize: tuple[float, float] = (6.0, 4.0)):
    """A matplotlib figure that needs no display (the Agg canvas), safe in threads and on servers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path) -> None:
    atomic_write_bytes(path, _figure_bytes(fig))


def loss_curve_figure(history: Sequence[dict[str, Any]]):
    """Training and validation negative ELBO (nats per example) against epochs."""
    fig = new_figure((6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    epochs = [h["epoch"] for h in history]
    for key, label in (("train_loss", "train loss (weighted -ELBO)"), ("val_neg_elbo", "validation -ELBO")):
        points = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]  # validation is scheduled
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per example")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title("vaekit training")
    return fig


def save_loss_curve(history: Sequence[dict[str, Any]], path: str | Path) -> None:
    save_figure(loss_curve_figure(history), path)


def vectors_figure(rows: np.ndarray, title: str = "", columns: Sequence[str] | None = None,
                   center: Sequence[float] | None = None, scale: Sequence[float] | None = None):
    """A heat map of feature vectors (one row per example) for data that is not images.

    With ``center``/``scale`` (a standardized data set's per-column mean and sd) each column is shown on its own
    scale, in standard deviations from its mean, so that one large column does not hide the others."""
    fig = new_figure((min(12.0, 2.0 + 0.35 * rows.shape[1]), min(10.0, 1.5 + 0.25 * len(rows))))
    ax = fig.add_subplot(1, 1, 1)
    label = None
    if center is not None and scale is not None:
        rows = (rows - np.asarray(center)) / np.asarray(scale)
        label = "standard deviations from the column's mean"
    image = ax.imshow(rows, aspect="auto", cmap="viridis", interpolation="nearest")
    bar = fig.colorbar(image, ax=ax)
    if label:
        bar.set_label(label, fontsize=8)
    ax.set_ylabel("example")
    if columns is not None and len(columns) <= 40:
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels(columns, rotation=90, fontsize=7)
    else:
        ax.set_xlabel("feature")
    if title:
        ax.set_title(title)
    return fig
