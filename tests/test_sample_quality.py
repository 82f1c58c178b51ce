"""Sample quality: the Fréchet distance and k-NN precision/recall against independent computations, the cached
feature classifier, and ``vaekit quality`` end to end on digits."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist

import vaekit
from vaekit.cli import main
from vaekit.errors import ConfigError, DataError
from vaekit.evaluation import sample_quality as sq
from vaekit.evaluation.sample_quality import (ClassifierSettings, feature_classifier, frechet_distance,
                                              gaussian_frechet_distance, precision_recall, sample_quality)

FAST = ClassifierSettings(epochs=3)  # a weak but real classifier, trained in about a second on digits


def closed_form(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) with scipy's general matrix square root."""
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real)


def correlated(rng, n, d, shift=0.0, scale=1.0):
    return rng.normal(size=(n, d)) @ (scale * rng.normal(size=(d, d))) + shift


# --- the Fréchet distance ------------------------------------------------------------------------------------

def test_the_distance_of_a_set_to_itself_is_zero():
    x = correlated(np.random.default_rng(0), 500, 16)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_the_distance_is_the_closed_form_of_the_sets_own_moments():
    rng = np.random.default_rng(1)
    a, b = correlated(rng, 400, 6), correlated(rng, 300, 6, shift=0.7, scale=2.0)
    expected = closed_form(a.mean(0), np.cov(a.T), b.mean(0), np.cov(b.T))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)  # symmetric


def test_diagonal_gaussians_and_a_shift_alone():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.5])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)  # commuting covariances
    assert gaussian_frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)
    x = correlated(np.random.default_rng(2), 200, 5)
    delta = np.array([0.5, -1.0, 2.0, 0.0, 3.0])
    assert frechet_distance(x, x + delta) == pytest.approx(float(delta @ delta), rel=1e-9)


def test_samples_of_two_gaussians_approach_the_closed_form_of_the_gaussians():
    rng = np.random.default_rng(3)
    mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, -0.5])
    l1, l2 = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    s1, s2 = l1 @ l1.T + 0.1 * np.eye(3), l2 @ l2.T + 0.1 * np.eye(3)
    a = rng.multivariate_normal(mu1, s1, size=200_000)
    b = rng.multivariate_normal(mu2, s2, size=200_000)
    exact = closed_form(mu1, s1, mu2, s2)
    assert frechet_distance(a, b) == pytest.approx(exact, rel=0.02)


def test_singular_covariances_give_finite_exact_values():
    x = correlated(np.random.default_rng(4), 100, 4)
    x[:, 2] = 1.0  # a feature that never varies
    assert frechet_distance(x, x + [0, 0, 2.0, 0]) == pytest.approx(4.0, rel=1e-9)
    low_rank = np.repeat(x[:, :1], 4, axis=1)  # rank one
    assert np.isfinite(frechet_distance(low_rank, x))


