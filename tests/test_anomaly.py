"""Anomaly scores, their units, thresholds with a false-positive guarantee, the detector and ``vaekit score``."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.exceptions import NotFittedError

import vaekit
from vaekit import CheckpointError, ConfigError, DataError
from vaekit import anomaly
from vaekit.cli import main


@pytest.fixture(scope="module")
def binarized_run(tmp_path_factory, digits):
    """A digits model trained on dynamically binarized data (Bernoulli over binary images: exact code lengths)."""
    run = tmp_path_factory.mktemp("anomaly") / "bin"
    data = vaekit.load_dataset("digits", binarize="dynamic")
    vae = vaekit.VAE(latent_dim=4, hidden=(64,), epochs=4, binarize="dynamic", seed=0, device="cpu").fit(data, run_dir=run)
    # its typicality density, as vaekit train leaves it (so that no test's output depends on which test fits it first)
    anomaly.save_typicality(anomaly.fit_typicality(vae, data.split("train", units="model").numpy()), run)
    return run


@pytest.fixture(scope="module")
def vae_bin(binarized_run):
    return vaekit.load(binarized_run)


# --- compression -----------------------------------------------------------------------------------

@pytest.mark.parametrize("compressor", anomaly.COMPRESSORS)
def test_compression_is_lossless(compressor):
    rng = np.random.default_rng(0)
    binary = (rng.random((1, 9, 13)) < 0.3).astype(np.float32)
    grey = (rng.integers(0, 256, (1, 9, 13)) / 255.0).astype(np.float32)
    rgb = (rng.integers(0, 256, (3, 5, 6)) / 255.0).astype(np.float32)
    for image, binary_coding in ((binary, True), (grey, False), (rgb, False)):
        data = anomaly.compress_image(image, binary_coding, compressor)
        if compressor == "png":
            decoded = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32)
            decoded = decoded[None] if decoded.ndim == 2 else decoded.transpose(2, 0, 1)
            decoded = decoded if binary_coding else decoded / 255.0
        else:
            raw = np.frombuffer(zlib.decompress(data), dtype=np.uint8)
            if binary_coding:
                decoded = np.unpackbits(raw.reshape(9, -1), axis=-1)[:, :13][None].astype(np.float32)
            else:
                decoded = raw.reshape(image.shape) / 255.0
        np.testing.assert_allclose(decoded, image, atol=1e-6)


def test_compressed_size_tracks_complexity():
    rng = np.random.default_rng(0)
    flat = np.zeros((1, 1, 28, 28), np.float32)
    noise = (rng.random((1, 1, 28, 28)) < 0.5).astype(np.float32)
    for compressor in anomaly.COMPRESSORS:
        bits = anomaly.compressed_bits(np.concatenate([flat, noise]), compressor)
        assert bits[0] < bits[1]
        assert bits[1] >= 28 * 28  # random bits cannot be coded in fewer bits than there are
    with pytest.raises(DataError, match="values in \\[0, 1\\]"):
        anomaly.compressed_bits(flat + 2)
    with pytest.raises(ConfigError, match="png, zlib"):
        anomaly.compressed_bits(flat, "jpeg")


# --- the scores ------------------------------------------------------------------------------------

def test_bernoulli_code_lengths_satisfy_kraft(tmp_path):
    """On 2x2 binary images the model's bits are a real code: the 16 probabilities 2^-bits add up to 1."""
    rng = np.random.default_rng(0)
    x = (rng.random((600, 1, 2, 2)) < np.array([0.2, 0.8, 0.5, 0.3]).reshape(1, 1, 2, 2)).astype(np.float32)
    vae = vaekit.VAE(latent_dim=1, hidden=(16,), epochs=15, batch_size=64, lr=3e-3, seed=0, device="cpu").fit(x)
    every_image = np.array(list(itertools.product([0.0, 1.0], repeat=4)), dtype=np.float32).reshape(16, 1, 2, 2)
    nll = -vae.score_samples(every_image, num_importance_samples=3000)
    total = np.sum(2.0 ** -anomaly.model_bits(vae, nll))
    assert abs(total - 1.0) < 0.02


