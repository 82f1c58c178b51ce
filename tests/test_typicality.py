"""The typicality score (DoSE): its statistics, its density, its state on disk, and the default path of ``vaekit score``."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

import vaekit
from vaekit import CheckpointError, ConfigError, DataError, anomaly
from vaekit.anomaly import typicality
from vaekit.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits):
    """A digits MLP trained for a few epochs (the default likelihood on grey values, as a new user trains)."""
    run = tmp_path_factory.mktemp("typicality") / "digits"
    vaekit.VAE(latent_dim=4, hidden=(64,), epochs=15, seed=0, device="cpu").fit(digits, run_dir=run)
    return run


@pytest.fixture(scope="module")
def vae(run):
    return vaekit.load(run)


@pytest.fixture(scope="module")
def state(vae, digits):
    return typicality.fit_typicality(vae, digits.split("train").numpy())


def test_statistics_match_the_posterior_and_the_closed_form_kl(vae, digits):
    x = digits.split("test").numpy()[:50]
    stats = typicality.model_statistics(vae, x, num_samples=3, seed=1)
    names = typicality.statistic_names(vae)
    assert names[:5] == ["reconstruction", "kl", "posterior_log_std", "code_norm", "compressed_bits"]
    assert names[5:] == [f"mu_{i}" for i in range(4)] + [f"log_var_{i}" for i in range(4)] and stats.shape == (50, 13)
    mean, var = vae.encode(x)  # original units = model units for digits
    np.testing.assert_allclose(stats[:, 2], 0.5 * np.log(var).mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats[:, 3], (mean**2).mean(1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats[:, 4], anomaly.compressed_bits(x, "png"))
    np.testing.assert_allclose(stats[:, 5:9], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats[:, 9:], np.log(var), rtol=1e-5, atol=1e-5)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(torch.tensor(mean, dtype=torch.float64), torch.tensor(np.sqrt(var), dtype=torch.float64)),
        torch.distributions.Normal(0.0, 1.0)).sum(-1).numpy()
    np.testing.assert_allclose(stats[:, 1], kl, rtol=1e-4)
    # The reconstruction term averages -log p(x|z) over the draws: close to the one-draw ELBO's mean.
    one_draw = vae.elbo(x, seed=0)["reconstruction"]
    assert abs(stats[:, 0].mean() - one_draw.mean()) < 0.1 * abs(one_draw.mean()) + 1.0
    np.testing.assert_array_equal(stats, typicality.model_statistics(vae, x, num_samples=3, seed=1))  # seeded


def test_the_density_is_the_fitted_mixture_of_scikit_learn(vae, digits, state):
    x = digits.split("test").numpy()
    stats = typicality.model_statistics(vae, x, state.num_samples, state.seed)
    z = (stats - np.array(state.center)) / np.array(state.scale)
    gmm = GaussianMixture(len(state.weights), covariance_type="full")
    gmm.weights_, gmm.means_ = np.array(state.weights), np.array(state.means)
    gmm.covariances_ = np.array(state.covariances)
    gmm.precisions_cholesky_ = np.linalg.cholesky(np.linalg.inv(gmm.covariances_))
    np.testing.assert_allclose(state.log_density(stats), gmm.score_samples(z), rtol=1e-7, atol=1e-8)
    assert abs(sum(state.weights) - 1.0) < 1e-9 and state.fit_size == digits.num_train


def test_clean_examples_are_typical_and_other_data_are_not(vae, digits, state):
    test = digits.split("test").numpy()
    rng = np.random.default_rng(0)
    others = {"noise": rng.random(test.shape, dtype=np.float32),
              "blank": np.zeros_like(test),  # easy to reconstruct: typical without compressed_bits (AUROC 0.67)
              "inverted": 1.0 - test}
    clean = anomaly.anomaly_scores(vae, test, ["typicality"], typicality=state)
    for name, x in others.items():
        s = anomaly.anomaly_scores(vae, x, ["typicality"], typicality=state)
        truth = np.r_[np.zeros(len(test)), np.ones(len(x))]
        auroc = roc_auc_score(truth, np.r_[clean["typicality"], s["typicality"]])
        assert auroc > 0.95, (name, auroc)
    # A training example is typical: its score lies below the fitting data's 99th percentile, for most of them.
    train_scores = anomaly.anomaly_scores(vae, digits.split("train").numpy()[:300], ["typicality"], typicality=state)
    assert np.mean(train_scores["typicality"] <= state.fit_scores[3]) > 0.95


def test_state_round_trips_and_damaged_or_foreign_files_are_refused(vae, state, run, tmp_path, digits):
    path = typicality.save_typicality(state, tmp_path)
    loaded = typicality.load_typicality(tmp_path, vae)
    x = digits.split("test").numpy()[:20]
    np.testing.assert_array_equal(loaded.score(vae, x), state.score(vae, x))
    assert typicality.load_typicality(tmp_path / "nowhere") is None
    raw = json.loads(path.read_text())
    k = len(state.statistics)
    not_positive_definite = (2 * np.eye(k)[None] - 1).tolist()  # 1 on the diagonal, -1 elsewhere
    for damage in ({"scale": [1.0, -1.0] + [1.0] * (k - 2)}, {"means": [[0.0, 0.0]]}, {"weights": [float("nan")]},
                   {"weights": [1.0], "means": [[0.0] * k], "covariances": not_positive_definite}):
        bad = json.loads(json.dumps(raw))
        bad["typicality"].update(damage)
        path.write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match="typicality"):
            typicality.load_typicality(tmp_path, vae)
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        typicality.load_typicality(tmp_path)
    other = vaekit.VAE(latent_dim=4, hidden=(64,), epochs=1, seed=1, device="cpu").fit(digits)
    typicality.save_typicality(state, tmp_path)
    with pytest.raises(CheckpointError, match="other weights"):
        typicality.load_typicality(tmp_path, other)
    with pytest.raises(ConfigError, match="other weights"):
        anomaly.anomaly_scores(other, x, ["typicality"], typicality=state)


def test_bad_input_gives_clear_errors(vae, state, digits):
    with pytest.raises(ConfigError, match="typicality needs"):
        anomaly.anomaly_scores(vae, digits.split("test").numpy()[:5], ["typicality"])
    with pytest.raises(DataError, match="too few"):
        typicality.fit_typicality(vae, digits.split("test").numpy()[:5])
    with pytest.raises(DataError, match="NaN"):
        anomaly.anomaly_scores(vae, np.full((2, 1, 8, 8), np.nan), ["typicality"], typicality=state)
    with pytest.raises(DataError, match="shape"):
        anomaly.anomaly_scores(vae, np.zeros((2, 5)), ["typicality"], typicality=state)
    with pytest.raises(ConfigError, match="max_components"):
        typicality.fit_typicality(vae, digits.split("train").numpy(), max_components=0)


def test_the_detector_defaults_to_typicality_and_saves_it(vae, digits, tmp_path):
    clean = digits.split("test").numpy()
    detector = anomaly.AnomalyDetector(vae).fit(clean)  # in memory, no typicality model yet: fitted on half of X
    assert detector.score_ == "typicality" and detector.typicality_.fit_size == len(clean) // 2
    assert len(detector.calibration_scores_) == len(clean) - len(clean) // 2
    detector.save(tmp_path / "run")
    assert (tmp_path / "run" / typicality.TYPICALITY_FILE).is_file()
    loaded = anomaly.AnomalyDetector.load(tmp_path / "run")
    np.testing.assert_array_equal(loaded.anomaly_score(clean[:30]), detector.anomaly_score(clean[:30]))
    noise = np.random.default_rng(0).random((30, 1, 8, 8))
    assert (loaded.predict(noise) == -1).mean() > 0.9
    # A typicality.json refitted after the threshold was set no longer matches the detector: refused.
    typicality.save_typicality(typicality.fit_typicality(loaded.vae_, clean, seed=5), tmp_path / "run")
    with pytest.raises(CheckpointError, match="another typicality model"):
        anomaly.AnomalyDetector.load(tmp_path / "run")


def test_train_fits_it_and_score_uses_it_by_default(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "digits", "--out", str(out), "--epochs", "3", "--no-progress", "--latent-dim", "4"]) == 0
    assert "fitted the typicality model on 1,438 training examples" in capsys.readouterr().err
    assert (out / typicality.TYPICALITY_FILE).is_file()
    assert main(["score", str(out), "digits:test", "-o", str(tmp_path / "s.csv"), "--scores", "neg_elbo"]) == 0
    assert "column 'score' = typicality" in capsys.readouterr().err
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert len(rows) == 359 and set(rows[0]) >= {"typicality", "score", "neg_elbo"}
    assert all(r["score"] == r["typicality"] for r in rows)
    # A run from before typicality.json existed gets one fitted from its own training data, and keeps it.
    (out / typicality.TYPICALITY_FILE).unlink()
    assert main(["score", str(out), "digits:test", "-o", str(tmp_path / "t.csv"), "--scores", "neg_elbo"]) == 0
    err = capsys.readouterr().err
    assert "fitted the typicality model on 1,438 training examples of digits" in err and "= typicality" in err
    assert (out / typicality.TYPICALITY_FILE).is_file()
    with open(tmp_path / "t.csv", newline="") as f:
        assert [r["score"] for r in csv.DictReader(f)] == [r["score"] for r in rows]  # the same fit again


def test_train_without_the_detector_leaves_it_to_score(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "digits", "--out", str(out), "--epochs", "2", "--no-progress", "--latent-dim", "4"]) == 0
    assert (out / typicality.TYPICALITY_FILE).is_file()
    capsys.readouterr()
    # Resumed for more epochs with --no-detector: the earlier weights' typicality model is removed, none is fitted.
    assert main(["train", "--out", str(out), "--epochs", "3", "--resume", "--no-progress", "--no-detector"]) == 0
    err = capsys.readouterr().err
    assert "removed the typicality model" in err and "fitted the typicality model" not in err
    assert not (out / typicality.TYPICALITY_FILE).exists()
    assert main(["score", str(out), "digits:test", "-o", str(tmp_path / "s.csv"), "--scores", "neg_elbo"]) == 0
    err = capsys.readouterr().err
    assert "fitted the typicality model on 1,438 training examples of digits" in err and "= typicality" in err
    state = typicality.load_typicality(out, vaekit.load(out))  # fitted for the resumed weights
    assert state is not None and state.fit_size == 1438


def test_small_data_keep_the_summary_statistics_and_tiny_data_fall_back(tmp_path):
    rng = np.random.default_rng(0)
    table = rng.normal(size=(240, 5)).astype(np.float32)
    vae = vaekit.VAE(latent_dim=4, hidden=(16,), epochs=20, seed=0, device="cpu").fit(table)
    state = typicality.fit_typicality(vae, table[:150])  # 12 statistics need 2 * 91 examples for the full set
    assert state.statistics == ["reconstruction", "kl", "posterior_log_std", "code_norm"]
    far = table[:20] + 8.0
    scores = state.score(vae, np.r_[table[200:], far])
    assert roc_auc_score(np.r_[np.zeros(40), np.ones(20)], scores) > 0.95
    big = typicality.fit_typicality(vae, table[:182])  # 182 = 2 * 91: every statistic
    assert big.statistics == typicality.statistic_names(vae) and len(big.statistics) == 4 + 8
    # Too few even for the summary: the detector falls back to the legacy default, with a warning.
    with pytest.warns(UserWarning, match="cannot be fitted"):
        detector = anomaly.AnomalyDetector(vae, contamination=0.1).fit(table[:12])
    assert detector.score_ == anomaly.FALLBACK_SCORE
    with pytest.raises(DataError, match="too few"):
        anomaly.AnomalyDetector(vae, "typicality", contamination=0.1).fit(table[:12])