def test_the_distance_refuses_what_it_cannot_compare():
    with pytest.raises(DataError, match="same"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(DataError, match="at least 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(DataError, match="NaN"):
        frechet_distance(np.full((5, 3), np.nan), np.zeros((5, 3)))


# --- precision and recall ------------------------------------------------------------------------------------

def brute_precision_recall(real, fake, k):
    """The definition, with every distance at once (scipy) and numpy's sort."""
    rr, ff, rf = cdist(real, real), cdist(fake, fake), cdist(real, fake)
    real_radius, fake_radius = np.sort(rr, axis=1)[:, k], np.sort(ff, axis=1)[:, k]
    precision = np.mean((rf <= real_radius[:, None]).any(axis=0))
    recall = np.mean((rf <= fake_radius[None, :]).any(axis=1))
    return precision, recall


def test_identical_sets_have_precision_and_recall_one():
    x = np.random.default_rng(5).normal(size=(300, 8))
    assert precision_recall(x, x.copy()) == (1.0, 1.0)


def test_a_fake_set_far_away_has_precision_zero():
    rng = np.random.default_rng(6)
    real = rng.normal(size=(300, 8))
    precision, recall = precision_recall(real, rng.normal(size=(300, 8)) + 100.0)
    assert precision == 0.0 and recall == 0.0


def test_a_fake_set_covering_half_the_modes_has_recall_one_half():
    rng = np.random.default_rng(7)
    angles = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    modes = 50.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # ten well separated blobs in the plane
    real = np.concatenate([m + rng.normal(size=(200, 2)) for m in modes])
    fake = np.concatenate([m + rng.normal(size=(400, 2)) for m in modes[::2]])  # every other blob
    precision, recall = precision_recall(real, fake, k=3)
    assert precision > 0.95  # every fake lies where real ones are (but for a few in the blobs' tails)
    assert recall == pytest.approx(0.5, abs=0.03)


def test_chunks_change_nothing_and_agree_with_the_definition():
    rng = np.random.default_rng(8)
    real, fake = rng.normal(size=(257, 5)), 0.8 * rng.normal(size=(199, 5)) + 0.3
    expected = brute_precision_recall(real, fake, k=4)
    whole = precision_recall(real, fake, k=4, memory_budget_mb=256)
    tiny = precision_recall(real, fake, k=4, memory_budget_mb=0.05)  # a few rows at a time
    assert whole == tiny
    np.testing.assert_allclose(whole, expected)
    assert 0 < whole.precision < 1 and 0 < whole.recall < 1


def test_precision_recall_refuses_bad_settings():
    x = np.zeros((5, 2))
    with pytest.raises(ConfigError, match="k must be"):
        precision_recall(x, x, k=0)
    with pytest.raises(DataError, match="more than 5"):
        precision_recall(x, x, k=5)


# --- the feature classifier ----------------------------------------------------------------------------------

def test_the_classifier_is_cached_as_json_and_safetensors_and_reloads_bit_identically(digits, tmp_path):
    trained = feature_classifier(digits, FAST, cache_dir=tmp_path)
    assert not trained.from_cache and trained.test_accuracy > 0.6  # chance is 0.1
    files = sorted(p.name for p in trained.directory.iterdir())
    assert files == ["classifier.json", "classifier.safetensors"]
    for path in trained.directory.iterdir():
        assert not path.read_bytes().startswith(b"\x80")  # no pickle protocol header
    assert trained.directory.parent == tmp_path and trained.directory.name.startswith("digits-")
    meta = json.loads((trained.directory / "classifier.json").read_text())
    assert meta["test_accuracy"] == trained.test_accuracy and meta["identity"]["shape"] == [1, 8, 8]

    reloaded = feature_classifier(digits, FAST, cache_dir=tmp_path)
    assert reloaded.from_cache and reloaded.key == trained.key and reloaded.test_accuracy == trained.test_accuracy
    images = digits.x_test[:50]
    features = trained.features(images)
    assert features.shape == (50, 128) and features.dtype == np.float64
    assert np.array_equal(features, reloaded.features(images))  # bit for bit


def test_other_settings_or_other_data_train_another_classifier(digits, tmp_path):
    first = feature_classifier(digits, FAST, cache_dir=tmp_path)
    other_settings = feature_classifier(digits, ClassifierSettings(epochs=2), cache_dir=tmp_path)
    assert not other_settings.from_cache and other_settings.key != first.key
    changed = vaekit.load_dataset("digits")
    changed.x_train[0, 0, 0, 0] += 0.5  # one pixel of one training image
    assert sq.classifier_identity(changed, FAST.resolved(len(changed.x_train))) != \
        sq.classifier_identity(digits, FAST.resolved(len(digits.x_train)))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.key, other_settings.key])


def test_a_damaged_cache_is_trained_again(digits, tmp_path):
    first = feature_classifier(digits, FAST, cache_dir=tmp_path)
    (first.directory / "classifier.safetensors").write_bytes(b"not safetensors")
    with pytest.warns(UserWarning, match="cannot be read"):
        again = feature_classifier(digits, FAST, cache_dir=tmp_path)
    assert not again.from_cache
    assert feature_classifier(digits, FAST, cache_dir=tmp_path).from_cache  # repaired


