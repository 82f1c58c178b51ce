"""Devices and mixed precision: validation, autocast placement, bf16/fp16 training, device-independent checkpoints."""

from __future__ import annotations

import pytest
import torch

import vaekit
from vaekit.training import checkpoint as ckpt
from vaekit.training import distributed
from vaekit.api import make_run_config
from vaekit.cli import main
from vaekit.config import RunConfig, TrainConfig
from vaekit.errors import ConfigError
from vaekit.training.precision import MixedPrecision, check_precision
from vaekit.training.device import resolve_device
from vaekit.training.trainer import build_model, train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def small_config(data, **options):
    return make_run_config(data, latent_dim=4, hidden=(64,), batch_size=64, device="cpu", **options)


def test_precision_and_device_are_validated(digits):
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, fp16"):
        TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda"):
        TrainConfig(device="tpu")
    raw = small_config(digits).to_dict()
    raw["train"]["precision"] = "half"
    with pytest.raises(ConfigError, match="precision"):
        RunConfig.from_dict(raw)
    with pytest.raises(ConfigError, match="unknown precision"):
        check_precision("int8", torch.device("cpu"))


def test_device_selection_prefers_cuda_and_gives_each_rank_its_gpu(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    context = distributed.DistributedContext(rank=3, world_size=4, local_rank=1, backend="nccl")
    assert distributed.device_for("cuda", context) == torch.device("cuda", 1)
    assert distributed.backend_for(resolve_device("cuda")) == "nccl"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_is_one_line_exit_2(tmp_path, capsys):
    assert main(["train", "digits", "--out", str(tmp_path / "r"), "--device", "cuda", "--epochs", "1",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vaekit: error: device 'cuda' was asked for but PyTorch sees no CUDA GPU")


def test_only_the_networks_run_in_bf16(digits):
    model = build_model(small_config(digits))
    x = digits.x_train[:8]
    with MixedPrecision("bf16", torch.device("cpu")).autocast():
        assert model.encoder(x).dtype == torch.bfloat16  # autocast is on for the matrix products
        mu, logvar = model.posterior_params(x)
        terms = model.elbo_terms(x, generator=torch.Generator().manual_seed(0))
    assert mu.dtype == logvar.dtype == terms.reconstruction.dtype == terms.kl.dtype == torch.float32
    reference = model.elbo_terms(x, generator=torch.Generator().manual_seed(0))
    # bf16 keeps 8 significant bits: the ELBO of the same weights agrees to well under one percent.
    torch.testing.assert_close(terms.reconstruction, reference.reconstruction, rtol=0.01, atol=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_learns_like_fp32_and_keeps_float32_weights(tmp_path, digits, precision):
    _, reference = train(small_config(digits, epochs=4), digits, progress=False)
    model, history = train(small_config(digits, epochs=4, precision=precision), digits,
                           run_dir=tmp_path / precision, progress=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    gained = reference[0]["val_neg_elbo"] - reference[-1]["val_neg_elbo"]
    assert gained > 3
    assert abs(history[-1]["val_neg_elbo"] - reference[-1]["val_neg_elbo"]) < 0.1 * gained
    saved = ckpt.load_checkpoint(tmp_path / precision)["state"]["grad_scaler"]
    if precision == "fp16":
        assert saved["scale"] > 0 and "_growth_tracker" in saved  # fp16 scales its gradients, and saves the scaler
    else:
        assert saved is None


def test_fp16_resume_restores_the_gradient_scaler_exactly(tmp_path, digits):
    # A constant rate: the cosine schedule's horizon is the run's length, which the resume extends.
    fp16 = dict(precision="fp16", lr_schedule="constant")
    whole, _ = train(small_config(digits, epochs=3, **fp16), digits, progress=False)
    train(small_config(digits, epochs=1, **fp16), digits, run_dir=tmp_path / "cut", progress=False)
    resumed, _ = train(small_config(digits, epochs=3, **fp16), digits, run_dir=tmp_path / "cut",
                       resume=True, progress=False)
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)


def test_precision_reaches_the_estimator_and_the_command_line(tmp_path, digits):
    vae = vaekit.VAE(latent_dim=2, hidden=(16,), epochs=1, precision="bf16", device="cpu").fit(digits)
    assert vae.config_.train.precision == "bf16" and vae.get_params()["precision"] == "bf16"
    assert main(["train", "digits", "--out", str(tmp_path / "run"), "--latent-dim", "2", "--hidden", "16",
                 "--epochs", "1", "--precision", "bf16", "--no-progress"]) == 0
    assert vaekit.load(tmp_path / "run").config_.train.precision == "bf16"


@cuda
def test_cuda_training_and_loading_the_run_on_the_cpu(tmp_path, digits):
    model, history = train(make_run_config(digits, latent_dim=4, hidden=(64,), epochs=2, device="cuda",
                                           precision="bf16"), digits, run_dir=tmp_path / "gpu", progress=False)
    assert next(model.parameters()).device.type == "cuda"
    on_cpu = vaekit.load(tmp_path / "gpu", device="cpu")
    assert on_cpu.sample(4).shape == (4, 1, 8, 8)
    # The checkpoint resumes on the CPU too (generator states of another device are re-seeded, with a note).
    train(make_run_config(digits, latent_dim=4, hidden=(64,), epochs=3, device="cpu", precision="bf16"), digits,
          run_dir=tmp_path / "gpu", resume=True, progress=False)