def test_scores_of_a_binarized_model(vae_bin, digits):
    x = digits.x_test[:120].numpy()  # grey values: binarized with the seeded draw as the run's data were
    scores = anomaly.anomaly_scores(vae_bin, x, num_importance_samples=200, seed=3)
    assert set(scores) == {"neg_elbo", "neg_log_likelihood", "reconstruction_error", "input_complexity",
                           "posterior_regret"}  # likelihood_regret is slow: only when named
    prepared = anomaly.prepare_inputs(vae_bin, x, seed=3)
    from vaekit.anomaly.regret import posterior_regret

    np.testing.assert_allclose(scores["posterior_regret"],
                               posterior_regret(vae_bin.model_, torch.as_tensor(prepared), seed=3).numpy())
    assert (scores["posterior_regret"] >= 0).all()
    assert set(np.unique(prepared)) == {0.0, 1.0}
    np.testing.assert_array_equal(anomaly.prepare_inputs(vae_bin, prepared, seed=99), prepared)  # binary stays
    nll = -vae_bin.score_samples(prepared, num_importance_samples=200, seed=3)
    np.testing.assert_allclose(scores["neg_log_likelihood"], nll, rtol=1e-6)
    # Serra et al.: -log2 p(x) minus the compressed length of x, both in bits
    png_bits = np.array([8 * len(anomaly.compress_image(image, True)) for image in prepared])
    np.testing.assert_allclose(scores["input_complexity"], nll / math.log(2) - png_bits, rtol=1e-9)
    np.testing.assert_allclose(scores["reconstruction_error"],
                               ((prepared - vae_bin.reconstruct(prepared)) ** 2).reshape(120, -1).mean(1), rtol=1e-5)
    # -ELBO bounds -log p(x) from above (on average over examples; one-sample ELBO, k=200 estimate)
    assert scores["neg_elbo"].mean() > scores["neg_log_likelihood"].mean()


def test_likelihood_ratio_against_the_model_itself_is_zero(vae_bin, digits):
    x = digits.x_test[:20].numpy()
    scores = anomaly.anomaly_scores(vae_bin, x, ["likelihood_ratio"], num_importance_samples=10, background=vae_bin)
    np.testing.assert_allclose(scores["likelihood_ratio"], 0.0, atol=1e-9)
    with pytest.raises(ConfigError, match="background model"):
        anomaly.anomaly_scores(vae_bin, x, ["likelihood_ratio"])


def test_perturb_replaces_the_requested_fraction():
    x = np.full((200, 1, 10, 10), 0.5, np.float32)
    y = anomaly.perturb(x, rate=0.2, seed=1)
    changed = (y != 0.5).mean()
    assert abs(changed - 0.2) < 0.01 and y.min() >= 0 and y.max() <= 1
    np.testing.assert_array_equal(x, 0.5)  # the input is not modified
    with pytest.raises(ConfigError):
        anomaly.perturb(x, rate=1.5)
    replaced = y[y != 0.5]
    assert abs(replaced.mean() - 0.5) < 0.03 and abs((replaced < 0.25).mean() - 0.25) < 0.03  # uniform
    np.testing.assert_array_equal(anomaly.perturb(x, rate=0.2, seed=1), y)  # seeded


def test_perturbed_values_stay_on_the_data_grid():
    binary = (np.arange(4000).reshape(40, 100) % 2).astype(np.float32)
    y = anomaly.perturb(binary, rate=0.5, seed=0, levels=2)
    assert set(np.unique(y)) == {0.0, 1.0}
    # a replaced value is a fair coin: half the replacements flip the value
    assert abs((y != binary).mean() - 0.25) < 0.03
    grey = np.zeros((50, 784), np.float32)
    y = anomaly.perturb(grey, rate=0.5, seed=0, levels=256)
    np.testing.assert_allclose(y * 255, np.round(y * 255), atol=1e-4)
    assert len(np.unique(y)) == 256  # every level is drawn


