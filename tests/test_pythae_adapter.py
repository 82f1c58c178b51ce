"""benchmarks/pythae_adapter.py gives pythae's own densities, and benchmarks/pythae_side_by_side.py runs end to end."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import benchmark_module

pytest.importorskip("pythae", reason="the side-by-side benchmark compares with pythae: pip install -e '.[bench]'")


def _models():
    from pythae.models import IWAE, VAE, VAMP, IWAEConfig, VAEConfig, VAMPConfig

    with benchmark_module("pythae_adapter") as adapter:
        # 784-H-20 ReLU as in the brief, and likelihood.py's two-hidden-layer tanh MLP at a smaller width.
        for cls, config_cls, activation, hidden, extra in [
                (VAE, VAEConfig, "relu", (64,), {}),
                (IWAE, IWAEConfig, "tanh", (48, 32), {"number_samples": 5}),
                (VAMP, VAMPConfig, "tanh", (48, 32), {"number_components": 30})]:
            torch.manual_seed(0)
            encoder, decoder = adapter.pythae_networks(hidden, 20, activation)
            config = config_cls(input_dim=(1, 28, 28), latent_dim=20, reconstruction_loss="bce", **extra)
            model = cls(config, encoder=encoder, decoder=decoder)
            with torch.no_grad():  # away from the initialization, and some pseudo-input pixels clipped to 0 and 1
                for p in model.parameters():
                    p.add_(0.02 * torch.randn_like(p))
                if cls is VAMP:
                    model.pseudo_inputs[0].bias.add_(torch.randn(784))
            yield adapter, model, activation


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-6), (torch.float32, 5e-3)])
def test_adapter_gives_pythaes_log_densities_at_the_same_z(digits, dtype, tolerance):
    x = torch.bernoulli(torch.rand(32, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    for adapter, model, activation in _models():
        ours = adapter.vaekit_model_from_pythae(model, activation)
        networks = sum(p.numel() for p in [*model.encoder.parameters(), *model.decoder.parameters()])
        # a VAMP's pseudo-inputs: pythae's Linear(components, pixels) holds a redundant bias, vaekit one per pixel
        pseudo = model.number_components * 784 if hasattr(model, "pseudo_inputs") else 0
        assert sum(p.numel() for p in ours.parameters()) == networks + pseudo
        differences = adapter.compare_densities(model, ours, x, num_samples=3, dtype=dtype)
        assert set(differences) == {"log_px_z", "log_qz_x", "log_pz"}
        # values of hundreds of nats (log p(x|z)) agree to float rounding
        assert max(differences.values()) < tolerance, (type(model).__name__, differences)


def test_adapter_feeds_vaekits_importance_sampling(digits):
    """vaekit's log_likelihood on the converted model equals the importance-sampling estimate computed from pythae's
    own densities at the same draws (vaekit's per-example noise streams, replayed)."""
    from vaekit.evaluation.likelihood import NOISE_BLOCK, _example_seed, log_likelihood

    k = 64
    x = torch.bernoulli(torch.rand(6, 1, 28, 28), generator=torch.Generator().manual_seed(2)).double()
    for adapter, model, activation in _models():
        ours = adapter.vaekit_model_from_pythae(model, activation).double()
        theirs = model.double().eval()
        if hasattr(theirs, "idle_input"):
            theirs.idle_input = theirs.idle_input.double()
        estimate = log_likelihood(ours, x, num_importance_samples=k, seed=0, compile=False).double()
        with torch.no_grad():
            out = theirs.encoder(x)
            mu, std = out.embedding, torch.exp(0.5 * out.log_covariance)
            eps = torch.stack([torch.randn(min(k, NOISE_BLOCK), 20, generator=torch.Generator().manual_seed(
                _example_seed(0, i)))[:k] for i in range(len(x))], dim=1).double()
            d = adapter.pythae_densities(theirs, x, mu + std * eps)
        plain = torch.logsumexp(d["log_px_z"] + d["log_pz"] - d["log_qz_x"], 0) - torch.log(torch.tensor(float(k)))
        # log_likelihood returns float32: agreement to its rounding
        torch.testing.assert_close(estimate, plain.double(), rtol=1e-6, atol=1e-3)


def test_side_by_side_quick_runs_end_to_end_and_resumes(fashion_mnist, tmp_path, capsys):
    with benchmark_module("pythae_side_by_side") as bench:
        out = tmp_path / "result.json"
        args = ["--quick", "--runs", str(tmp_path / "runs"), "--json", str(out)]
        assert bench.main(args) == 0
        table = capsys.readouterr().out
        summary = json.loads(out.read_text())
        assert summary["settings"]["importance_samples"] == 50 and summary["settings"]["epochs"] == 1
        assert {"cpu", "cores", "torch"} <= set(summary["machine"]) and summary["pythae"]
        assert list(summary["results"]) == [name for name, _ in bench.ROWS]
        for name, row in summary["results"].items():
            assert row["importance_samples"] == 50 and row["num_examples"] == 200
            assert 100 < row["nll"] < 700 and row["nll"] <= row["neg_elbo"] + 1e-3, name
            assert row["train_seconds"] > 0
            if name.startswith("pythae"):
                assert max(row["adapter_max_abs_diff_float64"].values()) < 1e-6
            assert row["description"] in table
        # each library's own schedule: vaekit's defaults, and pythae's trainer given the nearest it allows
        results = summary["results"]
        assert results["vaekit-iwae"]["options"]["lr_schedule"] == "constant"
        assert results["vaekit-iwae-defaults"]["options"]["lr_schedule"] == "cosine"
        assert results["vaekit-iwae-vamp-defaults"]["options"]["prior"] == "vamp"
        assert results["pythae-iwae-schedule"]["options"]["scheduler_cls"] == "CosineAnnealingLR"
        assert "scheduler_cls" not in results["pythae-iwae"]["options"]
        # a second run takes every row from the cache
        assert bench.main(args) == 0
        assert "cached" in capsys.readouterr().err
        assert json.loads(out.read_text())["results"] == summary["results"]
        # one row run alone keeps the others from the results file of the same settings...
        assert bench.main(args + ["--only", "vaekit-elbo"]) == 0
        assert "kept from" in capsys.readouterr().err
        assert json.loads(out.read_text())["results"] == summary["results"]
        # ...but not from a file of other settings
        assert bench.main(args + ["--only", "vaekit-elbo", "-K", "20"]) == 0
        capsys.readouterr()
        assert list(json.loads(out.read_text())["results"]) == ["vaekit-elbo"]
