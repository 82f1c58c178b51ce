"""Training: learning happens on real data, resume equals an uninterrupted run, schedules, early stopping."""

from __future__ import annotations

import dataclasses
import math
import os
import signal

import numpy as np
import pytest
import torch

import vaekit
from vaekit.training import checkpoint as ckpt
from vaekit.api import make_run_config
from vaekit.config import ModelConfig, RunConfig, TrainConfig
from vaekit.evaluation.likelihood import elbo
from vaekit.training.device import resolve_device
from vaekit.training.trainer import LR_WARMUP_FRACTION, Trainer, build_model, learning_rate, train


def small_config(dataset, **train):
    options = dict(epochs=4, batch_size=64, seed=3, device="cpu")
    options.update(train)
    return make_run_config(dataset, latent_dim=4, hidden=(32,), **options)


def test_training_on_digits_lowers_the_validation_elbo_by_a_wide_margin(digits):
    config = small_config(digits, epochs=15, lr=3e-3, lr_schedule="constant")
    untrained = elbo(build_model(config), digits.x_test).neg_elbo.mean().item()
    model, history = train(config, digits, progress=False)
    trained = history[-1]["val_neg_elbo"]
    # An untrained decoder sits near 64 * log 2 = 44 nats; the pixel-wise mean image alone reaches ~30.
    # A model that learned nothing from z cannot get far below that.
    assert untrained > 40
    assert trained < 25.5, history
    assert history[-1]["val_reconstruction"] + history[-1]["val_kl"] == pytest.approx(trained, rel=1e-6)
    assert all(h["val_kl"] > 0 for h in history)


def test_kl_warmup_rises_linearly(digits):
    config = small_config(digits, epochs=3, warmup_epochs=2, kl_weight=0.5)
    _, history = train(config, digits, progress=False)
    weights = [h["kl_weight"] for h in history]
    assert weights[0] == pytest.approx(0.25) and weights[1] == pytest.approx(0.5) and weights[2] == 0.5


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("binarize", ["none", "dynamic"])
def test_resume_from_an_epoch_equals_an_uninterrupted_run(tmp_path, binarize):
    """Extending a finished 2-epoch run to 4 epochs; with a constant learning rate (a cosine schedule spans
    the run's epochs, so a longer run has another schedule) this is the uninterrupted 4-epoch run."""
    data = vaekit.load_dataset("digits", binarize=binarize)
    config = small_config(data, epochs=4, lr_schedule="constant")
    full, _ = train(config, data, run_dir=tmp_path / "full", progress=False)

    short = make_run_config(data, latent_dim=4, hidden=(32,), epochs=2, batch_size=64, seed=3, device="cpu",
                            lr_schedule="constant")
    train(short, data, run_dir=tmp_path / "split", progress=False)
    resumed, history = train(config, data, run_dir=tmp_path / "split", resume=True, progress=False)
    assert len(history) == 4
    for name, value in _weights(full).items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)
    timing = {"seconds", "examples_per_second"}
    strip = lambda records: [{k: v for k, v in r.items() if k not in timing} for r in records]  # noqa: E731
    assert strip(ckpt.read_metrics(tmp_path / "split")) == strip(ckpt.read_metrics(tmp_path / "full"))


def test_resume_mid_epoch_after_an_interrupt(tmp_path, digits):
    """Ctrl-C (a real SIGINT) inside an epoch saves a checkpoint at that step; resuming ends bit-identical
    (with the cosine learning-rate schedule, which depends on the step)."""
    config = small_config(digits, epochs=2, checkpoint_every=5, lr_schedule="cosine")
    full, _ = train(config, digits, run_dir=tmp_path / "full", progress=False)

    model = build_model(config)
    trainer = Trainer(model, digits, config, run_dir=tmp_path / "cut", progress=False)
    original_step = trainer.optimizer.step
    calls = {"n": 0}

    def interrupting_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 30:  # inside epoch 2 (23 steps per epoch)
            os.kill(os.getpid(), signal.SIGINT)
        return original_step(*args, **kwargs)

    trainer.optimizer.step = interrupting_step
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    pointer = ckpt.read_pointer(tmp_path / "cut")
    assert pointer["global_step"] == 30 and pointer["epoch"] == 1

    resumed, _ = train(config, digits, run_dir=tmp_path / "cut", resume=True, progress=False)
    for name, value in _weights(full).items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)


