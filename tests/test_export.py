"""Exporting the decoder and encoder: ONNX run by onnxruntime, TorchScript and torch.export match PyTorch."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

import vaekit
from vaekit import ConfigError
from vaekit.cli import main
from vaekit.export import MissingDependencyError, export_model, run_exported

pytest.importorskip("onnxruntime", reason="the export tests need the 'export' extra: pip install 'vaekit[export]'")


@pytest.fixture(scope="module")
def vae(trained_run):
    return vaekit.load(trained_run)


@pytest.fixture(scope="module")
def conv_vae(digits):
    return vaekit.VAE(latent_dim=3, hidden=(8, 16), arch="conv", epochs=1, seed=0, device="cpu").fit(digits)


@pytest.fixture(scope="module")
def csv_vae(tmp_path_factory):
    """A model of standardized CSV columns, so outputs must come back in the data's own units."""
    rng = np.random.default_rng(0)
    rows = ["a,b,c"] + [f"{x:.4f},{50 * x + 1000:.4f},{rng.normal():.4f}" for x in rng.normal(size=200)]
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    path.write_text("\n".join(rows) + "\n")
    data = vaekit.load_dataset(str(path), as_table=False)  # standardized numeric array (a table run is refused)
    return vaekit.VAE(latent_dim=2, hidden=(16,), epochs=2, device="cpu").fit(data)


def _latents(n: int, dim: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vae", "conv_vae", "csv_vae"])
def test_onnx_decoder_matches_pytorch(model, request, tmp_path):
    estimator = request.getfixturevalue(model)
    path = tmp_path / "decoder.onnx"
    result = export_model(estimator, path)
    assert result.max_abs_error is not None and result.max_abs_error < 1e-4
    z = _latents(5, estimator.latent_dim_)  # another batch size than the export's: the batch axis is dynamic
    (onnx_out,) = run_exported(path, z)
    np.testing.assert_allclose(onnx_out, estimator.decode(z), rtol=1e-4, atol=1e-5)
    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert metadata["part"] == "decoder" and metadata["latent_dim"] == str(estimator.latent_dim_)


@pytest.mark.slow
def test_onnx_encoder_matches_pytorch(vae, digits, tmp_path):
    path = tmp_path / "encoder.onnx"
    export_model(vae, path, "encoder")
    x = digits.x_test[:9].numpy()
    mean, log_variance = run_exported(path, x)
    expected_mean, expected_variance = vae.encode(x)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.exp(log_variance), expected_variance, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_torchscript_and_torch_export_match_pytorch(vae, csv_vae, digits, tmp_path, suffix):
    for estimator in (vae, csv_vae):
        path = tmp_path / f"decoder{suffix}"
        export_model(estimator, path)
        z = _latents(3, estimator.latent_dim_)
        np.testing.assert_allclose(run_exported(path, z)[0], estimator.decode(z), rtol=1e-5, atol=1e-6)
    if suffix == ".pt":  # the shipped decoder holds the decoder's weights only
        import torch

        with warnings.catch_warnings():  # torch.jit.load is deprecated upstream
            warnings.simplefilter("ignore", DeprecationWarning)
            names = set(torch.jit.load(str(tmp_path / "decoder.pt")).state_dict())
        assert any("decoder" in n.split(".") for n in names)
        assert not any(module in n.split(".") for n in names for module in ("encoder", "mean_head", "logvar_head"))
    export_model(vae, tmp_path / f"encoder{suffix}", "encoder")
    mean, _ = run_exported(tmp_path / f"encoder{suffix}", digits.x_test[:4].numpy())
    np.testing.assert_allclose(mean, vae.transform(digits.x_test[:4].numpy()), rtol=1e-5, atol=1e-6)


def test_export_refuses_unknown_formats_and_parts(vae, tmp_path):
    with pytest.raises(ConfigError, match=".onnx"):
        export_model(vae, tmp_path / "decoder.h5")
    with pytest.raises(ConfigError, match="decoder, encoder"):
        export_model(vae, tmp_path / "x.pt", part="prior")


def test_missing_optional_package_says_how_to_install(vae, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    with pytest.raises(MissingDependencyError, match=r"onnxscript.*pip install 'vaekit\[export\]'"):
        export_model(vae, tmp_path / "decoder.onnx")
    assert main(["export", str(vae_run(vae, tmp_path)), "-o", str(tmp_path / "d.onnx")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'vaekit[export]'" in err and err.count("\n") == 1
    assert not (tmp_path / "d.onnx").exists()


def vae_run(estimator, tmp_path):
    run = tmp_path / "run"
    estimator.save(run)
    return run


@pytest.mark.slow
def test_cli_export(trained_run, tmp_path, capsys):
    assert main(["export", str(trained_run), "-o", str(tmp_path / "d.onnx"), "--encoder", str(tmp_path / "e.pt")]) == 0
    err = capsys.readouterr().err
    assert "parity check" in err and (tmp_path / "d.onnx").is_file() and (tmp_path / "e.pt").is_file()
    assert main(["export", str(trained_run), "-o", str(tmp_path / "d.bin")]) == 2
