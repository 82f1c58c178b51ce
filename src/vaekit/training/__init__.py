"""Turning data and a ``RunConfig`` into a trained model in a run directory.

``trainer`` (the loop, read top to bottom), ``batches`` (in memory or streamed), ``numerics`` (NaN/inf
guard and rollback), ``precision`` (autocast), ``distributed`` (torchrun / DDP), ``device`` and
``checkpoint`` (run-directory I/O: safetensors + JSON, atomic). Depends on data, models and evaluation.
"""

from .device import resolve_device
from .trainer import build_model, train

__all__ = ["train", "build_model", "resolve_device"]
