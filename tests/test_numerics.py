"""Numerical faults: a NaN/inf loss or gradient is caught at its step, rolled back with a lower rate, or training gives up."""

from __future__ import annotations

import math

import pytest
import torch

import vaekit
from vaekit.api import make_run_config
from vaekit.training.numerics import NumericalGuard, total_grad_norm
from vaekit.training.trainer import Trainer, build_model, learning_rate

STEPS_PER_EPOCH = 23  # digits: 1,438 training examples, batches of 64


def small_config(dataset, **train):
    # A constant rate, so that the tests can name the rates exactly; the cosine schedule has its own test below.
    options = dict(epochs=3, batch_size=64, seed=3, device="cpu", lr_schedule="constant")
    options.update(train)
    return make_run_config(dataset, latent_dim=4, hidden=(32,), **options)


def poison(trainer: Trainer, bad_steps: set[int] | None = None, from_step: int | None = None, where: str = "loss"):
    """Make the loss (or a gradient) NaN the first time each of ``bad_steps`` runs, or at every step from ``from_step``."""
    train_step = trainer.train_step  # the objective on a batch (wrapped in DistributedDataParallel under torchrun)
    model = trainer.model
    hits: list[int] = []

    def poisoned(x, kl_weight, noise):
        loss, rec, kl = train_step(x, kl_weight, noise)
        step = trainer.global_step + 1  # 1-based, as the guard counts
        if (bad_steps and step in bad_steps and step not in hits) or (from_step is not None and step >= from_step):
            hits.append(step)
            if where == "loss":
                loss = loss * float("nan")
            else:  # the value stays finite (0 * sqrt(0) = 0) but the gradient of sqrt at 0 makes it NaN
                loss = loss + 0.0 * torch.sqrt(next(model.parameters()).sum() * 0.0)
        return loss, rec, kl

    trainer.train_step = poisoned
    return hits


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_nan_loss_rolls_back_to_the_last_good_state_with_half_the_learning_rate(digits, tmp_path):
    """The faulted run equals, bit for bit, one that ran epoch 1 and then went on from there at lr / 2."""
    config = small_config(digits, lr=2e-3)
    messages: list[str] = []
    trainer = Trainer(build_model(config), digits, config, progress=False, log=messages.append)
    poison(trainer, bad_steps={STEPS_PER_EPOCH + 7})  # once, inside epoch 2
    history = trainer.fit()
    assert trainer.guard.rollbacks == 1 and trainer.global_step == 3 * STEPS_PER_EPOCH
    assert any(f"loss became NaN or infinite at step {STEPS_PER_EPOCH + 7}" in m for m in messages), messages
    assert [h["lr"] for h in history] == [2e-3, 1e-3, 1e-3]

    # Independently: one clean epoch, checkpointed; then resumed from it with the rate halved.
    reference_config = small_config(digits, lr=2e-3)
    first = Trainer(build_model(reference_config), digits, small_config(digits, lr=2e-3, epochs=1),
                    run_dir=tmp_path, progress=False)
    first.fit()
    second = Trainer(build_model(reference_config), digits, reference_config, run_dir=tmp_path, progress=False)
    restore = second._restore

    def restore_then_halve():
        restore()
        second.guard.lr_scale = 0.5  # the factor the trainer applies to its schedule's rate

    second._restore = restore_then_halve
    second.fit(resume=True)
    for name, value in weights(second.model).items():
        torch.testing.assert_close(trainer.model.state_dict()[name], value, rtol=0, atol=0)


def test_a_nan_gradient_with_a_finite_loss_is_caught_too(digits):
    config = small_config(digits, epochs=1)
    messages: list[str] = []
    trainer = Trainer(build_model(config), digits, config, progress=False, log=messages.append)
    poison(trainer, bad_steps={5}, where="gradient")
    trainer.fit()
    assert trainer.guard.rollbacks == 1
    assert any("gradient norm became NaN or infinite at step 5" in m for m in messages), messages
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())


def test_a_fault_that_keeps_coming_back_ends_in_a_clear_training_error(digits):
    config = small_config(digits, epochs=2, max_rollbacks=3)
    trainer = Trainer(build_model(config), digits, config, progress=False)
    poison(trainer, from_step=30)
    with pytest.raises(vaekit.TrainingError) as err:
        trainer.fit()
    message = str(err.value)
    assert "the loss became NaN or infinite at step 30 (epoch 2)" in message
    assert "after 3 rollback(s)" in message and f"learning rate lowered to {config.train.lr / 8:.3g}" in message
    assert "--clip-grad-norm" in message