def test_training_perturbation_replaces_the_rate_on_the_grid():
    from vaekit.data.transforms import perturb

    x = torch.full((400, 784), 0.5)
    y = perturb(x, 0.3, torch.Generator().manual_seed(0))
    replaced = y[y != 0.5]
    assert abs((y != 0.5).float().mean().item() - 0.3) < 0.01 and torch.equal(x, torch.full_like(x, 0.5))
    assert abs(replaced.mean().item() - 0.5) < 0.01 and 0 <= replaced.min() and replaced.max() < 1
    binary = perturb(torch.zeros(400, 784), 0.3, torch.Generator().manual_seed(0), levels=2)
    assert set(binary.unique().tolist()) == {0.0, 1.0} and abs(binary.mean().item() - 0.15) < 0.01
    assert torch.equal(perturb(x, 0.3, torch.Generator().manual_seed(0)), y)  # seeded


def test_input_complexity_needs_a_code_length(trained_run, digits):
    vae = vaekit.load(trained_run)  # Bernoulli on grey values: not a distribution over what PNG codes
    x = digits.x_test[:10].numpy()
    assert anomaly.default_score(vae) == anomaly.FALLBACK_SCORE
    assert "input_complexity" not in anomaly.anomaly_scores(vae, x, num_importance_samples=2)
    with pytest.raises(ConfigError, match="binary images"):
        anomaly.anomaly_scores(vae, x, ["input_complexity"])
    binary = (x > 0.5).astype(np.float32)  # binary inputs do make it a code length
    assert "input_complexity" in anomaly.anomaly_scores(vae, binary, num_importance_samples=2)
    vectors = vaekit.VAE(latent_dim=2, hidden=(8,), epochs=1, device="cpu").fit(np.random.default_rng(0).normal(size=(60, 5)))
    with pytest.raises(ConfigError, match="image data"):
        anomaly.anomaly_scores(vectors, np.zeros((3, 5)), ["input_complexity"])
    with pytest.raises(ConfigError, match="unknown score"):
        anomaly.anomaly_scores(vae, x, ["surprise"])


# --- evaluation --------------------------------------------------------------------------------------

def test_detection_metrics_match_pairwise_counting():
    rng = np.random.default_rng(0)
    truth = rng.random(300) < 0.2
    score = rng.normal(size=300) + truth
    pairs = [(a > b) + 0.5 * (a == b) for a in score[truth] for b in score[~truth]]
    metrics = anomaly.detection_metrics({"s": score}, truth)
    assert metrics["s"]["auroc"] == pytest.approx(np.mean(pairs))
    assert 0.2 < metrics["s"]["auprc"] < 1
    with pytest.raises(DataError, match="both"):
        anomaly.detection_metrics({"s": score}, np.zeros(300))
    with pytest.raises(DataError, match="one label per example"):
        anomaly.detection_metrics({"s": score}, truth[:10])
    fig = anomaly.roc_figure({"s": score}, truth)
    assert "AUROC" in fig.axes[0].get_legend().get_texts()[0].get_text()


# --- thresholds --------------------------------------------------------------------------------------

def test_conformal_threshold_on_ranks():
    scores = np.arange(1, 20, dtype=float)  # n = 19
    assert anomaly.threshold_for_false_positive_rate(scores, 0.1) == 18.0  # k = ceil(20 * 0.9) = 18
    assert anomaly.threshold_for_false_positive_rate(scores, 0.5) == 10.0  # k = ceil(20 * 0.5) = 10
    with pytest.raises(DataError, match="too few"):
        anomaly.threshold_for_false_positive_rate(scores, 0.01)