def test_cosine_learning_rate_schedule_matches_torch_scheduler(digits):
    """The rate each optimizer step used, against torch's schedulers: LinearLR (warm-up), then CosineAnnealingLR."""
    config = small_config(digits, epochs=3, lr=2e-3, lr_schedule="cosine")
    trainer = Trainer(build_model(config), digits, config, progress=False)
    used, original_step = [], trainer.optimizer.step

    def recording_step(*args, **kwargs):
        used.append(trainer.optimizer.param_groups[0]["lr"])
        return original_step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.fit()
    assert len(used) == 3 * math.ceil(len(digits.x_train) / 64)
    warmup = round(LR_WARMUP_FRACTION * len(used))
    assert warmup >= 2
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-3)
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, total_iters=warmup - 1),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=len(used) - warmup)], milestones=[warmup])
    expected = []
    for _ in used:
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert used == pytest.approx(expected, rel=1e-6, abs=1e-12)
    constant = dataclasses.replace(config.train, lr_schedule="constant")
    assert {learning_rate(constant, step, 100) for step in range(100)} == {2e-3}


def test_default_learning_rate_scales_with_the_square_root_of_the_batch_size():
    assert TrainConfig().batch_size == 256 and TrainConfig().lr == pytest.approx(6e-3)
    assert TrainConfig(batch_size=64).lr == pytest.approx(3e-3)
    assert TrainConfig(batch_size=64, lr=1e-3).lr == 1e-3
    assert RunConfig.from_dict(RunConfig(ModelConfig((4,)), train=TrainConfig(batch_size=1024)).to_dict()).train.lr == (
        pytest.approx(1.2e-2))


def test_resume_without_a_checkpoint_starts_over(tmp_path, digits):
    config = small_config(digits, epochs=1)
    a, _ = train(config, digits, progress=False)
    (tmp_path / "empty").mkdir()
    b, _ = train(config, digits, run_dir=tmp_path / "empty", resume=True, progress=False)
    for name, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], value, rtol=0, atol=0)


def test_early_stopping_keeps_the_best_weights(tmp_path, digits):
    # A learning rate this high makes validation worse after a few epochs.
    config = small_config(digits, epochs=30, lr=0.05, patience=2)
    model, history = train(config, digits, run_dir=tmp_path, progress=False)
    assert len(history) < 30
    best = min(h["val_neg_elbo"] for h in history)
    assert history[-1]["val_neg_elbo"] > best
    saved, _ = ckpt.load_model(tmp_path)
    val = elbo(saved, digits.x_test, seed=config.train.seed).neg_elbo.mean().item()
    assert val == pytest.approx(best, rel=1e-5)


