"""Transforms between raw values and what the model sees: binarization and standardization."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..config import DataConfig
from ..errors import DataError


def binarize(x: Tensor, threshold: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """0/1 values: ``x >= threshold`` when a threshold is given, else one Bernoulli draw of the intensities."""
    if threshold is not None:
        return (x >= threshold).to(x.dtype)
    # u < x with u ~ U[0, 1) is a Bernoulli(x) draw; on the CPU it is exactly what torch.bernoulli draws from
    # the same generator (same numbers, same comparison), at a third of its cost.
    return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype).lt_(x)


def perturb(x: Tensor, rate: float, generator: torch.Generator | None = None, levels: int | None = None) -> Tensor:
    """``x`` (values in [0, 1]) with each value replaced, with probability ``rate``, by a uniform random one.

    The replacement is uniform on [0, 1), or on the grid k / (levels - 1) when ``levels`` is given (2 for
    binary data, 256 for 8-bit images), so perturbed data stay in the likelihood's support. One uniform
    draw r per value serves both choices: r < rate selects the value, and r / rate is then uniform on [0, 1).
    """
    r = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    chosen = r < rate
    value = r.div_(rate).clamp_(max=1.0 - 2**-24)  # uniform on [0, 1) where chosen
    if levels is not None:
        value = value.mul_(levels).floor_().div_(levels - 1)
    return torch.where(chosen, value.to(x.dtype), x)


def split_generator(seed: int, split: str) -> torch.Generator:
    """A generator for the fixed binarization draw of one split, the same every time it is asked for."""
    offset = {"train": 1, "test": 2}.get(split, 3)
    return torch.Generator().manual_seed(seed * 1000 + offset)


def column_scale(std: np.ndarray) -> np.ndarray:
    """The standardization scale of each column: its standard deviation, or 1 for a constant column."""
    return np.where(std > 1e-12, std, 1.0)


def standardize_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation; a constant column gets a scale of 1."""
    return x.mean(axis=0), column_scale(x.std(axis=0))


def to_model_units(x: np.ndarray, config: DataConfig) -> np.ndarray:
    """Apply the run's saved standardization (if any) to values in the data's original units."""
    if config.standardize_mean is None:
        return x
    mean = np.asarray(config.standardize_mean, dtype=np.float64)
    std = np.asarray(config.standardize_std, dtype=np.float64)
    flat = x.reshape(len(x), -1)
    if flat.shape[1] != mean.size:
        raise DataError(f"the data has {flat.shape[1]} values per example but the model was trained on {mean.size}")
    return ((flat - mean) / std).reshape(x.shape).astype(np.float32)


def to_original_units(x: np.ndarray, config: DataConfig) -> np.ndarray:
    """Undo the run's standardization so that decoded outputs come back in the data's own units."""
    if config.standardize_mean is None:
        return x
    mean = np.asarray(config.standardize_mean, dtype=np.float64)
    std = np.asarray(config.standardize_std, dtype=np.float64)
    flat = x.reshape(len(x), -1)
    return (flat * std + mean).reshape(x.shape).astype(np.float32)