def test_conformal_threshold_keeps_its_false_positive_rate():
    rng = np.random.default_rng(0)
    target, n = 0.1, 40
    rates = []
    for _ in range(400):
        threshold = anomaly.threshold_for_false_positive_rate(rng.normal(size=n), target)
        rates.append(np.mean(rng.normal(size=2000) > threshold))
    # E[FPR] = 1 - k/(n+1) with k = ceil(41 * 0.9) = 37: 4/41 ~ 0.0976, never above the target
    assert np.mean(rates) == pytest.approx(4 / 41, abs=0.006)
    assert np.mean(rates) <= target


def test_contamination_threshold_flags_that_share():
    scores = np.random.default_rng(0).normal(size=1000)
    threshold = anomaly.threshold_for_contamination(scores, 0.05)
    assert np.mean(scores > threshold) == pytest.approx(0.05, abs=0.002)
    with pytest.raises(ConfigError):
        anomaly.threshold_for_contamination(scores, 0.7)


# --- the detector ------------------------------------------------------------------------------------

def test_detector_conventions_and_false_positive_rate(binarized_run, digits):
    clean = digits.x_test.numpy()
    calibrate, holdout = clean[::2], clean[1::2]
    detector = anomaly.AnomalyDetector(str(binarized_run), "input_complexity", target_fpr=0.2, num_importance_samples=20).fit(calibrate)
    assert detector.score_ == "input_complexity"
    scores = detector.anomaly_score(holdout)
    np.testing.assert_allclose(detector.score_samples(holdout), -scores)
    decision = detector.decision_function(holdout)
    np.testing.assert_allclose(decision, detector.threshold_ - scores)
    predicted = detector.predict(holdout)
    assert set(np.unique(predicted)) <= {-1, 1}
    np.testing.assert_array_equal(predicted == -1, decision < 0)
    # exchangeable clean data: the false-positive rate is near the target (binomial sd ~ 0.03 at n = 180)
    assert abs(np.mean(predicted == -1) - 0.2) < 0.1
    noise = np.random.default_rng(0).random((50, 1, 8, 8)).astype(np.float32)
    assert np.mean(detector.predict(noise) == -1) > 0.9


def test_detector_save_load_round_trip(binarized_run, digits, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(binarized_run, run)
    x = digits.x_test[:150].numpy()
    detector = anomaly.AnomalyDetector(str(run), score="neg_log_likelihood", contamination=0.1,
                                       num_importance_samples=10).fit(x)
    path = detector.save()
    saved = json.loads(path.read_text())
    assert saved["detector"]["rule"] == "contamination" and saved["detector"]["score"] == "neg_log_likelihood"
    loaded = anomaly.AnomalyDetector.load(run)
    assert loaded.threshold_ == detector.threshold_
    np.testing.assert_array_equal(loaded.predict(x), detector.predict(x))
    assert np.mean(loaded.predict(x) == -1) == pytest.approx(0.1, abs=0.01)

    saved["detector"]["threshold"] = "high"
    path.write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match="threshold"):
        anomaly.AnomalyDetector.load(run)
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        anomaly.AnomalyDetector.load(run)
    detector.save(run)
    vaekit.VAE(latent_dim=4, hidden=(64,), epochs=1, binarize="dynamic", seed=5, device="cpu").fit(
        digits.x_train.numpy()[:200]).save(run)  # other weights under the same run directory
    with pytest.raises(CheckpointError, match="other weights"):
        anomaly.AnomalyDetector.load(run)


def test_detector_trains_an_unfitted_vae_and_refuses_misuse():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    detector = anomaly.AnomalyDetector(vaekit.VAE(latent_dim=2, hidden=(16,), epochs=2, device="cpu"),
                                       contamination=0.1, num_importance_samples=5).fit(x)
    assert detector.score_ == "typicality"  # the default for every kind of data; fitted on half of x
    far = x[:20] + 25.0
    assert np.all(detector.predict(far) == -1)
    assert detector.fit_predict(x).shape == (300,)
    with pytest.raises(ConfigError, match="not both"):
        anomaly.AnomalyDetector(detector.vae_, target_fpr=0.1, contamination=0.1).fit(x)
    with pytest.raises(NotFittedError):
        anomaly.AnomalyDetector(detector.vae_).predict(x)
    with pytest.raises(ConfigError, match="run directory"):
        detector.save()


