"""The training loop: minibatch Adam on the negative ELBO, validation every epoch, checkpoints, resume.

Read it top to bottom in ``Trainer.fit``. Performance habits visible here:
- the data lives on the device as one tensor; each epoch indexes a seeded random permutation
  (no per-example collation, no DataLoader for in-memory data);
- running sums stay on the device; the host reads them only for the progress bar and at epoch end;
- the optimizer is Adam's fused (or foreach) implementation, not the per-parameter loop;
- the Bernoulli loss is BCE with logits (``Bernoulli(logits=...).log_prob``), fused and stable;
- the learning rate follows a cosine from ``lr`` down to 0 over the run's steps, which reaches a given
  test ELBO in about 40% fewer epochs than a constant rate (see benchmarks/speed.py).

Determinism: the seed fixes initialisation, each epoch's permutation (seeded by seed and epoch)
and the noise generator (reparameterization and dynamic binarization), whose state is saved in
every checkpoint, so a resumed CPU run ends with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import checkpoint as ckpt
from .config import RunConfig, TrainConfig
from .data import Dataset
from .data.transforms import binarize
from .errors import CheckpointError, ConfigError, TrainingError
from .evaluate import elbo
from .model import VAEModel
from .numerics import NumericalGuard
from .objectives import elbo_objective, make_objective  # noqa: F401  (elbo_objective: re-exported)


LOSS_CURVE_INTERVAL_S = 60.0
LR_WARMUP_FRACTION = 0.05
# Adam's second-moment decay: 0.99 instead of torch's 0.999 adapts faster to the shrinking gradients of the
# first epochs; on Fashion-MNIST it reaches a given test ELBO about half an epoch earlier (benchmarks/speed.py).
ADAM_BETAS = (0.9, 0.99)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; a named device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but PyTorch sees no CUDA GPU here; use --device cpu or auto")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' was asked for but it is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda or mps")
    return device


def build_model(config: RunConfig, seed: int | None = None) -> VAEModel:
    """A freshly initialised model; the seed fixes its initial weights without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed if seed is None else seed)
        return VAEModel(config.model)


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam, fused into a few kernels where this PyTorch supports it on the device, else multi-tensor."""
    params = [p for p in model.parameters() if p.requires_grad]
    settings = dict(lr=config.lr, betas=ADAM_BETAS, weight_decay=config.weight_decay)
    try:
        return torch.optim.Adam(params, **settings, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, **settings, foreach=True)


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (counted from 0) in a run of ``total_steps`` steps.

    cosine: a linear warm-up over the first ``LR_WARMUP_FRACTION`` of the steps (large rates are unstable
    in the first steps), then a half cosine from ``lr`` down to 0 at the last step.
    """
    if config.lr_schedule == "constant":
        return config.lr
    warmup = max(1, round(LR_WARMUP_FRACTION * total_steps))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that a clock read afterwards includes it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _epoch_permutation(seed: int, epoch: int, n: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


class Trainer:
    """Trains one model on one data set, optionally keeping a run directory up to date."""

    def __init__(self, model: VAEModel, dataset: Dataset, config: RunConfig, *, run_dir: str | Path | None = None,
                 progress: bool = True, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.train_config = config.train
        self.device = resolve_device(config.train.device)
        self.model = model.to(self.device)
        self.dataset = dataset
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress
        self.log = log or (lambda message: None)
        self.optimizer = make_optimizer(self.model, self.train_config, self.device)
        self.objective = make_objective(self.train_config)
        self.noise = torch.Generator(device=self.device).manual_seed(self.train_config.seed)
        # Dynamic binarization draws from the intensities at every step; otherwise train on what split() gives.
        self.dynamic_binarization = dataset.config.binarize == "dynamic"
        self.x_train = dataset.x_train if self.dynamic_binarization else dataset.split("train")
        self.model.likelihood.check_data(self.x_train)
        # Loop position and bookkeeping, all saved in checkpoints.
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.sums = torch.zeros(3, device=self.device, dtype=torch.float64)  # loss, reconstruction, KL (summed)
        self.count = 0
        self.epoch_seconds = 0.0
        self.best_val = math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.stopped_early = False
        self.best_state: dict[str, Tensor] | None = None
        self._plotted_at = time.perf_counter()
        self._stop_requested = False
        # NaN/inf losses and gradients: detected at the step, rolled back to the last good state (numerics.py).
        self.guard = NumericalGuard(self.model.parameters(), device=self.device, capture=self._training_state,
                                    restore=self._load_training_state, clip_grad_norm=config.train.clip_grad_norm,
                                    max_rollbacks=config.train.max_rollbacks)

    # --- the loop --------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        cfg = self.train_config
        if resume and self.run_dir is not None:
            self._restore()
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temp_files(self.run_dir)
            ckpt.save_config(self.run_dir, self.config)
        dynamic = self.dynamic_binarization
        x_train = self.x_train.to(self.device)
        x_val = self.dataset.split("test").to(self.device)
        n = len(x_train)
        steps_per_epoch = math.ceil(n / cfg.batch_size)
        warmup_steps = cfg.warmup_epochs * steps_per_epoch
        total_steps = cfg.epochs * steps_per_epoch  # the horizon of the learning-rate schedule
        refresh = max(1, steps_per_epoch // 25)
        self.model.train()
        with self._stop_on_ctrl_c():
            while self.epoch < cfg.epochs and not self.stopped_early:
                self.guard.take_snapshot(self.global_step, force=self.step_in_epoch == 0)
                perm = _epoch_permutation(cfg.seed, self.epoch, n).to(self.device)
                bar = self._progress_bar(steps_per_epoch)
                started = time.perf_counter() - self.epoch_seconds
                rolled_back = False
                for step in range(self.step_in_epoch, steps_per_epoch):
                    x = x_train[perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]]
                    if dynamic:
                        x = binarize(x, generator=self.noise)
                    kl_weight = cfg.kl_weight * min(1.0, (self.global_step + 1) / warmup_steps) if warmup_steps else cfg.kl_weight
                    loss, rec_sum, kl_sum = self.objective(self.model, x, kl_weight, self.noise)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.guard.after_backward(loss, self.global_step + 1)
                    # The schedule's rate, times the guard's reduction after NaN/inf rollbacks (1 until one happens).
                    lr = learning_rate(cfg, self.global_step, total_steps) * self.guard.lr_scale
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    self.optimizer.step()
                    self.sums += torch.stack([loss.detach() * len(x), rec_sum, kl_sum])  # float64 sums, no host sync
                    self.count += len(x)
                    self.step_in_epoch = step + 1
                    self.global_step += 1
                    if bar is not None and (self.step_in_epoch % refresh == 0 or self.step_in_epoch == steps_per_epoch):
                        bar.n = self.step_in_epoch
                        bar.set_postfix_str(f"loss {self.sums[0].item() / self.count:.3f}", refresh=True)
                    checkpoint_due = self._stop_requested or bool(
                        cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0
                        and self.step_in_epoch < steps_per_epoch)
                    if (checkpoint_due or self.step_in_epoch == steps_per_epoch or self.guard.due(self.global_step)) \
                            and self._rolled_back_after_a_fault():
                        rolled_back = True  # the epoch goes on from the restored position
                        break
                    if checkpoint_due:
                        _synchronize(self.device)
                        self.epoch_seconds = time.perf_counter() - started
                        if self.run_dir is not None:
                            self._save_checkpoint()
                        if self._stop_requested:
                            if bar is not None:
                                bar.close()
                            self.log(f"interrupted after step {self.global_step}"
                                     + ("; checkpoint saved, continue with --resume" if self.run_dir else ""))
                            raise KeyboardInterrupt
                if bar is not None:
                    bar.close()
                if rolled_back:
                    continue
                _synchronize(self.device)
                self.epoch_seconds = time.perf_counter() - started
                self._end_epoch(x_val, kl_weight)
        if cfg.patience is not None and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        return self.history

    def _rolled_back_after_a_fault(self) -> bool:
        """Read the guard's record; after a NaN/inf step restore the last good state with a lower learning rate."""
        fault = self.guard.fault()
        if fault is None:
            self.guard.take_snapshot(self.global_step)
            return False
        lr = self.guard.roll_back(fault, self.optimizer, where=f"epoch {self.epoch + 1}")
        self.log(f"the {'loss' if fault[1] == 'loss' else 'gradient norm'} became NaN or infinite at step {fault[0]}; "
                 f"rolled back to step {self.global_step} and lowered the learning rate to {lr:.3g} "
                 f"(rollback {self.guard.rollbacks_in_a_row} of at most {self.guard.max_rollbacks} in a row)")
        return True

    @contextlib.contextmanager
    def _stop_on_ctrl_c(self):
        """The first Ctrl-C finishes the current step, saves a checkpoint and stops; a second one stops at once."""
        self._stop_requested = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _progress_bar(self, total: int):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{self.train_config.epochs}",
                    unit="step", leave=False, file=sys.stderr, dynamic_ncols=True,
                    disable=None)  # None: no bar when stderr is not a terminal (logs, CI)

    def _end_epoch(self, x_val: Tensor, kl_weight: float) -> None:
        cfg = self.train_config
        totals = (self.sums / max(self.count, 1)).tolist()
        val = elbo(self.model, x_val, batch_size=cfg.eval_batch_size, seed=cfg.seed).means()
        self.model.train()
        record = {
            "epoch": self.epoch + 1,
            "step": self.global_step,
            "train_loss": totals[0],
            "train_reconstruction": totals[1],
            "train_kl": totals[2],
            "val_neg_elbo": val["neg_elbo"],
            "val_reconstruction": val["reconstruction"],
            "val_kl": val["kl"],
            "kl_weight": kl_weight,
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": self.epoch_seconds,
            "examples_per_second": self.count / max(self.epoch_seconds, 1e-9),
        }
        if not all(math.isfinite(v) for v in (record["train_loss"], record["val_neg_elbo"])):
            raise TrainingError(f"the loss became NaN or infinite in epoch {self.epoch + 1}; lower the learning rate "
                                "(--lr) or check the data for extreme values")
        self.history.append(record)
        improved = record["val_neg_elbo"] < self.best_val
        if improved:
            self.best_val, self.best_epoch, self.bad_epochs = record["val_neg_elbo"], self.epoch + 1, 0
            if cfg.patience is not None:
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        else:
            self.bad_epochs += 1
            if cfg.patience is not None and self.bad_epochs >= cfg.patience:
                self.stopped_early = True
        self.log(
            f"epoch {record['epoch']}/{cfg.epochs}  train loss {record['train_loss']:.3f}  "
            f"val -ELBO {record['val_neg_elbo']:.3f} (reconstruction {record['val_reconstruction']:.3f} + "
            f"KL {record['val_kl']:.3f}) nats/example  {record['examples_per_second']:,.0f} examples/s"
            + ("  [early stop]" if self.stopped_early else "")
        )
        self.epoch += 1
        self.step_in_epoch = 0
        self.sums.zero_()
        self.count = 0
        self.epoch_seconds = 0.0
        if self.run_dir is not None:
            from .plots import save_loss_curve

            ckpt.write_metrics(self.run_dir, self.history)
            if cfg.patience is None or improved:
                ckpt.save_tensors(self.run_dir / ckpt.MODEL_FILE, self.model.state_dict())
            self._save_checkpoint()
            # A plot costs ~0.2 s: redraw it at most once a minute, and always after the last epoch.
            last = self.epoch >= cfg.epochs or self.stopped_early
            if last or time.perf_counter() - self._plotted_at > LOSS_CURVE_INTERVAL_S:
                save_loss_curve(self.history, self.run_dir / "loss_curve.png")
                self._plotted_at = time.perf_counter()

    # --- checkpoints -----------------------------------------------------------------------------
    def _training_state(self) -> dict[str, Any]:
        """Everything a checkpoint holds (references, not copies): model, optimizer, extra tensors, bookkeeping."""
        tensors = {"noise_rng": self.noise.get_state(), "sums": self.sums}
        if self.best_state is not None:
            tensors.update({f"best.{k}": v for k, v in self.best_state.items()})
        state = {
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "count": self.count, "epoch_seconds": self.epoch_seconds, "history": self.history,
            "best_val": self.best_val if math.isfinite(self.best_val) else None, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "stopped_early": self.stopped_early,
        }
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "tensors": tensors,
                "state": state}

    def _save_checkpoint(self) -> None:
        saved = self._training_state()
        ckpt.save_checkpoint(self.run_dir, model=self.model, optimizer=self.optimizer, tensors=saved["tensors"],
                             state={**saved["state"], "numerics": self.guard.state_dict()})

    def _restore(self) -> None:
        saved = ckpt.load_checkpoint(self.run_dir)
        if saved is None:
            self.log(f"{self.run_dir} holds no complete checkpoint yet; starting from the beginning")
            return
        ckpt.check_state_dict(self.model.state_dict(), saved["model"], self.run_dir / ckpt.POINTER_FILE)
        try:
            self._load_training_state(saved)
            self.guard.load_state_dict(saved["state"].get("numerics", {}))
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
            raise CheckpointError(f"the training state in {self.run_dir / ckpt.POINTER_FILE}'s checkpoint is damaged "
                                  f"or was written by another program ({type(err).__name__}: {err})") from None
        ckpt.write_metrics(self.run_dir, self.history)  # drop epochs logged after the checkpoint
        self.log(f"resuming {self.run_dir} at epoch {self.epoch + 1}, step {self.global_step}")

    def _load_training_state(self, saved: dict[str, Any]) -> None:
        """Put back what ``_training_state`` (or a checkpoint on disk) holds."""
        self.model.load_state_dict(saved["model"])
        try:
            self.optimizer.load_state_dict(saved["optimizer"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"the optimizer state in {self.run_dir} does not fit this model: {err}") from None
        tensors, state = saved["tensors"], saved["state"]
        self.noise.set_state(tensors["noise_rng"])
        self.sums = tensors["sums"].to(self.device)
        best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
        self.best_state = best or None
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self.count, self.epoch_seconds, self.history = state["count"], state["epoch_seconds"], state["history"]
        self.best_val = state["best_val"] if state["best_val"] is not None else math.inf
        self.best_epoch, self.bad_epochs, self.stopped_early = state["best_epoch"], state["bad_epochs"], state["stopped_early"]


def train(config: RunConfig, dataset: Dataset, *, run_dir: str | Path | None = None, resume: bool = False,
          progress: bool = True, log: Callable[[str], None] | None = None) -> tuple[VAEModel, list[dict[str, Any]]]:
    """Build a seeded model for ``config``, train it on ``dataset`` and return it with its history."""
    model = build_model(config)
    trainer = Trainer(model, dataset, config, run_dir=run_dir, progress=progress, log=log)
    history = trainer.fit(resume=resume)
    if run_dir is not None:
        ckpt.save_tensors(Path(run_dir) / ckpt.MODEL_FILE, trainer.model.state_dict())
    return trainer.model, history