def test_the_cache_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("VAEKIT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert sq.cache_root() == tmp_path / "xdg" / "vaekit" / "quality"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec says to ignore relative paths
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sq.cache_root() == tmp_path / "home" / ".cache" / "vaekit" / "quality"
    monkeypatch.setenv("VAEKIT_CACHE_DIR", str(tmp_path / "own"))
    assert sq.cache_root() == tmp_path / "own" / "quality"


def test_images_of_any_size_and_channels(tmp_path):
    rng = np.random.default_rng(9)
    labels = np.repeat([0, 1], 60)
    images = rng.uniform(0, 0.2, size=(120, 20, 24, 3)).astype(np.float32)
    images[labels == 1, :10] += 0.7  # class 1: a bright top half
    data = vaekit.data.as_dataset(images, labels, test_fraction=0.25)
    assert data.shape == (3, 20, 24)
    classifier = feature_classifier(data, ClassifierSettings(epochs=10, batch_size=16, feature_dim=16), cache_dir=tmp_path)
    assert classifier.test_accuracy == 1.0 and classifier.features(data.x_test).shape == (30, 16)


def test_data_without_labels_vectors_and_tables_are_refused(tmp_path):
    images = np.random.default_rng(10).uniform(size=(40, 8, 8)).astype(np.float32)
    with pytest.raises(DataError, match="has none"):
        feature_classifier(vaekit.data.as_dataset(images), cache_dir=tmp_path)
    with pytest.raises(DataError, match="vectors"):
        feature_classifier(vaekit.data.as_dataset(images.reshape(40, 64), np.arange(40) % 2), cache_dir=tmp_path)
    table = vaekit.data.as_dataset(pd.DataFrame({"a": np.arange(40.0), "b": ["x", "y"] * 20}))
    with pytest.raises(DataError, match="vaekit report"):
        feature_classifier(table, cache_dir=tmp_path)


# --- a run's samples -----------------------------------------------------------------------------------------

class FixedCodes:
    """A sampler object (``VAE.sample(sampler=...)``) giving the same code every time."""

    kind = "fixed"

    def sample_latent(self, vae, n, generator):
        return torch.zeros(n, vae.latent_dim_)


def test_sample_quality_of_a_run_is_the_metrics_of_its_samples(trained_run, digits, tmp_path):
    vae = vaekit.load(trained_run)
    classifier = feature_classifier(digits, FAST, cache_dir=tmp_path)
    result = sample_quality(vae, digits, num_samples=200, seed=3, classifier=classifier)
    samples = vae.sample(200, seed=3)
    fake, test = classifier.features(samples), classifier.features(digits.x_test)
    assert result.fd == pytest.approx(frechet_distance(fake, test), rel=1e-12)
    assert (result.precision, result.recall) == precision_recall(test, fake, k=3)
    assert (result.num_samples, result.num_test, result.num_floor, result.sampler) == (200, 359, 200, "prior")
    assert 0 < result.floor_fd < result.fd  # training images are closer to the test images than a 3-epoch VAE's
    assert result.floor_recall > result.recall
    assert json.loads(json.dumps(result.to_dict()))["classifier_settings"]["epochs"] == 3
    same_codes = sample_quality(vae, "digits", num_samples=200, sampler=FixedCodes(), classifier=classifier)
    assert same_codes.sampler == "fixed" and same_codes.recall < 0.05  # 200 copies of one image cover nothing
    drawn = sample_quality(vae, digits, num_samples=200, seed=3, draw=True, classifier=classifier)
    assert drawn.draw and drawn.fd == pytest.approx(
        frechet_distance(classifier.features(vae.sample(200, seed=3, sample_output=True)), test), rel=1e-12)


def test_sample_quality_checks_its_inputs(trained_run, digits, tmp_path):
    vae = vaekit.load(trained_run)
    classifier = feature_classifier(digits, FAST, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="above k=3"):
        sample_quality(vae, digits, num_samples=3, classifier=classifier)
    with pytest.raises(DataError, match="without :train"):
        sample_quality(vae, "digits:train", classifier=classifier)
    with pytest.raises(DataError, match="shape"):
        sq.compare_samples(np.zeros((50, 1, 4, 4)), digits, classifier)
    with pytest.raises(DataError, match="original units"):
        sq.compare_samples(np.full((50, 1, 8, 8), 255.0), digits, classifier)


# --- the command line ----------------------------------------------------------------------------------------

def test_quality_command_prints_the_table_writes_json_and_reuses_its_classifier(trained_run, tmp_path, capsys):
    out = tmp_path / "quality.json"
    args = ["quality", str(trained_run), "-n", "300", "--seed", "1", "--json", str(out), "--cache-dir", str(tmp_path)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "training the feature classifier on digits" in captured.err
    for line in ("FD (lower is better)", "precision", "recall", "test accuracy", "300 samples"):
        assert line in captured.out
    result = json.loads(out.read_text())
    assert result["run"] == str(trained_run) and result["data"] == "digits" and result["num_samples"] == 300
    assert result["classifier_test_accuracy"] > 0.8 and not result["classifier_from_cache"]
    assert {"fd", "precision", "recall", "floor_fd", "floor_precision", "floor_recall", "k", "seed"} <= set(result)
    assert main(args[:2] + ["digits:test"] + args[2:]) == 0
    again = json.loads(out.read_text())
    assert again["classifier_from_cache"] and again["fd"] == result["fd"]  # same seed, same classifier


def test_quality_command_refuses_a_table_run_and_bad_options(tmp_path, capsys):
    run = tmp_path / "table-run"
    frame = pd.DataFrame({"x": np.random.default_rng(11).normal(size=60), "c": ["a", "b", "c"] * 20})
    vaekit.VAE(latent_dim=2, hidden=(8,), epochs=1, device="cpu").fit(frame, run_dir=run)
    capsys.readouterr()
    assert main(["quality", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vaekit: error: ") and "vaekit report" in err and len(err.strip().splitlines()) == 1
    assert main(["quality", str(run), "--json", str(tmp_path / "q.txt")]) == 2
    assert ".json" in capsys.readouterr().err
