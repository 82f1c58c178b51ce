"""The training loop: minibatch Adam on the negative ELBO, validation every epoch, checkpoints, resume.

Read it top to bottom in ``Trainer.fit``. Performance habits visible here:
- the data lives on the device as one tensor; each epoch indexes a seeded random permutation
  (no per-example collation, no DataLoader for in-memory data);
- running sums stay on the device; the host reads them only for the progress bar and at epoch end;
- the optimizer is Adam's fused (or foreach) implementation, not the per-parameter loop;
- the Bernoulli loss is BCE with logits (``Bernoulli(logits=...).log_prob``), fused and stable.

Determinism: the seed fixes initialisation, each epoch's permutation (seeded by seed and epoch)
and the noise generator (reparameterization and dynamic binarization), whose state is saved in
every checkpoint, so a resumed CPU run ends with exactly the weights of an uninterrupted one.

Scale: ``--precision bf16|fp16`` runs the forward pass under ``torch.autocast`` (``precision.py``);
launched by torchrun, the trainer is one rank of a DistributedDataParallel job (``distributed.py``:
each rank trains on its shard of every global batch, only rank 0 writes); data that does not fit in
memory streams through DataLoader workers (``batches.py``, ``data/streaming.py``).
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
from . import distributed
from .batches import epoch_permutation as _epoch_permutation  # noqa: F401  (re-exported)
from .batches import training_batches
from .config import RunConfig, TrainConfig
from .data import Dataset
from .data.transforms import binarize
from .errors import CheckpointError, ConfigError, TrainingError
from .evaluate import elbo
from .model import VAEModel
from .precision import MixedPrecision
from .objectives import elbo_objective, make_objective  # noqa: F401  (elbo_objective: re-exported)


LOSS_CURVE_INTERVAL_S = 60.0


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
    try:
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)


class _ObjectiveStep(torch.nn.Module):
    """The objective as a module, so that DistributedDataParallel sees the forward pass and syncs its gradients."""

    def __init__(self, model: VAEModel, objective: Callable) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, x: Tensor, kl_weight: float, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        return self.objective(self.model, x, kl_weight, generator)


class Trainer:
    """Trains one model on one data set, optionally keeping a run directory up to date."""

    def __init__(self, model: VAEModel, dataset: Dataset, config: RunConfig, *, run_dir: str | Path | None = None,
                 progress: bool = True, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.train_config = config.train
        self.context = distributed.current()  # rank 0 of 1 unless launched by torchrun
        self.device = distributed.device_for(config.train.device, self.context)
        self.precision = MixedPrecision(config.train.precision, self.device)
        self.model = model.to(self.device)
        self.dataset = dataset
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.writes = self.run_dir is not None and self.context.is_main  # only rank 0 writes files
        self.progress = progress and self.context.is_main
        self.log = (log or (lambda message: None)) if self.context.is_main else (lambda message: None)
        self.optimizer = make_optimizer(self.model, self.train_config, self.device)
        self.objective = make_objective(self.train_config)
        self.train_step = self.context.wrap(_ObjectiveStep(self.model, self.objective), self.device)
        self.noise = torch.Generator(device=self.device).manual_seed(
            distributed.rank_seed(self.train_config.seed, self.context.rank))
        # Dynamic binarization draws from the intensities at every step; otherwise train on what split() gives.
        self.dynamic_binarization = dataset.config.binarize == "dynamic"
        streamed = dataset.train_stream is not None  # then batches come from the stream, x_train is empty
        self.x_train = dataset.x_train if self.dynamic_binarization or streamed else dataset.split("train")
        if not streamed:  # a streamed split was checked as it was scanned
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

    # --- the loop --------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        cfg = self.train_config
        if resume and self.run_dir is not None:
            self._restore()
        if self.writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.save_config(self.run_dir, self.config)
        dynamic = self.dynamic_binarization
        batches = training_batches(self.dataset, self.x_train, cfg, self.context, self.device)
        x_val = self.dataset.split("test")[self.context.rank::self.context.world_size].to(self.device)
        steps_per_epoch = batches.steps_per_epoch
        warmup_steps = cfg.warmup_epochs * steps_per_epoch
        refresh = max(1, steps_per_epoch // 25)
        self.model.train()
        with self._stop_on_ctrl_c():
            while self.epoch < cfg.epochs and not self.stopped_early:
                bar = self._progress_bar(steps_per_epoch)
                started = time.perf_counter() - self.epoch_seconds
                for step, x, global_count in batches.epoch(self.epoch, self.step_in_epoch):
                    if dynamic:
                        x = binarize(x, generator=self.noise)
                    kl_weight = cfg.kl_weight * min(1.0, (self.global_step + 1) / warmup_steps) if warmup_steps else cfg.kl_weight
                    with self.precision.autocast():
                        loss, rec_sum, kl_sum = self.train_step(x, kl_weight, self.noise)
                    self.optimizer.zero_grad(set_to_none=True)
                    self.precision.backward(loss * self.context.loss_weight(len(x), global_count)
                                            if self.context.enabled else loss)
                    self.precision.step(self.optimizer)
                    self.sums += torch.stack([loss.detach().double() * len(x), rec_sum.double(), kl_sum.double()])
                    self.count += len(x)
                    self.step_in_epoch = step + 1
                    self.global_step += 1
                    if bar is not None and (self.step_in_epoch % refresh == 0 or self.step_in_epoch == steps_per_epoch):
                        bar.n = self.step_in_epoch
                        bar.set_postfix_str(f"loss {self.sums[0].item() / self.count:.3f}", refresh=True)
                    if self.context.enabled:  # every rank stops at the same step, whichever saw the signal
                        self._stop_requested = self.context.any(self._stop_requested, self.device)
                    if self._stop_requested or (cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0
                                                and self.step_in_epoch < steps_per_epoch):
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
                self.epoch_seconds = time.perf_counter() - started
                self._end_epoch(x_val, kl_weight)
        if cfg.patience is not None and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        return self.history

    @contextlib.contextmanager
    def _stop_on_ctrl_c(self):
        """The first Ctrl-C finishes the current step, saves a checkpoint and stops; a second one stops at once.

        Under torchrun the ranks agree on the step to stop at, and SIGTERM (what torchrun and cluster schedulers
        send) is handled the same way; a repeated signal does not break off the checkpoint (torchrun kills
        ranks that take too long).
        """
        self._stop_requested = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        together = self.context.enabled

        def handler(signum, frame):
            if self._stop_requested and not together:
                raise KeyboardInterrupt
            self._stop_requested = True

        signals = (signal.SIGINT, signal.SIGTERM) if together else (signal.SIGINT,)
        previous = {sig: signal.signal(sig, handler) for sig in signals}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _progress_bar(self, total: int):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{self.train_config.epochs}",
                    unit="step", leave=False, file=sys.stderr, dynamic_ncols=True,
                    disable=None)  # None: no bar when stderr is not a terminal (logs, CI)

    def _end_epoch(self, x_val: Tensor, kl_weight: float) -> None:
        cfg = self.train_config
        sums, self.count = self._global_sums()
        totals = (sums / max(self.count, 1)).tolist()
        val = self._validate(x_val)
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
            self._save_checkpoint()
        if self.writes:
            from .plots import save_loss_curve

            ckpt.write_metrics(self.run_dir, self.history)
            if cfg.patience is None or improved:
                ckpt.save_tensors(self.run_dir / ckpt.MODEL_FILE, self.model.state_dict())
            # A plot costs ~0.2 s: redraw it at most once a minute, and always after the last epoch.
            last = self.epoch >= cfg.epochs or self.stopped_early
            if last or time.perf_counter() - self._plotted_at > LOSS_CURVE_INTERVAL_S:
                save_loss_curve(self.history, self.run_dir / "loss_curve.png")
                self._plotted_at = time.perf_counter()

    def _global_sums(self) -> tuple[Tensor, int]:
        """The epoch's running sums and example count, added up over all ranks."""
        if not self.context.enabled:
            return self.sums, self.count
        both = torch.cat([self.sums, torch.tensor([float(self.count)], dtype=self.sums.dtype, device=self.device)])
        self.context.all_reduce_sum(both)
        return both[:3], int(both[3].item())

    def _validate(self, x_val: Tensor) -> dict[str, float]:
        """Mean -ELBO and its parts over the validation split; each rank evaluates its shard, the sums are all-reduced."""
        cfg = self.train_config
        if not len(x_val):  # more ranks than validation examples: this one has none
            zeros = self.context.all_reduce_sum(torch.zeros(4, dtype=torch.float64, device=self.device)).tolist()
            return {"neg_elbo": zeros[0] / zeros[3], "reconstruction": zeros[1] / zeros[3], "kl": zeros[2] / zeros[3]}
        result = elbo(self.model, x_val, batch_size=cfg.eval_batch_size,
                      seed=distributed.rank_seed(cfg.seed, self.context.rank))
        sums = torch.stack([result.neg_elbo.double().sum(), result.reconstruction.double().sum(),
                            result.kl.double().sum(), torch.tensor(float(len(x_val)), dtype=torch.float64,
                                                                   device=result.kl.device)])
        sums = self.context.all_reduce_sum(sums.to(self.device)).tolist()
        return {"neg_elbo": sums[0] / sums[3], "reconstruction": sums[1] / sums[3], "kl": sums[2] / sums[3]}

    # --- checkpoints -----------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        """Write a checkpoint (rank 0); under torchrun every rank takes part, handing over its noise state."""
        noise_states = self.context.gather(self.noise.get_state().to(self.device))
        sums, count = self._global_sums()
        if not self.writes:
            return
        tensors = {"noise_rng": noise_states[0].cpu(), "sums": sums}
        tensors.update({f"noise_rng.rank{r}": state.cpu() for r, state in enumerate(noise_states) if r})
        if self.best_state is not None:
            tensors.update({f"best.{k}": v for k, v in self.best_state.items()})
        state = {
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "count": count, "epoch_seconds": self.epoch_seconds, "history": self.history,
            "best_val": self.best_val if math.isfinite(self.best_val) else None, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "stopped_early": self.stopped_early,
            "world_size": self.context.world_size, "grad_scaler": self.precision.state_dict(),
        }
        ckpt.save_checkpoint(self.run_dir, model=self.model, optimizer=self.optimizer, tensors=tensors, state=state)

    def _restore(self) -> None:
        # Rank 0 reads the run directory and hands the checkpoint to the other ranks.
        saved = self.context.broadcast_object(ckpt.load_checkpoint(self.run_dir) if self.context.is_main else None,
                                              self.device)
        if saved is None:
            self.log(f"{self.run_dir} holds no complete checkpoint yet; starting from the beginning")
            return
        ckpt.check_state_dict(self.model.state_dict(), saved["model"], self.run_dir / ckpt.POINTER_FILE)
        self.model.load_state_dict(saved["model"])
        try:
            self.optimizer.load_state_dict(saved["optimizer"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"the optimizer state in {self.run_dir} does not fit this model: {err}") from None
        tensors, state = saved["tensors"], saved["state"]
        self._restore_noise(tensors, state)
        self.precision.load_state_dict(state.get("grad_scaler"))
        # Rank 0 carries the epoch's sums so far (over all ranks), the others start from zero: the all-reduce adds up.
        self.sums = tensors["sums"].to(self.device) if self.context.is_main else torch.zeros_like(self.sums)
        best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
        self.best_state = best or None
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self.count, self.epoch_seconds, self.history = state["count"], state["epoch_seconds"], state["history"]
        if not self.context.is_main:
            self.count = 0
        self.best_val = state["best_val"] if state["best_val"] is not None else math.inf
        self.best_epoch, self.bad_epochs, self.stopped_early = state["best_epoch"], state["bad_epochs"], state["stopped_early"]
        if self.writes:
            ckpt.write_metrics(self.run_dir, self.history)  # drop epochs logged after the checkpoint
        self.log(f"resuming {self.run_dir} at epoch {self.epoch + 1}, step {self.global_step}")

    def _restore_noise(self, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
        """This rank's noise generator state; with another number of processes than saved, a fresh seeded one."""
        saved_world = state.get("world_size", 1)
        rank = self.context.rank
        saved = tensors.get("noise_rng" if rank == 0 else f"noise_rng.rank{rank}")
        if saved_world == self.context.world_size and saved is not None and saved.shape == self.noise.get_state().shape:
            self.noise.set_state(saved)
            return
        # Another number of processes, or another kind of device (CPU and CUDA generators differ).
        self.noise.manual_seed(distributed.rank_seed(self.train_config.seed, rank) + 104_729 * state["global_step"])
        self.log(f"the checkpoint's random-generator states (from {saved_world} process(es) on another device or "
                 f"another number of processes) do not fit this run ({self.context.world_size} on {self.device.type}): "
                 "training continues with freshly seeded noise, so it will not match an uninterrupted run exactly")


def train(config: RunConfig, dataset: Dataset, *, run_dir: str | Path | None = None, resume: bool = False,
          progress: bool = True, log: Callable[[str], None] | None = None) -> tuple[VAEModel, list[dict[str, Any]]]:
    """Build a seeded model for ``config``, train it on ``dataset`` and return it with its history."""
    model = build_model(config)
    trainer = Trainer(model, dataset, config, run_dir=run_dir, progress=progress, log=log)
    history = trainer.fit(resume=resume)
    if trainer.writes:
        ckpt.save_tensors(Path(run_dir) / ckpt.MODEL_FILE, trainer.model.state_dict())
    return trainer.model, history
