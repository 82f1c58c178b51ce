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

import numpy as np
import torch
from torch import Tensor

from . import checkpoint as ckpt
from . import distributed
from .batches import epoch_permutation
from .batches import training_batches
from ..config import RunConfig, TrainConfig
from ..data import Dataset
from ..data.transforms import binarize, perturb
from ..errors import CheckpointError, ConfigError, TrainingError
from ..evaluation.likelihood import elbo
from ..models.likelihoods import BernoulliLikelihood, DiscretizedLogisticLikelihood
from ..models.model import VAEModel
from .numerics import NumericalGuard
from .precision import MixedPrecision
from ..models.objectives import elbo_objective, make_objective  # noqa: F401  (elbo_objective: re-exported)


LOSS_CURVE_INTERVAL_S = 60.0
CHECKPOINT_INTERVAL_S = 20.0  # between end-of-epoch checkpoints at most (see _end_epoch)
# Training rows whose mean (and variance) start the decoder's output bias: at most 8192, and at most 2^24 values
# (64 MiB as float32; a streamed data set is read for them).
MARGINAL_SAMPLE_ROWS = 8192
MARGINAL_SAMPLE_VALUES = 2**24
SNAPSHOT_MIN_STEPS = 10  # steps between the numerical guard's epoch-start snapshots, at least
LR_WARMUP_FRACTION = 0.05
# Adam's second-moment decay: 0.99 instead of torch's 0.999 adapts faster to the shrinking gradients of the
# first epochs; on Fashion-MNIST it reaches a given test ELBO about half an epoch earlier (benchmarks/speed.py).
ADAM_BETA1 = 0.9


def build_model(config: RunConfig, seed: int | None = None) -> VAEModel:
    """A freshly initialised model; the seed fixes its initial weights without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed if seed is None else seed)
        return VAEModel(config.model)


def starts_at_the_marginal(config: RunConfig) -> bool:
    """Whether a fresh model's decoder output starts at the training data's marginal (``TrainConfig.output_init``).

    "auto" does so under the VampPrior only. There it is what keeps a tanh network from collapsing. Elsewhere it
    gives a better -ELBO early in a run (a conv model on 10,000 Fashion-MNIST images: 280.7 against 318.6 nats
    after 2 epochs), but it also changes what a short run learns. A 12-epoch three-layer ladder on digits, started
    there, ranked uniform noise below digits by LLR^{>k}. So it is not the default until the benchmarks are rerun
    with it.
    """
    init = config.train.output_init
    return init == "marginal" or (init == "auto" and config.model.prior == "vamp")


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam, fused into a few kernels where this PyTorch supports it on the device, else multi-tensor."""
    params = [p for p in model.parameters() if p.requires_grad]
    settings = dict(lr=config.lr, betas=(ADAM_BETA1, config.adam_beta2), weight_decay=config.weight_decay)
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


class _ObjectiveStep(torch.nn.Module):
    """The objective as a module, so that DistributedDataParallel sees the forward pass and syncs its gradients."""

    def __init__(self, model: VAEModel, objective: Callable) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, x: Tensor, kl_weight: float, generator: torch.Generator,
                y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        if y is None:
            return self.objective(self.model, x, kl_weight, generator)
        return self.objective(self.model, x, kl_weight, generator, y=y)


class _Records(list):
    """The history's epoch records, which are never changed once appended: a snapshot copies the list, not every
    record (a deep copy of them all at every epoch's snapshot made long runs of small data quadratic in epochs)."""

    def __deepcopy__(self, memo):
        return _Records(self)