def test_run_directory_contents(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.json", "model.safetensors", "checkpoint.json", "checkpoints", "metrics.jsonl",
            "loss_curve.png"} <= names
    assert not [p for p in trained_run.rglob("*.tmp")]
    records = ckpt.read_metrics(trained_run)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r["val_neg_elbo"]) for r in records)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(vaekit.ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(vaekit.ConfigError):
        resolve_device("tpu")


@pytest.mark.slow
def test_default_settings_learn_fashion_mnist_faster_than_the_classic_ones(fashion_mnist):
    """One epoch at vaekit's defaults (lr 3e-3, cosine) against Adam 1e-3 at a constant rate (pytorch/examples)."""
    data = vaekit.load_dataset("fashion-mnist", binarize="dynamic")
    results = {}
    for name, options in {"defaults": {}, "classic": {"lr": 1e-3, "lr_schedule": "constant"}}.items():
        config = make_run_config(data, latent_dim=20, hidden=(400,), arch="mlp", epochs=1, device="cpu", **options)
        results[name] = train(config, data, progress=False)[1][0]["val_neg_elbo"]
    # Seed 0: 261.1 nats for the classic settings, 259.7 for the defaults (a one-epoch cosine gains least;
    # over 10 epochs the defaults reach the classic 10-epoch value in about 6, see benchmarks/speed.py).
    assert results["defaults"] < results["classic"] - 0.5, results


def test_short_fashion_mnist_run_learns(fashion_mnist):
    """One epoch of the 784-400-20 MLP on dynamically binarized Fashion-MNIST."""
    data = vaekit.load_dataset("fashion-mnist", binarize="dynamic")
    config = make_run_config(data, latent_dim=20, hidden=(400,), arch="mlp", epochs=1, batch_size=128,
                             device="cpu")
    untrained = elbo(build_model(config), data.split("test")[:2000]).neg_elbo.mean().item()
    _, history = train(config, data, progress=False)
    assert untrained > 500  # 784 * log 2 = 543 nats for a decoder that knows nothing
    assert history[0]["val_neg_elbo"] < 300, history


def test_adam_beta2_reaches_the_optimizer_and_is_validated(digits):
    from vaekit.training.trainer import make_optimizer

    config = make_run_config(digits, latent_dim=2, hidden=(8,), epochs=1, adam_beta2=0.999, device="cpu")
    optimizer = make_optimizer(build_model(config), config.train, torch.device("cpu"))
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    with pytest.raises(vaekit.ConfigError, match="adam_beta2"):
        make_run_config(digits, adam_beta2=1.0)


def test_perturbed_training_draws_replacements_on_the_data_grid(digits):
    from vaekit.training.trainer import Trainer, build_model

    def grid(dataset, **options):
        config = make_run_config(dataset, latent_dim=2, hidden=(8,), epochs=1, perturb_rate=0.2, device="cpu",
                                 **options)
        return Trainer(build_model(config), dataset, config, progress=False).perturb_levels

    assert grid(vaekit.load_dataset("digits", binarize="dynamic")) is None  # intensities, binarized afterwards
    assert grid(vaekit.load_dataset("digits", binarize="static")) == 2
    assert grid(digits, likelihood="discretized-logistic") == 17  # digits hold 17 grey levels
    assert grid(digits) is None
    real = vaekit.load_dataset("digits")
    real.config.kind = "real"
    with pytest.raises(vaekit.ConfigError, match="holds values outside"):
        grid(real)
    with pytest.raises(vaekit.ConfigError, match="perturb_rate must be in"):
        make_run_config(digits, perturb_rate=1.0)


def test_a_model_trained_on_perturbed_data_learns_the_noise(digits):
    """Ren et al.'s background model: trained with a share of random values, it gives noise a far higher
    likelihood than the clean model does, and the clean test data a lower one."""
    options = dict(latent_dim=4, hidden=(64,), epochs=15, binarize="dynamic", seed=0, device="cpu")
    clean = vaekit.VAE(**options).fit(digits.x_train.numpy())
    background = vaekit.VAE(perturb_rate=0.3, **options).fit(digits.x_train.numpy())
    assert background.config_.train.perturb_rate == 0.3
    noise = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(5)).numpy()
    test = digits.x_test.numpy()
    nll = {name: {what: -vae.score_samples(x, num_importance_samples=20).mean() for what, x in
                  (("noise", noise), ("test", test))} for name, vae in (("clean", clean), ("background", background))}
    assert nll["background"]["noise"] < nll["clean"]["noise"] - 5, nll
    assert nll["background"]["test"] > nll["clean"]["test"] + 1, nll


