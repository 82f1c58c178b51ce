"""The scikit-learn style API."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import vaekit
from vaekit import DataError


@pytest.fixture(scope="module")
def vae(trained_run):
    return vaekit.load(trained_run)


def test_shapes_of_everything(vae, digits):
    x = digits.x_test[:10].numpy()
    assert vae.transform(x).shape == (10, 4)
    mean, var = vae.encode(x)
    assert (var > 0).all()
    assert vae.decode(mean).shape == (10, 1, 8, 8)
    assert vae.sample(5).shape == (5, 1, 8, 8)
    assert vae.reconstruct(x).shape == (10, 1, 8, 8)
    assert vae.sample_posterior(x, num_samples=3).shape == (3, 10, 4)
    scores = vae.score_samples(x, num_importance_samples=20)
    assert scores.shape == (10,) and np.isfinite(scores).all()
    assert vae.n_features_in_ == 64 and vae.input_shape_ == (1, 8, 8)


def test_inputs_in_other_layouts(vae, digits):
    x = digits.x_test[:6].numpy()
    expected = vae.transform(x)
    np.testing.assert_allclose(vae.transform(x.reshape(6, 64)), expected, rtol=1e-6)
    np.testing.assert_allclose(vae.transform(x[:, 0]), expected, rtol=1e-6)
    np.testing.assert_allclose(vae.transform((x * 255).round().astype(np.uint8)), vae.transform((x * 255).round() / 255),
                               rtol=1e-5, atol=1e-6)


def test_samples_are_seeded_and_bounded(vae):
    a, b, c = vae.sample(16, seed=1), vae.sample(16, seed=1), vae.sample(16, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    drawn = vae.sample(16, seed=1, sample_output=True)
    assert set(np.unique(drawn)) <= {0.0, 1.0}


def test_fit_on_plain_arrays_and_clone():
    rng = np.random.default_rng(0)
    x = (rng.random((300, 12)) < 0.3).astype(np.float32)
    est = vaekit.VAE(latent_dim=2, hidden=(16,), epochs=2, device="cpu")
    assert clone(est).get_params() == est.get_params()
    est.fit(x)
    assert est.config_.model.likelihood == "bernoulli"
    assert len(est.history_) == 2
    assert est.transform(x).shape == (300, 2)
    assert np.isfinite(est.score(x))


def test_real_valued_data_comes_back_in_original_units(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(1000.0, 50.0, size=(500, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    data = vaekit.load_dataset(str(tmp_path / "x.npy"))
    vae = vaekit.VAE(latent_dim=2, hidden=(16,), epochs=3, device="cpu").fit(data)
    assert vae.config_.model.likelihood == "gaussian-learned"
    recon = vae.reconstruct(x[:50])
    assert abs(recon.mean() - 1000.0) < 50.0  # decoded in the data's own units, not standardized ones
    vae.save(tmp_path / "run")
    again = vaekit.load(tmp_path / "run")
    np.testing.assert_array_equal(again.reconstruct(x[:50]), recon)


def test_not_fitted_and_bad_inputs(vae):
    with pytest.raises(NotFittedError):
        vaekit.VAE().transform(np.zeros((1, 4)))
    with pytest.raises(DataError, match="expects \\(1, 8, 8\\)"):
        vae.transform(np.zeros((3, 10)))
    with pytest.raises(DataError, match="NaN or infinite"):
        vae.transform(np.full((2, 64), np.nan))
    with pytest.raises(DataError, match="latent vectors must have shape"):
        vae.decode(np.zeros((2, 7)))
    with pytest.raises(DataError, match="must hold numbers"):
        vae.transform(np.array([["a"] * 64]))
    with pytest.raises(vaekit.ConfigError, match="likelihood must be one of"):
        vaekit.VAE(likelihood="poisson", epochs=1).fit(np.random.default_rng(0).random((20, 4)))


def test_evaluate_matches_score_samples_and_reports_in_original_units(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(1000.0, 50.0, size=(300, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    vae = vaekit.VAE(latent_dim=2, hidden=(16,), epochs=2, device="cpu").fit(vaekit.load_dataset(str(tmp_path / "x.npy")))
    result = vae.evaluate(x[:40], num_importance_samples=30, seed=2)
    np.testing.assert_allclose(-result.per_example["nll"], vae.score_samples(x[:40], 30, seed=2), rtol=1e-6)
    assert result.nll == pytest.approx(-vae.score_samples(x[:40], 30, seed=2).mean(), rel=1e-6)
    # A density in original units: standardizing by ~50 per column moves log p by about -3 log 50.
    shift = float(np.log(np.asarray(vae.config_.data.standardize_std)).sum())
    assert shift == pytest.approx(3 * np.log(50.0), abs=0.3)
    assert result.neg_elbo == pytest.approx(result.reconstruction + result.kl)


def test_new_model_options_round_trip_through_the_estimator(tmp_path):
    data = vaekit.load_dataset("digits", binarize="static", binarize_threshold=0.5)
    est = vaekit.VAE(latent_dim=6, hidden=(32,), upper_latent_dims=(3,), upper_hidden=(16,), prior="vamp",
                     vamp_components=8, objective="iwae", adam_beta2=0.999, epochs=1, device="cpu")
    assert clone(est).get_params() == est.get_params()
    est.fit(data)
    assert est.config_.train.objective_samples == 5 and est.config_.model.upper_latent_dims == (3,)
    est.save(tmp_path / "run")
    again = vaekit.load(tmp_path / "run")
    for name in ("latent_dim", "hidden", "upper_latent_dims", "upper_hidden", "prior", "vamp_components", "objective",
                 "adam_beta2"):
        assert again.get_params()[name] == est.get_params()[name], name
    assert again.get_params()["objective_samples"] == 5
    np.testing.assert_array_equal(again.sample(5, seed=3), est.sample(5, seed=3))
    assert again.sample(5, seed=3).shape == (5, 1, 8, 8)
    result = again.evaluate(data.split("test")[:20].numpy(), num_importance_samples=10)
    assert result.bits_per_dim is not None and len(result.active_units_per_layer) == 2


def test_discretized_likelihood_reads_the_levels_off_the_data():
    data = vaekit.load_dataset("digits")  # values k/16
    est = vaekit.VAE(latent_dim=2, hidden=(16,), likelihood="discretized-logistic", epochs=1, device="cpu").fit(data)
    assert est.config_.model.num_levels == 17
    decoded = est.sample(3, seed=0, sample_output=True)
    assert set(np.unique(np.round(decoded * 16, 4))) <= set(range(17))
    with pytest.raises(DataError, match="discretized-logistic"):
        vaekit.VAE(likelihood="discretized-logistic", epochs=1).fit(np.random.default_rng(0).random((30, 4)))


def test_default_hidden_sizes_follow_the_kind_of_data():
    """Vectors of at most 16 real numbers get two layers of 128 (chosen in benchmarks/vector_network.py); wider
    ones, images and [0, 1] vectors keep 400 units (conv: 32,64 channels); an explicit --hidden wins."""
    import pandas as pd

    from vaekit.api import make_run_config
    from vaekit.data import as_dataset

    rng = np.random.default_rng(0)
    real = rng.normal(size=(120, 6)).astype(np.float32)
    unit = rng.random((120, 6)).astype(np.float32)
    images = rng.random((120, 1, 16, 16)).astype(np.float32)
    table = pd.DataFrame({"a": rng.normal(size=120), "b": rng.choice(["x", "y", "z"], 120)})
    wide = rng.normal(size=(120, 17)).astype(np.float32)
    expected = {"real": (128, 128), "wide": (400,), "unit": (400,), "images": (32, 64), "table": (400,)}
    for name, data in {"real": real, "wide": wide, "unit": unit, "images": images, "table": table}.items():
        config = make_run_config(as_dataset(data), epochs=1)
        assert config.model.hidden == expected[name], name
    assert make_run_config(as_dataset(real), hidden=(50,), epochs=1).model.hidden == (50,)
    assert vaekit.VAE(epochs=1).fit(real).config_.model.hidden == (128, 128)