def test_vae_fit_records_which_rows_it_trained_on():
    import pandas as pd

    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    vae = vaekit.VAE(latent_dim=2, hidden=(8,), epochs=1, device="cpu", seed=3).fit(x)
    rows = vae.training_rows_
    assert sorted([*rows.train, *rows.held_out]) == list(range(50)) and len(rows.held_out) == 5
    # the held-out rows are the ones the trainer validated on: the same -ELBO as the last epoch's validation loss
    assert vae.score(x[rows.held_out]) == pytest.approx(-vae.history_[-1]["val_neg_elbo"], rel=0.05)
    assert rows.matches(x) and rows.matches(x.copy())
    assert not rows.matches(x[::-1]) and not rows.matches(x[:49]) and not rows.matches(x + 1e-3)
    frame = pd.DataFrame({"a": rng.normal(size=40), "b": rng.choice(["u", "v"], size=40)})
    rows = vaekit.VAE(latent_dim=2, hidden=(8,), epochs=1, device="cpu").fit(frame).training_rows_
    assert rows.matches(frame) and not rows.matches(frame.assign(b="u"))
    dataset = vaekit.data.as_dataset(x)
    assert vaekit.VAE(latent_dim=2, hidden=(8,), epochs=1, device="cpu").fit(dataset).training_rows_ is None
    assert not vae.training_rows_.matches(dataset) and not vae.training_rows_.matches("rows.npy")


def test_a_run_directory_keeps_which_rows_trained_it(tmp_path):
    from vaekit.errors import CheckpointError

    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    run = tmp_path / "run"
    vae = vaekit.VAE(latent_dim=2, hidden=(16,), epochs=2, device="cpu", seed=1).fit(x, run_dir=run)
    loaded = vaekit.load(run)
    np.testing.assert_array_equal(loaded.training_rows_.held_out, vae.training_rows_.held_out)
    np.testing.assert_array_equal(loaded.training_rows_.train, vae.training_rows_.train)
    assert loaded.training_rows_.matches(x)
    # a detector on the loaded run, given the same rows, is set on the 30 held-out ones
    detector = anomaly.AnomalyDetector(str(run), score="neg_elbo", target_fpr=0.1).fit(x)
    assert len(detector.calibration_scores_) == 30
    saved = tmp_path / "saved"
    loaded.save(saved)
    assert vaekit.load(saved).training_rows_.matches(x)
    (run / "training_rows.json").write_text('{"format": 1, "digest": "x", "rows": 3, "held_out": [5]}')
    with pytest.raises(CheckpointError, match="training rows"):
        vaekit.load(run)
    vaekit.VAE(latent_dim=2, hidden=(16,), epochs=1, device="cpu").fit(vaekit.data.as_dataset(x), run_dir=run)
    assert not (run / "training_rows.json").exists()  # trained on a Dataset: no record, and the old one is gone