def test_max_rollbacks_zero_gives_up_at_the_first_fault(digits):
    config = small_config(digits, epochs=1, max_rollbacks=0)
    trainer = Trainer(build_model(config), digits, config, progress=False)
    poison(trainer, bad_steps={4})
    with pytest.raises(vaekit.TrainingError, match="at step 4 \\(epoch 1\\); giving up"):
        trainer.fit()


def test_an_absurd_learning_rate_really_diverges_and_is_stopped(digits):
    """No injection: lr = 1e12 drives the weights to ~1e12 and the loss to infinity within a few steps."""
    config = small_config(digits, epochs=2, lr=1e12, max_rollbacks=2)
    trainer = Trainer(build_model(config), digits, config, progress=False)
    with pytest.raises(vaekit.TrainingError, match="NaN or infinite at step \\d+ .*after 2 rollback"):
        trainer.fit()


def test_the_rollback_count_and_lowered_rate_survive_a_resume(digits, tmp_path):
    config = small_config(digits, epochs=2, checkpoint_every=5)
    trainer = Trainer(build_model(config), digits, config, run_dir=tmp_path, progress=False)
    poison(trainer, bad_steps={3})
    trainer.fit()
    resumed = Trainer(build_model(config), digits, config, run_dir=tmp_path, progress=False)
    resumed._restore()
    assert resumed.guard.rollbacks == 1 and resumed.guard.last_fault_step == 3
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(config.train.lr / 2)
    assert resumed.guard.lr_scale == 0.5


def test_a_rollback_lowers_the_cosine_schedule_for_the_rest_of_the_run(digits):
    """The schedule sets the rate at every step; the guard's halving must last, not be overwritten at the next step."""
    config = small_config(digits, epochs=3, lr=2e-3, lr_schedule="cosine")
    trainer = Trainer(build_model(config), digits, config, progress=False)
    poison(trainer, bad_steps={STEPS_PER_EPOCH + 7})
    history = trainer.fit()
    total = 3 * STEPS_PER_EPOCH
    expected = [learning_rate(config.train, STEPS_PER_EPOCH * (e + 1) - 1, total) * (1 if e == 0 else 0.5)
                for e in range(3)]
    assert trainer.guard.rollbacks == 1
    assert [h["lr"] for h in history] == pytest.approx(expected, rel=1e-12)


def test_clipping_matches_torchs_clip_grad_norm():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    twin = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    twin.load_state_dict(net.state_dict())
    x = torch.randn(16, 5) * 10
    for model in (net, twin):
        (model(x) ** 2).sum().backward()
    expected_norm = torch.nn.utils.clip_grad_norm_(twin.parameters(), max_norm=0.5)
    guard = NumericalGuard(net.parameters(), device=torch.device("cpu"), capture=dict, restore=lambda s: None,
                           clip_grad_norm=0.5)
    guard.after_backward(torch.tensor(1.0), step=1)
    assert expected_norm > 0.5  # the test clips for real
    torch.testing.assert_close(guard.last_grad_norm, expected_norm)
    for mine, theirs in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad)
    assert guard.fault() is None
    assert total_grad_norm([torch.tensor([3.0]), torch.tensor([4.0])]).item() == pytest.approx(5.0)


def test_clip_grad_norm_reaches_training_from_the_command_line(tmp_path):
    from vaekit.training import checkpoint as ckpt
    from vaekit.cli import main

    assert main(["train", "digits", "--out", str(tmp_path / "run"), "--epochs", "1", "--hidden", "16",
                 "--latent-dim", "2", "--clip-grad-norm", "2.5", "--max-rollbacks", "1", "--no-progress",
                 "--device", "cpu"]) == 0
    train_config = ckpt.load_config(tmp_path / "run").train
    assert train_config.clip_grad_norm == 2.5 and train_config.max_rollbacks == 1
    assert math.isfinite(ckpt.read_metrics(tmp_path / "run")[0]["val_neg_elbo"])
    with pytest.raises(vaekit.ConfigError, match="clip_grad_norm must be a positive number"):
        small_config(vaekit.load_dataset("digits"), clip_grad_norm=-1.0)