def test_validation_runs_on_a_schedule_that_scales_with_the_run(tmp_path):
    """Long runs of short epochs validate at every logged epoch (about 20 times, always the first and the last);
    the other rows say None, and the loss curve, `vaekit info` and the last record read the validated ones."""
    import math

    import numpy as np

    import vaekit
    from vaekit.cli import main
    from vaekit.plots import loss_curve_figure

    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    vae = vaekit.VAE(epochs=120, batch_size=64, hidden=(8,), device="cpu", seed=0).fit(x)
    validated = [h["epoch"] for h in vae.history_ if h["val_neg_elbo"] is not None]
    logged = math.ceil(120 / 20)
    assert validated == sorted({1, 120, *range(logged, 121, logged)})
    assert all(math.isfinite(vae.history_[e - 1]["val_neg_elbo"]) for e in validated)
    assert len(loss_curve_figure(vae.history_).axes[0].lines[1].get_xdata()) == len(validated)
    short = vaekit.VAE(epochs=30, batch_size=64, hidden=(8,), device="cpu").fit(x)
    assert all(h["val_neg_elbo"] is not None for h in short.history_)  # short runs: every epoch
    patient = vaekit.VAE(epochs=60, batch_size=64, hidden=(8,), device="cpu", patience=1000).fit(x)
    assert all(h["val_neg_elbo"] is not None for h in patient.history_)  # --patience counts validated epochs
    np.save(tmp_path / "x.npy", x)
    assert main(["train", str(tmp_path / "x.npy"), "--out", str(tmp_path / "run"), "--epochs", "60",
                 "--batch-size", "64", "--hidden", "8", "--no-progress"]) == 0
    assert main(["info", str(tmp_path / "run")]) == 0


def test_a_fresh_run_starts_its_decoder_at_the_training_datas_marginal(digits):
    """train() hands the trainer a fresh model, whose output bias becomes the logit of the training rows' mean
    (from a sample of at most MARGINAL_SAMPLE_ROWS rows; digits has fewer, so all of them)."""
    from vaekit.training import trainer as trainer_module

    config = small_config(digits, epochs=1)
    model = build_model(config)
    Trainer(model, digits, config, progress=False, initialize_output=True)
    rows = digits.split("train", units="model").double()
    expected = torch.logit(rows.mean(0).clamp(1e-3, 1 - 1e-3)).reshape(-1)
    last = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.testing.assert_close(last.bias.double(), expected, atol=1e-5, rtol=0)
    assert len(rows) < trainer_module.MARGINAL_SAMPLE_ROWS
    # A model handed over as it is (resumed, or trained further) keeps its bias.
    untouched = build_model(config)
    before = _weights(untouched)
    Trainer(untouched, digits, config, progress=False)
    assert all(torch.equal(before[k], v) for k, v in untouched.state_dict().items())


def test_output_init_chooses_where_the_decoder_starts(digits):
    from vaekit.training.trainer import starts_at_the_marginal

    def starts(**options):
        return starts_at_the_marginal(make_run_config(digits, latent_dim=2, hidden=(8,), epochs=1, **options))

    assert not starts() and starts(prior="vamp") and starts(output_init="marginal")
    assert not starts(prior="vamp", output_init="pytorch")
    with pytest.raises(vaekit.ConfigError, match="output_init must be one of auto, marginal, pytorch"):
        make_run_config(digits, output_init="data")
    # The estimator passes it on, and a run directory keeps it.
    vae = vaekit.VAE(latent_dim=2, hidden=(8,), epochs=1, output_init="marginal", device="cpu").fit(digits)
    assert vae.config_.train.output_init == "marginal" and vae.get_params()["output_init"] == "marginal"


def test_a_vamp_prior_with_a_tanh_network_does_not_collapse(digits):
    """From a zero output bias the first steps moved every posterior by the same few units to draw the average
    image; the tanh encoder saturated there and, the pseudo-inputs following the data, the KL stayed at 0.01
    nats for good. Started at the data's marginal (output_init "auto" under the VampPrior), the same run uses
    its code; with PyTorch's initialization it still collapses."""
    data = vaekit.load_dataset("digits", binarize="dynamic")
    vae = vaekit.VAE(arch="mlp", hidden=(200, 200), latent_dim=50, activation="tanh", prior="vamp",
                     vamp_components=100, epochs=3, warmup_epochs=1, seed=0, device="cpu").fit(data)
    assert vae.history_[-1]["val_kl"] > 0.5, vae.history_
    collapsed = vaekit.VAE(**{**vae.get_params(), "output_init": "pytorch"}).fit(data)
    assert collapsed.history_[-1]["val_kl"] < 0.1, collapsed.history_