def test_detector_on_its_training_data_calibrates_on_the_held_out_rows():
    """The rows a VAE was trained on score lower than new clean rows: a threshold set on them flags far more than
    the target rate of new data. Given the VAE's own training data, the detector sets it on the rows fit held out."""
    from sklearn.datasets import load_digits

    rows = load_digits().data.astype(np.float32)  # 8x8 digits as a 64-column table: a small table a VAE overfits
    rows = rows[np.random.default_rng(0).permutation(len(rows))]
    x, new = rows[:500], rows[500:]
    vae = vaekit.VAE(latent_dim=8, hidden=(128,), epochs=60, test_fraction=0.2, device="cpu", seed=0).fit(x)
    detector = anomaly.AnomalyDetector(vae, target_fpr=0.1, num_importance_samples=5).fit(x)
    held_out = vae.training_rows_.held_out
    assert len(held_out) == 100 and detector.typicality_.fit_size == 400  # the density: the rows it trained on
    np.testing.assert_allclose(detector.calibration_scores_, detector.anomaly_score(x[held_out]))
    assert detector.threshold_ == anomaly.threshold_for_false_positive_rate(detector.anomaly_score(x[held_out]), 0.1)
    scores_new = detector.anomaly_score(new)
    flagged_new = float((scores_new > detector.threshold_).mean())
    seen = detector.anomaly_score(x[vae.training_rows_.train])
    flagged_if_set_on_seen = float((scores_new > anomaly.threshold_for_false_positive_rate(seen, 0.1)).mean())
    assert flagged_new < 0.18  # 0.1 in expectation over the 100 held-out rows (standard deviation about 0.03)
    assert flagged_if_set_on_seen > flagged_new + 0.05  # what setting it on the rows it trained on gives
    # too few held-out rows for the rate: the largest of their scores, and a warning that says what it gives
    with pytest.warns(UserWarning, match="too few to guarantee"):
        small = anomaly.AnomalyDetector(vae, score="neg_elbo", target_fpr=0.005).fit(x)
    assert small.threshold_ == pytest.approx(float(np.max(small.anomaly_score(x[held_out]))))
    # new clean data (not what the VAE trained on): one half fits the density, the other sets the threshold
    assert len(anomaly.AnomalyDetector(vae, target_fpr=0.1).fit(new[:400]).calibration_scores_) == 200


# --- command line ----------------------------------------------------------------------------------