class Trainer:
    """Trains one model on one data set, optionally keeping a run directory up to date."""

    def __init__(self, model: VAEModel, dataset: Dataset, config: RunConfig, *, run_dir: str | Path | None = None,
                 progress: bool = True, log: Callable[[str], None] | None = None,
                 initialize_output: bool = False) -> None:
        """``initialize_output``: the model is fresh, and its decoder output starts at the data's marginal
        (``VAEModel.initialize_output_bias``, from a sample of the training rows, ``_marginal_sample``)."""
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
        self.noise = torch.Generator(device=self.device).manual_seed(
            distributed.rank_seed(self.train_config.seed, self.context.rank))
        # Dynamic binarization draws from the intensities at every step; otherwise train on what split() gives.
        self.dynamic_binarization = dataset.config.binarize == "dynamic"
        streamed = dataset.train_stream is not None  # then batches come from the stream, x_train is empty
        self.x_train = dataset.x_train if self.dynamic_binarization or streamed else dataset.split("train", units="model")
        if not streamed:  # a streamed split was checked as it was scanned
            self.model.likelihood.check_data(self.x_train)
        if initialize_output:  # before DDP's wrap broadcasts rank 0's weights (every rank computes the same bias)
            sample = self._marginal_sample(streamed) if self.model.likelihood.has_marginal else None
            if sample is not None and self.model.initialize_output_bias(sample.to(self.device)):
                self.log(f"decoder output bias: the marginal of {len(sample):,} training rows "
                         f"(output-init {config.train.output_init})")
            else:
                self.log(f"note: the decoder's output bias keeps PyTorch's start: the {config.model.likelihood} "
                         "likelihood (or this decoder's last layer) has no marginal to start from")
        self.train_step = self.context.wrap(_ObjectiveStep(self.model, self.objective), self.device)
        # A conditional model's labels, as indices into its classes (None for an unconditional model).
        self.y_train, self.y_val = (self._label_indices("train"), self._label_indices("test")) if model.conditional \
            else (None, None)
        self.perturb_levels = self._perturbation_grid(streamed) if config.train.perturb_rate else None
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
        self._checkpointed_at = time.perf_counter()
        self._saved_best_epoch = -1
        self._stop_requested = False
        # NaN/inf losses and gradients: detected at the step, rolled back to the last good state (numerics.py).
        self.guard = NumericalGuard(self.model.parameters(), device=self.device, capture=self._training_state,
                                    restore=self._load_training_state, clip_grad_norm=config.train.clip_grad_norm,
                                    max_rollbacks=config.train.max_rollbacks,
                                    # fp16's gradient scaler skips steps with overflowing gradients by design
                                    check_gradients=config.train.precision != "fp16")

    def _marginal_sample(self, streamed: bool) -> Tensor:
        """Up to MARGINAL_SAMPLE_ROWS training rows (and MARGINAL_SAMPLE_VALUES values), the same on every rank:
        the first of epoch 0's permutation."""
        n = len(self.dataset.train_stream) if streamed else len(self.x_train)
        count = max(1, min(MARGINAL_SAMPLE_ROWS, MARGINAL_SAMPLE_VALUES // math.prod(self.model.input_shape)))
        positions = epoch_permutation(self.train_config.seed, 0, n)[:count]
        if not streamed:
            return self.x_train[positions]
        rows, _ = self.dataset.train_stream.read_readable(np.sort(positions.numpy()))
        return torch.from_numpy(rows)

    def _label_indices(self, which: str) -> Tensor:
        from ..data.labels import split_label_indices

        return torch.from_numpy(split_label_indices(self.dataset, which, self.config.model.class_names))

    def _perturbation_grid(self, streamed: bool) -> int | None:
        """The grid that perturbed values are drawn on (None: uniform on [0, 1]), so they stay in the likelihood's support."""
        if self.dataset.kind != "unit":
            raise ConfigError(f"perturbation replaces values with random ones in [0, 1], but {self.dataset.name} holds "
                              "values outside [0, 1] (or is standardized); it is meant for images scaled to [0, 1]")
        if self.dynamic_binarization:
            return None  # intensities, binarized after the perturbation
        likelihood = self.model.likelihood
        if isinstance(likelihood, DiscretizedLogisticLikelihood):
            return likelihood.num_levels
        if self.dataset.config.binarize == "static" or (
                isinstance(likelihood, BernoulliLikelihood) and not streamed and likelihood.is_discrete(self.x_train)):
            return 2
        return None

    # --- the loop --------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        cfg = self.train_config
        if resume and self.run_dir is not None:
            self._restore()
        if self.writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temp_files(self.run_dir)
            ckpt.save_config(self.run_dir, self.config)
        dynamic = self.dynamic_binarization
        batches = training_batches(self.dataset, self.x_train, cfg, self.context, self.device, y_train=self.y_train)
        x_val = self.dataset.split("test", units="model")[self.context.rank::self.context.world_size].to(self.device)
        self._val_labels = None if self.y_val is None else self.y_val[self.context.rank::self.context.world_size]
        steps_per_epoch = batches.steps_per_epoch
        warmup_steps = cfg.warmup_epochs * steps_per_epoch
        total_steps = cfg.epochs * steps_per_epoch  # the horizon of the learning-rate schedule
        refresh = max(1, steps_per_epoch // 25)
        self.model.train()
        with self._stop_on_ctrl_c():
            while self.epoch < cfg.epochs and not self.stopped_early:
                # At an epoch's start (so that a rollback stays in its epoch) once at least SNAPSHOT_MIN_STEPS steps
                # were taken since the last one: with epochs of a few steps a snapshot per epoch was a tenth of a
                # small table's training time. A rollback may then cross an epoch's end (the snapshot holds the
                # epoch counter and the history too).
                self.guard.take_snapshot(self.global_step, force=self.step_in_epoch == 0 and (
                    self.global_step - self.guard.snapshot_step >= SNAPSHOT_MIN_STEPS))
                bar = self._progress_bar(steps_per_epoch)
                started = time.perf_counter() - self.epoch_seconds
                rolled_back = False
                for step, x, y, global_count in batches.epoch(self.epoch, self.step_in_epoch):
                    if cfg.perturb_rate:  # before binarization: a replaced intensity is then a fair coin
                        x = perturb(x, cfg.perturb_rate, self.noise, self.perturb_levels)
                    if dynamic:
                        x = binarize(x, generator=self.noise)
                    kl_weight = cfg.kl_weight * min(1.0, (self.global_step + 1) / warmup_steps) if warmup_steps else cfg.kl_weight
                    with self.precision.autocast():
                        loss, rec_sum, kl_sum = self.train_step(x, kl_weight, self.noise, *(() if y is None else (y,)))
                    self.optimizer.zero_grad(set_to_none=True)
                    self.precision.backward(loss * self.context.loss_weight(len(x), global_count)
                                            if self.context.enabled else loss)
                    if self.guard.clip_grad_norm is not None:
                        self.precision.unscale(self.optimizer)  # clip the true gradients, not fp16-scaled ones
                    self.guard.after_backward(loss, self.global_step + 1)
                    # The schedule's rate, times the guard's reduction after NaN/inf rollbacks (1 until one happens).
                    lr = learning_rate(cfg, self.global_step, total_steps) * self.guard.lr_scale
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
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
                    checkpoint_due = self._stop_requested or bool(
                        cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0
                        and self.step_in_epoch < steps_per_epoch)
                    # Under DDP every rank sees the same all-reduced gradients, so all of them find a fault together.
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
                            if self.writes and self.epoch >= 1:  # the run's files as up to date as the checkpoint
                                self._write_weights_and_metrics()
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
        every = max(1, math.ceil(cfg.epochs / 20)) if cfg.epochs > 30 else 1  # at most ~20 lines for long runs
        epoch = self.epoch + 1
        logged = epoch % every == 0 or epoch in (1, cfg.epochs)
        # Validation on a schedule that scales with the run: at every logged epoch (every epoch up to 30 epochs,
        # else about 20 times per run, always the first and the last) and, with --patience (which counts
        # epochs), every epoch. Other rows hold None. On a small table, epochs of one step, a validation costs
        # about half a training step, so validating about 50 times per run was about a tenth of it.
        validated = cfg.patience is not None or logged
        val = self._validate(x_val) if validated else {"neg_elbo": None, "reconstruction": None, "kl": None}
        # Standardized arrays: every -log density reported in the data's own units (+ sum of log sd per example).
        shift = self.units_shift
        totals[0] += shift
        totals[1] += shift
        if validated:
            val["neg_elbo"] += shift
            val["reconstruction"] += shift
        if not self.model.training:  # (validation restores the mode itself; a recursive train() per epoch of one
            self.model.train()       # step was about 4% of a small table's run)
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
        if not all(math.isfinite(v) for v in (record["train_loss"], record["val_neg_elbo"]) if v is not None):
            raise TrainingError(f"the loss became NaN or infinite in epoch {self.epoch + 1}; lower the learning rate "
                                "(--lr) or check the data for extreme values")
        self.history.append(record)
        improved = validated and record["val_neg_elbo"] < self.best_val
        if improved:
            self.best_val, self.best_epoch, self.bad_epochs = record["val_neg_elbo"], self.epoch + 1, 0
            if cfg.patience is not None:
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        elif validated:
            self.bad_epochs += 1
            if cfg.patience is not None and self.bad_epochs >= cfg.patience:
                self.stopped_early = True
        if logged or self.stopped_early:
            self._log_epoch(record)
        self.epoch += 1
        self.step_in_epoch = 0
        self.sums.zero_()
        self.count = 0
        self.epoch_seconds = 0.0
        last = self.epoch >= cfg.epochs or self.stopped_early
        # The run directory (checkpoint, weights, metrics) is written after the first and the last epoch and
        # otherwise at most every CHECKPOINT_INTERVAL_S: a crash loses at most that much work, and a small table's
        # 667 epochs of 3 steps no longer write 667 checkpoints (two thirds of its run). With --checkpoint-every,
        # and under torchrun (where every rank must take the same decision), after every epoch as before.
        due = (last or self.epoch == 1 or cfg.checkpoint_every is not None or self.context.enabled
               or time.perf_counter() - self._checkpointed_at >= CHECKPOINT_INTERVAL_S)
        if self.run_dir is not None and due:
            self._save_checkpoint()
            self._checkpointed_at = time.perf_counter()
        if self.writes:
            from ..plots import save_loss_curve

            if due:
                self._write_weights_and_metrics()
            # A plot costs ~0.2 s: redraw it at most once a minute, and always after the last epoch.
            if last or time.perf_counter() - self._plotted_at > LOSS_CURVE_INTERVAL_S:
                save_loss_curve(self.history, self.run_dir / "loss_curve.png")
                self._plotted_at = time.perf_counter()

    def _write_weights_and_metrics(self) -> None:
        """metrics.jsonl and model.safetensors: the last epoch's weights, or with --patience the best epoch's."""
        ckpt.write_metrics(self.run_dir, self.history)
        if self.train_config.patience is None:
            ckpt.save_tensors(self.run_dir / ckpt.MODEL_FILE, self.model.state_dict())
        elif self.best_state is not None and self.best_epoch > self._saved_best_epoch:
            ckpt.save_tensors(self.run_dir / ckpt.MODEL_FILE, self.best_state)
            self._saved_best_epoch = self.best_epoch

    def _log_epoch(self, record: dict[str, Any]) -> None:
        self.log(
            f"epoch {record['epoch']}/{self.train_config.epochs}  train loss {record['train_loss']:.3f}  "
            f"val -ELBO {record['val_neg_elbo']:.3f} (reconstruction {record['val_reconstruction']:.3f} + "
            f"KL {record['val_kl']:.3f}) nats/example{self.units_note}  {record['examples_per_second']:,.0f} examples/s"
            + ("  [early stop]" if self.stopped_early else "")
        )

    @property
    def units_shift(self) -> float:
        """sum of log sd over the values of a standardized data set: -log p(standardized) + this = -log p(original)."""
        std = self.dataset.config.standardize_std
        return float(np.log(np.asarray(std, dtype=np.float64)).sum()) if std is not None else 0.0

    @property
    def units_note(self) -> str:
        return " (in the data's own units)" if self.dataset.config.standardize_std is not None else ""

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
                      seed=distributed.rank_seed(cfg.seed, self.context.rank), labels=self._val_labels)
        sums = torch.stack([result.neg_elbo.double().sum(), result.reconstruction.double().sum(),
                            result.kl.double().sum(), torch.tensor(float(len(x_val)), dtype=torch.float64,
                                                                   device=result.kl.device)])
        sums = self.context.all_reduce_sum(sums.to(self.device)).tolist()
        return {"neg_elbo": sums[0] / sums[3], "reconstruction": sums[1] / sums[3], "kl": sums[2] / sums[3]}

    # --- checkpoints -----------------------------------------------------------------------------
    def _training_state(self) -> dict[str, Any]:
        """This rank's training state (references, not copies): model, optimizer, extra tensors, bookkeeping.

        The numerical guard keeps deep copies of it in memory; checkpoints are built from it.
        """
        tensors = {"noise_rng": self.noise.get_state(), "sums": self.sums}
        if self.best_state is not None:
            tensors.update({f"best.{k}": v for k, v in self.best_state.items()})
        state = {
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "count": self.count, "epoch_seconds": self.epoch_seconds, "history": _Records(self.history),
            "best_val": self.best_val if math.isfinite(self.best_val) else None, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "stopped_early": self.stopped_early,
            "world_size": self.context.world_size, "device_type": self.device.type,
            "grad_scaler": self.precision.state_dict(),
        }
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "tensors": tensors,
                "state": state}

    def _save_checkpoint(self) -> None:
        """Write a checkpoint (rank 0); under torchrun every rank takes part, handing over its noise state and sums."""
        noise_states = self.context.gather(self.noise.get_state().to(self.device))
        sums, count = self._global_sums()
        if not self.writes:
            return
        saved = self._training_state()
        tensors = {**saved["tensors"], "noise_rng": noise_states[0].cpu(), "sums": sums}
        tensors.update({f"noise_rng.rank{r}": state.cpu() for r, state in enumerate(noise_states) if r})
        state = {**saved["state"], "count": count, "numerics": self.guard.state_dict()}
        ckpt.save_checkpoint(self.run_dir, model=self.model, optimizer=self.optimizer, tensors=tensors, state=state)

    def _restore(self) -> None:
        # Rank 0 reads the run directory and hands the checkpoint to the other ranks.
        saved = self.context.broadcast_object(ckpt.load_checkpoint(self.run_dir) if self.context.is_main else None,
                                              self.device)
        if saved is None:
            self.log(f"{self.run_dir} holds no complete checkpoint yet; starting from the beginning")
            return
        ckpt.check_state_dict(self.model.state_dict(), saved["model"], self.run_dir / ckpt.POINTER_FILE)
        try:
            self._load_training_state(saved, from_checkpoint=True)
            self.guard.load_state_dict(saved["state"].get("numerics", {}))
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
            raise CheckpointError(f"the training state in {self.run_dir / ckpt.POINTER_FILE}'s checkpoint is damaged "
                                  f"or was written by another program ({type(err).__name__}: {err})") from None
        if self.writes:  # rank 0 only: every rank writing the file raced with rank 0's clean-up of temporary files
            ckpt.write_metrics(self.run_dir, self.history)  # drop epochs logged after the checkpoint
        self.log(f"resuming {self.run_dir} at epoch {self.epoch + 1}, step {self.global_step}")

    def _load_training_state(self, saved: dict[str, Any], from_checkpoint: bool = False) -> None:
        """Put back what ``_training_state`` (an in-memory snapshot of this rank) or a checkpoint holds.

        A checkpoint holds every rank's noise state and the sums over all ranks; a snapshot only this rank's.
        """
        self.model.load_state_dict(saved["model"])
        try:
            self.optimizer.load_state_dict(saved["optimizer"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"the optimizer state in {self.run_dir} does not fit this model: {err}") from None
        tensors, state = saved["tensors"], saved["state"]
        self.precision.load_state_dict(state.get("grad_scaler"))
        if from_checkpoint:
            self._restore_noise(tensors, state)
            # Rank 0 carries the epoch's sums so far (over all ranks), the others start from zero: the all-reduce adds.
            self.sums = tensors["sums"].to(self.device) if self.context.is_main else torch.zeros_like(self.sums)
        else:
            self.noise.set_state(tensors["noise_rng"])
            self.sums = tensors["sums"].to(self.device)
        best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
        self.best_state = best or None
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self.count, self.epoch_seconds, self.history = state["count"], state["epoch_seconds"], state["history"]
        if from_checkpoint and not self.context.is_main:
            self.count = 0
        self.best_val = state["best_val"] if state["best_val"] is not None else math.inf
        self.best_epoch, self.bad_epochs, self.stopped_early = state["best_epoch"], state["bad_epochs"], state["stopped_early"]

    def _restore_noise(self, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
        """This rank's noise generator state; with another number of processes than saved, a fresh seeded one."""
        saved_world = state.get("world_size", 1)
        rank = self.context.rank
        saved = tensors.get("noise_rng" if rank == 0 else f"noise_rng.rank{rank}")
        same_setting = saved_world == self.context.world_size and state.get("device_type", self.device.type) == \
            self.device.type
        if same_setting and (saved is None or saved.shape != self.noise.get_state().shape):
            # Same processes, same kind of device: the state must be there, whole (caught as a damaged checkpoint).
            raise ValueError("the random-generator state of this process is missing or has the wrong size")
        if same_setting:
            self.noise.set_state(saved)
            return
        # Another number of processes, or another kind of device (CPU and CUDA generators differ).
        self.noise.manual_seed(distributed.rank_seed(self.train_config.seed, rank) + 104_729 * state["global_step"])
        self.log(f"the checkpoint's random-generator states (from {saved_world} process(es) on another device or "
                 f"another number of processes) do not fit this run ({self.context.world_size} on {self.device.type}): "
                 "training continues with freshly seeded noise, so it will not match an uninterrupted run exactly")


def _has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` points at a checkpoint (a damaged pointer counts: the trainer's restore reports it)."""
    try:
        return ckpt.read_pointer(run_dir) is not None
    except CheckpointError:
        return True


def train(config: RunConfig, dataset: Dataset, *, run_dir: str | Path | None = None, resume: bool = False,
          progress: bool = True, log: Callable[[str], None] | None = None) -> tuple[VAEModel, list[dict[str, Any]]]:
    """Build a seeded model for ``config``, train it on ``dataset`` and return it with its history."""
    model = build_model(config)
    # A resumed run's checkpoint replaces the weights; resuming where there is none starts over, fresh.
    resumed = resume and run_dir is not None and _has_checkpoint(Path(run_dir))
    trainer = Trainer(model, dataset, config, run_dir=run_dir, progress=progress, log=log,
                      initialize_output=starts_at_the_marginal(config) and not resumed)
    history = trainer.fit(resume=resume)
    if trainer.writes:
        ckpt.save_tensors(Path(run_dir) / ckpt.MODEL_FILE, trainer.model.state_dict())
    return trainer.model, history