def test_the_marginal_start_is_logged_and_a_resumed_run_keeps_its_checkpoints_weights(tmp_path, digits):
    config = small_config(digits, epochs=1, output_init="marginal")
    messages: list[str] = []
    first, _ = train(config, digits, run_dir=tmp_path / "run", progress=False, log=messages.append)
    rows = len(digits.split("train"))
    assert f"decoder output bias: the marginal of {rows:,} training rows (output-init marginal)" in messages
    longer = small_config(digits, epochs=2, output_init="marginal")
    messages.clear()
    train(longer, digits, run_dir=tmp_path / "run", resume=True, progress=False, log=messages.append)
    assert not any("decoder output bias" in m for m in messages), messages  # the checkpoint's weights, not a new start


def test_a_table_has_no_marginal_start_and_says_so():
    import pandas as pd

    frame = pd.DataFrame({"x": np.linspace(0.0, 1.0, 60), "c": ["a", "b", "c"] * 20})
    data = vaekit.data.as_dataset(frame)
    config = make_run_config(data, latent_dim=2, hidden=(8,), epochs=1, output_init="marginal", device="cpu")
    assert not build_model(config).likelihood.has_marginal
    messages: list[str] = []
    train(config, data, progress=False, log=messages.append)
    assert any("keeps PyTorch's start: the table likelihood" in m for m in messages), messages


def test_the_run_directory_is_written_after_the_first_and_last_epoch_and_on_a_time_schedule(tmp_path, monkeypatch):
    """End-of-epoch checkpoints (with the weights and metrics files) after the first and the last epoch and at
    most every CHECKPOINT_INTERVAL_S between them; every epoch with --checkpoint-every. The files written last
    hold the last epoch, and a run that crashes between checkpoints resumes from the last one to the unbroken
    run's weights."""
    from vaekit.cli import main
    from vaekit.training import trainer as trainer_module

    x = np.random.default_rng(0).normal(size=(96, 3)).astype(np.float32)
    saved: list[int] = []
    real_save = ckpt.save_checkpoint

    def counting(run_dir, **kwargs):
        saved.append(kwargs["state"]["epoch"])
        return real_save(run_dir, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", counting)
    options = dict(epochs=6, batch_size=32, hidden=(8,), device="cpu", seed=0)
    monkeypatch.setattr(trainer_module, "CHECKPOINT_INTERVAL_S", math.inf)
    unbroken = vaekit.VAE(**options).fit(x, run_dir=tmp_path / "sparse")
    assert saved == [1, 6]
    assert [m["epoch"] for m in ckpt.read_metrics(tmp_path / "sparse")] == [1, 2, 3, 4, 5, 6]
    weights = ckpt.load_tensors(tmp_path / "sparse" / ckpt.MODEL_FILE)
    for name, value in unbroken.model_.state_dict().items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=0)

    # a crash at the end of epoch 4, before anything is written: the newest checkpoint is epoch 1's
    real_end = trainer_module.Trainer._end_epoch

    def crashing(self, *args):
        if self.epoch == 3:
            raise RuntimeError("simulated crash")
        return real_end(self, *args)

    saved.clear()
    monkeypatch.setattr(trainer_module.Trainer, "_end_epoch", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        vaekit.VAE(**options).fit(x, run_dir=tmp_path / "crashed")
    assert saved == [1]
    monkeypatch.setattr(trainer_module.Trainer, "_end_epoch", real_end)
    resumed = vaekit.VAE(**options).fit(x, run_dir=tmp_path / "crashed", resume=True)
    assert saved == [1, 6]
    for name, value in unbroken.model_.state_dict().items():
        torch.testing.assert_close(resumed.model_.state_dict()[name], value)

    saved.clear()
    np.save(tmp_path / "x.npy", x)
    assert main(["train", str(tmp_path / "x.npy"), "--out", str(tmp_path / "asked"), "--epochs", "6", "--batch-size",
                 "32", "--hidden", "8", "--checkpoint-every", "1000", "--no-progress", "--no-detector"]) == 0
    assert saved == [1, 2, 3, 4, 5, 6]
