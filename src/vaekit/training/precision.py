"""Mixed precision: ``torch.autocast`` for the networks (bf16 or fp16), gradient scaling for fp16.

Only the networks' matrix products and convolutions run in the low-precision type; the model casts
their outputs to float32 (``VAEModel``), so densities, KL terms, losses and the weights themselves
stay in float32. fp16's narrow exponent range needs ``torch.amp.GradScaler``; bf16 has float32's
range and needs none.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch

from ..config import PRECISIONS
from ..errors import ConfigError

AUTOCAST_TYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot run, with what to use instead."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    dtype = AUTOCAST_TYPES[precision]
    if dtype is None:
        return
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU cannot compute in bf16; use --precision fp16 or fp32")
    # torch.autocast warns and switches itself off for a (device, type) pair it does not support.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.autocast(device.type, dtype=dtype)
    problems = [str(w.message) for w in caught if "autocast" in str(w.message).lower()]
    if problems:
        raise ConfigError(f"--precision {precision} is not supported on {device.type} by this PyTorch "
                          f"({problems[0]}); use --precision fp32")


class MixedPrecision:
    """The autocast context for forward passes, and backward/step with gradient scaling where needed."""

    def __init__(self, precision: str, device: torch.device) -> None:
        check_precision(precision, device)
        self.precision = precision
        self.device = device
        self.dtype = AUTOCAST_TYPES[precision]
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """Where the forward pass runs: autocast to bf16/fp16, or nothing at all for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true size (call before clipping them); a no-op without scaling."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; with fp16 a step whose gradients overflowed is skipped and the scale lowered."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        """The gradient scaler's state (plain numbers, JSON-serialisable), for checkpoints."""
        return dict(self.scaler.state_dict()) if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
