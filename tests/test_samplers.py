"""The samplers of ``VAE.sample``: the ex-post Gaussian mixture against scikit-learn, its saved form (JSON +
safetensors, no pickle, tied to the weights), sampling through it for images and tables, and the CLI."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from sklearn.mixture import GaussianMixture

import vaekit
from vaekit.cli import main
from vaekit.errors import CheckpointError, ConfigError
from vaekit.generation import samplers
from vaekit.generation.samplers import GaussianMixtureSampler, fit_sampler, latent_codes, load_sampler, save_sampler
from vaekit.training import checkpoint as ckpt


@pytest.fixture(scope="module")
def fitted(trained_run, digits):
    """The shared tiny digits run with a gmm sampler fitted on its training split."""
    vae = vaekit.load(trained_run)
    x_train = digits.x_train.numpy()
    return vae, fit_sampler(vae, x_train, seed=0), x_train


def test_the_mixture_is_scikit_learns_fit_and_density(fitted, digits):
    vae, sampler, x_train = fitted
    codes = latent_codes(vae, x_train)
    np.testing.assert_allclose(codes, vae.transform(x_train), rtol=0, atol=0)  # one layer: the posterior means
    candidates = list(range(1, samplers.max_components_for(len(codes), codes.shape[1]) + 1))
    assert sorted(sampler.bic) == candidates and candidates[-1] == 20  # 1438 codes of 4 dimensions allow 20
    assert sampler.components == min(sampler.bic, key=sampler.bic.get)
    reference = GaussianMixture(sampler.components, covariance_type="full", reg_covar=sampler.reg_covar,
                                random_state=0).fit(codes)
    assert sampler.bic[sampler.components] == pytest.approx(reference.bic(codes), rel=1e-10)
    # vaekit.models.mixture runs scikit-learn's EM in another order of summation: equal up to rounding
    np.testing.assert_allclose(sampler.weights.numpy(), reference.weights_, rtol=1e-9)
    np.testing.assert_allclose(sampler.covariances.numpy(), reference.covariances_, rtol=1e-9, atol=1e-13)
    points = np.concatenate([latent_codes(vae, digits.x_test.numpy()), np.random.default_rng(0).normal(size=(50, 4))])
    np.testing.assert_allclose(sampler.log_prob(points), reference.score_samples(points), rtol=1e-10, atol=1e-10)


def test_draws_follow_the_mixture(fitted):
    _, sampler, _ = fitted
    z = sampler.sample_top(40_000, torch.Generator().manual_seed(0)).numpy()
    w, mu, cov = (t.numpy() for t in (sampler.weights, sampler.means, sampler.covariances))
    mean = (w[:, None] * mu).sum(0)
    second = (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).sum(0) - np.outer(mean, mean)
    spread = np.sqrt(np.diag(second))
    np.testing.assert_allclose(z.mean(0), mean, atol=0.03 * spread.max())
    np.testing.assert_allclose(np.cov(z.T), second, atol=0.05 * second.diagonal().max())


def test_sampling_through_the_mixture_is_seeded_and_shares_the_decoding(fitted):
    vae, sampler, _ = fitted
    a = vae.sample(16, sampler="gmm", seed=3)
    assert a.shape == (16, 1, 8, 8) and a.dtype == np.float32
    np.testing.assert_array_equal(a, vae.sample(16, sampler="gmm", seed=3))
    np.testing.assert_array_equal(a, vae.sample(16, sampler=sampler, seed=3))  # the object itself
    assert not np.array_equal(a, vae.sample(16, sampler="gmm", seed=4))
    assert not np.array_equal(a, vae.sample(16, seed=3))  # the prior gives other codes
    z = sampler.sample_latent(vae, 16, torch.Generator().manual_seed(3))  # the generator sample() seeds
    np.testing.assert_array_equal(a, vae.decode(z.numpy()))


def test_any_object_with_sample_latent_is_a_sampler_and_bad_ones_are_refused(fitted):
    vae, _, _ = fitted

    class Origin:
        kind = "origin"

        def sample_latent(self, vae, n, generator):
            return torch.zeros(n, vae.latent_dim_)

    np.testing.assert_array_equal(vae.sample(2, sampler=Origin()), vae.decode(np.zeros((2, 4))))
    with pytest.raises(ConfigError, match="fit_sampler"):
        _fresh(vae).sample(2, sampler="gmm")
    with pytest.raises(ConfigError, match="sample_latent"):
        vae.sample(2, sampler=42)


def _fresh(vae):
    """A copy of the estimator without its fitted samplers."""
    clone = vaekit.VAE()
    clone._set_fitted(vae.model_, vae.config_, vae.history_)
    return clone


def test_saved_sampler_is_json_and_safetensors_and_reads_back_bit_for_bit(fitted, trained_run, tmp_path):
    vae, sampler, _ = fitted
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    meta_path = save_sampler(sampler, run)
    tensor_path = run / "sampler_gmm.safetensors"
    assert meta_path == run / "sampler_gmm.json" and tensor_path.is_file()
    meta = json.loads(meta_path.read_text())  # plain JSON
    assert meta["kind"] == "gmm" and meta["components"] == sampler.components and meta["seed"] == 0
    assert meta["fit_size"] == sampler.fit_size and set(meta["bic"]) == {str(k) for k in sampler.bic}
    from vaekit.anomaly import model_fingerprint

    assert meta["model_fingerprint"] == model_fingerprint(vae)
    raw = tensor_path.read_bytes()
    header = struct.unpack("<Q", raw[:8])[0]
    assert raw[8:9] == b"{" and json.loads(raw[8:8 + header])["weights"]["dtype"] == "F64"  # safetensors, not pickle
    assert not raw.startswith(b"\x80") and b"torch._utils" not in raw
    with safe_open(str(tensor_path), framework="pt") as fh:
        assert set(fh.keys()) == {"weights", "means", "covariances", "scale_tril"}

    fresh = vaekit.load(run)
    loaded = load_sampler(run, fresh)
    for name in samplers.TENSOR_NAMES:
        original, back = getattr(sampler, name), getattr(loaded, name)
        assert back.dtype == torch.float64 and back.numpy().tobytes() == original.numpy().tobytes(), name
    assert loaded.bic == sampler.bic and loaded.model_fingerprint == sampler.model_fingerprint
    np.testing.assert_array_equal(fresh.sample(8, sampler="gmm", seed=1), vae.sample(8, sampler="gmm", seed=1))
    save_sampler(loaded, tmp_path / "again")  # the round trip is a fixed point
    assert (tmp_path / "again" / "sampler_gmm.safetensors").read_bytes() == raw


def test_a_sampler_for_other_weights_or_a_mismatched_file_is_refused(fitted, trained_run, tmp_path):
    vae, sampler, x_train = fitted
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    save_sampler(sampler, run)
    other = vaekit.load(run)
    with torch.no_grad():
        next(other.model_.parameters()).add_(0.01)
    ckpt.save_model(run, other.model_, other.config_)  # the run's weights change, the sampler stays
    with pytest.raises(CheckpointError, match="other weights.*fit-sampler"):
        load_sampler(run, vaekit.load(run))
    with pytest.raises(CheckpointError, match="other weights"):
        other.sample(2, sampler=sampler)
    vae_again = _fresh(vae)
    fit_sampler(vae_again, x_train[:400])
    vae_again.model_ = other.model_  # refitted in place: the estimator's sampler is stale
    with pytest.raises(CheckpointError, match="other weights"):
        vae_again.sample(2, sampler="gmm")

    second = tmp_path / "second"
    shutil.copytree(trained_run, second)
    save_sampler(fit_sampler(_fresh(vae), x_train[:400], seed=1), second)
    shutil.copy(second / "sampler_gmm.safetensors", run / "sampler_gmm.safetensors")  # another fit's tensors
    with pytest.raises(CheckpointError, match="not a valid vaekit gmm sampler"):
        load_sampler(run)
    (run / "sampler_gmm.json").unlink()
    with pytest.raises(CheckpointError, match="fit-sampler"):
        load_sampler(run)


def test_options_are_checked():
    with pytest.raises(ConfigError, match="unknown sampler"):
        fit_sampler(vaekit.VAE(), np.zeros((4, 4)), kind="flow")


def test_a_hierarchical_model_gets_the_mixture_on_its_top_layer(digits):
    vae = vaekit.VAE(latent_dim=4, upper_latent_dims=(2,), hidden=(32,), upper_hidden=(16,), epochs=1, seed=0,
                     device="cpu").fit(digits)
    x = digits.x_train.numpy()[:600]
    sampler = fit_sampler(vae, x, seed=0)
    assert sampler.layer == 1 and sampler.dim == 2
    generator = torch.Generator().manual_seed(0)
    means = vae.model_.posterior_means(vae._as_model_input(x), num_samples=100, generator=generator)[-1]
    np.testing.assert_allclose(latent_codes(vae, x), means.detach().double().numpy(), rtol=1e-6, atol=1e-7)
    assert vae.sample(5, sampler="gmm", seed=0).shape == (5, 1, 8, 8)
    z = sampler.sample_latent(vae, 7, torch.Generator().manual_seed(0))
    assert z.shape == (7, 4)  # down the chain to z_1


def test_a_table_run_samples_a_dataframe_through_the_mixture():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame({"age": rng.integers(18, 90, n), "income": rng.lognormal(10, 0.5, n).round(2),
                          "city": rng.choice(["rome", "paris", "oslo"], n), "member": rng.choice(["yes", "no"], n)})
    vae = vaekit.VAE(epochs=3, latent_dim=3, hidden=(32,), seed=0).fit(frame)
    fit_sampler(vae, frame, seed=0)
    prior, gmm = vae.sample(50, seed=2), vae.sample(50, sampler="gmm", seed=2)
    assert isinstance(gmm, pd.DataFrame) and len(gmm) == 50
    assert list(gmm.columns) == list(prior.columns) and list(gmm.dtypes) == list(prior.dtypes)
    assert set(gmm["city"].dropna()) <= {"rome", "paris", "oslo"}
    pd.testing.assert_frame_equal(gmm, vae.sample(50, sampler="gmm", seed=2))


def test_cli_fit_sampler_then_sample_with_it(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["sample", str(run), "--sampler", "gmm", "-o", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"run `vaekit fit-sampler {run}` first" in err
    assert not (tmp_path / "g.png").exists()

    assert main(["fit-sampler", str(run)]) == 0
    out = capsys.readouterr().out
    assert "components" in out and "BIC" in out and "digits:train" in out
    meta = json.loads((run / "sampler_gmm.json").read_text())
    assert meta["fit_size"] == len(vaekit.load_dataset("digits").x_train)
    assert f"{meta['components']} component" in out
    assert main(["sample", str(run), "--sampler", "gmm", "-n", "16", "-o", str(tmp_path / "g.png")]) == 0
    assert Image.open(tmp_path / "g.png").size[0] > 8 * 4
    assert main(["sample", str(run), "--sampler", "gmm", "-n", "16", "--seed", "5", "-o", str(tmp_path / "g.npy")]) == 0
    vae = vaekit.load(run)
    load_sampler(run, vae)
    np.testing.assert_array_equal(np.load(tmp_path / "g.npy"), vae.sample(16, sampler="gmm", seed=5))
    assert isinstance(vae.samplers_["gmm"], GaussianMixtureSampler)


def test_the_benchmark_runs_quick_and_writes_every_number(tmp_path, capsys):
    from conftest import benchmark_module

    with benchmark_module("samplers") as bench:
        out = tmp_path / "samplers.json"
        assert bench.main(["--quick", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert {"machine", "settings", "test_images", "summary", "results"} <= set(result)
    assert [row["sampler"] for row in result["summary"]] == ["prior", "gmm", "gmm-draw", "reconstructions"]
    for row in result["summary"]:
        assert 0 < row["confidence"] <= 1 and 0 <= row["class_entropy"] <= np.log(10) + 1e-9 and row["nn_test"] > 0
        assert row["sampler"] in table
    assert result["results"][0]["samplers"]["gmm"]["components"] >= 1