def _read_csv(path):
    rows = list(csv.DictReader(path.open()))
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def test_cli_score_with_known_anomalies(binarized_run, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    assert main(["score", str(binarized_run), "digits", "-o", str(out), "--anomaly-classes", "0", "--scores", "all",
                 "--num-importance-samples", "10"]) == 0
    printed = capsys.readouterr().out
    table = _read_csv(out)
    assert len(table["index"]) == 359
    for column in ("label", "known_anomaly", "neg_elbo", "neg_log_likelihood", "reconstruction_error",
                   "input_complexity", "typicality", "score"):
        assert column in table
    np.testing.assert_array_equal(table["score"], table["typicality"])  # fitted on the run's training data
    np.testing.assert_array_equal(table["known_anomaly"] == "1", table["label"] == "0")
    from sklearn.metrics import roc_auc_score

    auroc = roc_auc_score(table["known_anomaly"] == "1", table["neg_elbo"].astype(float))
    assert f"{auroc:.4f}" in printed.split("neg_elbo")[1].split("\n")[0]
    assert (tmp_path / "scores_roc.png").is_file()

    labels = tmp_path / "labels.txt"
    labels.write_text("is_anomaly\n" + "\n".join("1" if i < 30 else "0" for i in range(359)) + "\n")
    assert main(["score", str(binarized_run), "digits", "-o", str(out), "--labels", str(labels), "--scores",
                 "neg_elbo", "--score", "neg_elbo", "--roc", str(tmp_path / "roc.png")]) == 0
    table = _read_csv(out)
    assert set(table) == {"index", "label", "known_anomaly", "neg_elbo", "score"}
    assert (table["known_anomaly"] == "1").sum() == 30 and (tmp_path / "roc.png").is_file()


def test_cli_fit_detector_then_score(binarized_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(binarized_run, run)
    assert main(["fit-detector", str(run), "--target-fpr", "0.1", "--num-importance-samples", "10"]) == 0
    assert "typicality threshold" in capsys.readouterr().out
    assert (run / "anomaly_detector.json").is_file()
    out = tmp_path / "s.csv"
    assert main(["score", str(run), "digits", "-o", str(out)]) == 0
    table = _read_csv(out)
    threshold = anomaly.read_detector_state(run).threshold
    score = table["score"].astype(float)
    clear = np.abs(score - threshold) > 1e-5 * abs(threshold)  # the CSV rounds to 7 digits; the k-th example sits on it
    np.testing.assert_array_equal((table["is_anomaly"] == "1")[clear], (score > threshold)[clear])
    assert 0.05 < np.mean(table["is_anomaly"] == "1") < 0.15  # calibrated on this very test split at 10%


def test_cli_fit_detector_on_a_file_run_calibrates_on_the_held_out_rows(tmp_path, capsys):
    """Without DATA the detector is set on the rows training held out, not on the whole file (most of which trained
    the model); naming the training file itself says what that does."""
    from sklearn.datasets import load_wine

    rows = load_wine().data.astype(np.float32)
    np.save(tmp_path / "wine.npy", rows)
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "wine.npy"), "--out", str(run), "--epochs", "5", "--no-detector"]) == 0
    capsys.readouterr()
    assert main(["fit-detector", str(run), "--target-fpr", "0.06", "--score", "neg_elbo"]) == 0
    out = capsys.readouterr().out
    assert "18 examples of " in out and "wine.npy:test" in out  # 18 of 178 rows held out (test fraction 0.1)
    state = anomaly.read_detector_state(run)
    vae = vaekit.load(run)
    held_out = vaekit.load_dataset(str(tmp_path / "wine.npy"), like=vae.config_.data).source_positions("test")
    scores = anomaly.anomaly_scores(vae, rows[held_out], ["neg_elbo"])["neg_elbo"]
    assert state.threshold == pytest.approx(anomaly.threshold_for_false_positive_rate(scores, 0.06), rel=1e-5)
    assert main(["fit-detector", str(run), "--score", "neg_elbo"]) == 2  # 18 rows cannot guarantee 5%: say what can
    assert "--target-fpr 0.053 or more" in capsys.readouterr().err
    assert main(["fit-detector", str(run), str(tmp_path / "wine.npy"), "--score", "neg_elbo"]) == 0
    captured = capsys.readouterr()
    assert "178 examples" in captured.out and "holds the rows" in captured.err and "wine.npy:test" in captured.err


