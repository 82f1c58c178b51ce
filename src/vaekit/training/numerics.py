"""Numerical faults in training: NaN or infinite losses and gradients, caught and rolled back.

``NumericalGuard`` watches every step: after ``backward()`` it computes the total gradient norm (clipping
the gradients to ``clip_grad_norm`` when asked) and records the first step whose loss or gradient norm is not
finite: on an accelerator on the device, without waiting for it; on the CPU, where reading a number costs no
wait, by reading the two numbers at once (a few tensor operations fewer per step). The host reads that record only every
``check_every`` steps (every step on the CPU, where reading costs nothing; less often on accelerators,
where each read waits for the queued work), and always before a checkpoint is written or an epoch ends,
so a bad state is never saved. A fault is still reported with the exact step it happened at.

The default policy: roll back to the last good state (an in-memory snapshot of everything a checkpoint
holds: weights, optimizer state, random generator, position in the epoch), multiply the learning rate by
``lr_factor`` and go on from there; after ``max_rollbacks`` rollbacks in a row without getting past the
step that failed, give up with a ``TrainingError`` that says where and what went wrong.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..errors import TrainingError

# What the device-side record says about the first bad step.
_LOSS, _GRADIENT = 1, 2


def total_grad_norm(grads: list[Tensor]) -> Tensor:
    """The 2-norm of all gradients together, computed on their device (multi-tensor kernels where available)."""
    if not grads:
        return torch.zeros(())
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if get_total_norm is not None:  # torch >= 2.6
        return get_total_norm(grads, norm_type=2.0, foreach=True)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def copy_state(value):
    """A deep copy of a training state: tensors cloned directly (a tenth of what ``copy.deepcopy`` costs per
    tensor, which on small data, one snapshot per epoch of one step, was a quarter of the run), containers
    rebuilt, anything else through ``copy.deepcopy`` (or its own ``__deepcopy__``)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if type(value) is dict:
        return {k: copy_state(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(copy_state(v) for v in value)
    return copy.deepcopy(value)


class NumericalGuard:
    """Detects non-finite losses and gradients, keeps snapshots of the last good state and rolls back to them.

    ``capture()`` must return the complete training state (it is deep-copied here) and ``restore(state)``
    must put it back; the trainer's checkpoint code provides both.
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], *, device: torch.device,
                 capture: Callable[[], Any], restore: Callable[[Any], None], clip_grad_norm: float | None = None,
                 max_rollbacks: int = 3, lr_factor: float = 0.5, check_every: int | None = None,
                 snapshot_every: int = 100, check_gradients: bool = True) -> None:
        self.parameters = [p for p in parameters if p.requires_grad]
        self.device = device
        self.capture, self.restore = capture, restore
        self.clip_grad_norm = clip_grad_norm
        self.max_rollbacks = max_rollbacks
        self.lr_factor = lr_factor
        self.check_every = check_every if check_every is not None else (1 if device.type == "cpu" else 32)
        self.snapshot_every = snapshot_every
        self.check_gradients = check_gradients  # False under fp16, whose GradScaler skips overflowing steps itself
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_kind = torch.zeros((), dtype=torch.int64, device=device)
        self.last_grad_norm: Tensor | None = None
        self.snapshot: Any = None
        self.snapshot_step = -1
        self.rollbacks_in_a_row = 0
        self.rollbacks = 0
        self.last_fault_step = -1
        # The factor the trainer applies to its schedule's learning rate: lr_factor per rollback so far.
        self.lr_scale = 1.0

    # --- every step ----------------------------------------------------------------------------
    def after_backward(self, loss: Tensor, step: int) -> None:
        """Clip the gradients if asked and record on the device whether this step's loss or gradients are finite."""
        grads = [p.grad for p in self.parameters if p.grad is not None]
        norm = total_grad_norm(grads).to(self.device)
        if self.clip_grad_norm is not None and grads:
            # The same scaling as clip_grad_norm_ (max_norm / (norm + 1e-6), at most 1), from the norm computed above.
            scale = torch.clamp(self.clip_grad_norm / (norm + 1e-6), max=1.0)
            torch._foreach_mul_(grads, scale)
        self.last_grad_norm = norm
        if self.device.type == "cpu":  # reading two numbers costs no wait here: a few operations fewer per step
            loss_ok_now = math.isfinite(float(loss.detach()))
            if not (loss_ok_now and (math.isfinite(float(norm)) or not self.check_gradients)) \
                    and int(self.first_bad_step) < 0:
                self.first_bad_step.fill_(step)
                self.bad_kind.fill_(_GRADIENT if loss_ok_now else _LOSS)
            return
        loss_ok = torch.isfinite(loss.detach())
        bad = ~(loss_ok & torch.isfinite(norm)) if self.check_gradients else ~loss_ok
        new = bad & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(new, step, self.first_bad_step)  # a Python scalar: no host-to-device copy
        kind = torch.where(loss_ok, _GRADIENT, _LOSS)
        self.bad_kind = torch.where(new, kind, self.bad_kind)

    def due(self, step: int) -> bool:
        """Whether the host should read the record after ``step`` (1-based count of steps done)."""
        return step % self.check_every == 0

    # --- at checks -----------------------------------------------------------------------------
    def fault(self) -> tuple[int, str] | None:
        """(step, 'loss' or 'gradient') of the first non-finite step since the last snapshot, or None. Syncs."""
        step = int(self.first_bad_step.item())
        if step < 0:
            return None
        return step, "loss" if int(self.bad_kind.item()) == _LOSS else "gradient"

    def take_snapshot(self, step: int, force: bool = False) -> None:
        """Remember the current (checked, good) state, at most every ``snapshot_every`` steps unless forced."""
        if not force and self.snapshot is not None and step - self.snapshot_step < self.snapshot_every:
            return
        self.snapshot = copy_state(self.capture())
        self.snapshot_step = step
        if step > self.last_fault_step:
            self.rollbacks_in_a_row = 0

    def roll_back(self, fault: tuple[int, str], optimizer: torch.optim.Optimizer, where: str) -> float:
        """Restore the last snapshot and lower the learning rate; raise ``TrainingError`` when out of tries.

        Returns the new learning rate (of the first parameter group).
        """
        step, kind = fault
        what = "loss" if kind == "loss" else "gradient norm"
        lrs_now = [group["lr"] for group in optimizer.param_groups]
        self.last_fault_step = max(self.last_fault_step, step)
        if self.snapshot is None or self.rollbacks_in_a_row >= self.max_rollbacks:
            tries = f" and again after {self.rollbacks_in_a_row} rollback(s) to the last good state with the learning " \
                    f"rate lowered to {lrs_now[0]:.3g}" if self.rollbacks_in_a_row else ""
            raise TrainingError(
                f"the {what} became NaN or infinite at step {step} ({where}){tries}; giving up. Lower the learning "
                "rate (--lr), clip gradients (--clip-grad-norm), or check the data for extreme values")
        self.restore(copy_state(self.snapshot))
        self.rollbacks_in_a_row += 1
        self.rollbacks += 1
        # Lower the rate from where it was when the fault happened (earlier rollbacks included).
        self.lr_scale *= self.lr_factor
        for group, lr_now in zip(optimizer.param_groups, lrs_now):
            group["lr"] = lr_now * self.lr_factor
        self.first_bad_step.fill_(-1)
        self.bad_kind.zero_()
        return optimizer.param_groups[0]["lr"]

    # --- saved with checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict[str, int | float]:
        return {"rollbacks": self.rollbacks, "rollbacks_in_a_row": self.rollbacks_in_a_row,
                "last_fault_step": self.last_fault_step, "lr_scale": self.lr_scale}

    def load_state_dict(self, state: dict[str, int | float]) -> None:
        self.rollbacks = int(state.get("rollbacks", 0))
        self.rollbacks_in_a_row = int(state.get("rollbacks_in_a_row", 0))
        self.last_fault_step = int(state.get("last_fault_step", -1))
        self.lr_scale = float(state.get("lr_scale", 1.0))