@pytest.mark.parametrize("args,message", [
    (["score", "{run}", "digits", "-o", "{tmp}/s.txt"], "must end in .csv"),
    (["score", "{run}", "digits", "-o", "{tmp}/s.csv", "--labels", "{tmp}/nothing.txt"], "does not exist"),
    (["score", "{run}", "digits", "-o", "{tmp}/s.csv", "--labels", "{tmp}/short.txt"], "holds 3 labels"),
    (["score", "{run}", "digits", "-o", "{tmp}/s.csv", "--anomaly-classes", "zebra"], "no example of DATA"),
    (["fit-detector", "{run}", "--target-fpr", "0.001"], "too few"),
])
def test_cli_score_errors(binarized_run, tmp_path, capsys, args, message):
    (tmp_path / "short.txt").write_text("0\n1\n0\n")
    argv = [a.format(run=binarized_run, tmp=tmp_path) for a in args]
    assert main(argv + ["--num-importance-samples", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_likelihood_ratio_detector_is_saved_with_its_background_model(binarized_run, digits, tmp_path, capsys):
    import shutil

    run, background_run = tmp_path / "run", tmp_path / "bg"
    shutil.copytree(binarized_run, run)
    perturbed = anomaly.perturb(digits.x_train.numpy(), rate=0.2, seed=1)
    vaekit.VAE(latent_dim=4, hidden=(64,), epochs=2, binarize="dynamic", seed=1, device="cpu").fit(
        perturbed).save(background_run)
    assert main(["fit-detector", str(run), "--background", str(background_run), "--target-fpr", "0.1",
                 "--num-importance-samples", "5"]) == 0
    assert "likelihood_ratio threshold" in capsys.readouterr().out
    shutil.rmtree(background_run)  # the run directory now holds everything the detector needs
    assert (run / anomaly.BACKGROUND_DIR / "model.safetensors").is_file()

    x = digits.x_test[:60].numpy()
    loaded = anomaly.AnomalyDetector.load(run)
    assert loaded.score_ == "likelihood_ratio" and loaded.background_ is not None
    expected = anomaly.anomaly_scores(loaded.vae_, x, ["likelihood_ratio"], num_importance_samples=5,
                                      background=vaekit.load(run / anomaly.BACKGROUND_DIR))["likelihood_ratio"]
    np.testing.assert_allclose(loaded.anomaly_score(x), expected)
    np.testing.assert_array_equal(loaded.predict(x), np.where(expected > loaded.threshold_, -1, 1))

    out = tmp_path / "s.csv"  # vaekit score uses the saved background without --background
    assert main(["score", str(run), "digits", "-o", str(out), "--scores", "likelihood_ratio"]) == 0
    assert "is_anomaly" in _read_csv(out) and "likelihood_ratio" in _read_csv(out)

    # Other weights in the background directory: refused, not silently used.
    vaekit.VAE(latent_dim=4, hidden=(64,), epochs=1, binarize="dynamic", seed=7, device="cpu").fit(
        perturbed[:200]).save(run / anomaly.BACKGROUND_DIR)
    with pytest.raises(CheckpointError, match="other weights than the background model"):
        anomaly.AnomalyDetector.load(run)
    assert main(["score", str(run), "digits", "-o", str(out)]) == 2
    assert "other weights than the background model" in capsys.readouterr().err
    shutil.rmtree(run / anomaly.BACKGROUND_DIR)
    with pytest.raises(CheckpointError, match="needs its background model"):
        anomaly.AnomalyDetector.load(run)
    # A background model only makes sense for the likelihood ratio.
    assert main(["fit-detector", str(run), "--background", str(binarized_run), "--score", "neg_elbo"]) == 2
    assert "--background is for --score likelihood_ratio" in capsys.readouterr().err


def test_cli_score_names_each_file_and_explains_the_flagged_ones(tmp_path, digits, capsys):
    """An image folder: the CSV names every file, --explain writes one heat-map PNG per flagged image."""
    folder = tmp_path / "images"
    for i, image in enumerate(digits.x_train.numpy()[:200]):
        sub = folder / ("odd" if i % 2 else "even")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[0] * 255).astype(np.uint8)).save(sub / f"img{i:03d}.png")
    run = tmp_path / "run"
    assert main(["train", str(folder), "--out", str(run), "--epochs", "20", "--no-progress", "--latent-dim", "4",
                 "--batch-size", "32"]) == 0
    # A new image joins the folder after training: noise, which the detector has never seen.
    noise = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "even" / "zz_noise.png")
    out, explain = tmp_path / "s.csv", tmp_path / "why"
    assert main(["score", str(run), str(folder), "-o", str(out), "--scores", "neg_elbo", "--explain", str(explain),
                 "--explain-top", "3"]) == 0
    assert "wrote 3 explanation file(s) of the 3 highest scores" in capsys.readouterr().err
    raw = out.read_bytes()
    assert b"\r" not in raw  # LF line endings
    table = _read_csv(out)
    assert len(table["file"]) == 201 and sorted(Path(f).name for f in table["file"])[-1] == "zz_noise.png"
    top = np.argsort(-table["score"].astype(float), kind="stable")[:3]
    assert Path(table["file"][top[0]]).name == "zz_noise.png"  # the noise image is the most anomalous file
    written = sorted(p.name for p in explain.iterdir())
    assert written == sorted(Path(table["file"][i]).stem + ".png" for i in top)
    with Image.open(explain / "zz_noise.png") as picture:
        assert picture.width > 2 * picture.height
