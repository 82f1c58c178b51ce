"""The synthetic-data quality report: each metric against values worked out by hand on tiny tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp
from threadpoolctl import threadpool_limits

from vaekit.errors import DataError
from vaekit.generation.report import (
    COLUMN_KINDS, format_summary, ks_complement, quality_report, tv_complement, write_report)


@pytest.fixture(autouse=True)
def one_thread():
    with threadpool_limits(1):  # the classifiers stay on one core
        yield


def ecdf_distance(a, b) -> float:
    """The KS statistic by hand: the largest gap between the two empirical CDFs over all observed points."""
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    return max(abs(np.searchsorted(a, x, side="right") / len(a) - np.searchsorted(b, x, side="right") / len(b))
               for x in points)


def mixed_table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({"x": x, "y": 2 * x + rng.normal(size=n), "k": rng.integers(0, 4, n),
                         "flag": rng.random(n) < 0.3, "colour": rng.choice(["red", "green", "blue"], n)})


KINDS = {"x": "continuous", "y": "continuous", "k": "integer", "flag": "boolean", "colour": "categorical"}


def test_ks_complement_is_one_minus_the_hand_computed_statistic():
    real, synth = [1.0, 2.0, 3.0, 4.0, 7.5], [3.0, 4.0, 5.0, 6.0]
    # CDF gaps: at 2 the real CDF is 2/5 and the synthetic 0; at 3 it is 3/5 vs 1/4; at 4 4/5 vs 2/4 -> 0.4 at most
    assert ecdf_distance(real, synth) == pytest.approx(0.4)
    assert ks_2samp(real, synth).statistic == pytest.approx(0.4)
    assert ks_complement(real, synth + [np.nan]) == pytest.approx(0.6)  # the missing value is left out
    report = quality_report(pd.DataFrame({"v": real}), pd.DataFrame({"v": synth + [np.nan]}), {"v": "continuous"})
    assert report["column_shapes"]["v"] == {"metric": "KSComplement", "score": pytest.approx(0.6),
                                            "missing_rate_real": 0.0, "missing_rate_synthetic": 0.2}


def test_tv_complement_on_categories_and_label_normalisation():
    assert tv_complement(["a", "a", "b"], ["a", "b", "b"]) == pytest.approx(1 - 0.5 * (1 / 3 + 1 / 3))
    # 1, 1.0 and "1.0" are the label "1"; 2 and "2" are "2": real 1,1,2 vs synthetic 1,2,2 -> 2/3 again
    real = pd.DataFrame({"c": [1, 1.0, "2"], "b": [True, False, None]})
    synth = pd.DataFrame({"c": ["1.0", 2, "2"], "b": ["true", 0, 1]})
    report = quality_report(real, synth, {"c": "categorical", "b": "boolean"})
    assert report["column_shapes"]["c"]["score"] == pytest.approx(2 / 3)
    # boolean: real True/False at 1/2 each (None left out), synthetic True 2/3, False 1/3 -> 1 - 1/6
    assert report["column_shapes"]["b"] == {"metric": "TVComplement", "score": pytest.approx(5 / 6),
                                            "missing_rate_real": pytest.approx(1 / 3), "missing_rate_synthetic": 0.0}


def test_correlation_similarity_of_opposite_trends_is_zero_and_partial_as_defined():
    a = np.arange(1.0, 7.0)
    real = pd.DataFrame({"a": a, "b": 3 * a + 1})
    flipped = quality_report(real, pd.DataFrame({"a": a, "b": -a}), {"a": "continuous", "b": "continuous"})
    assert flipped["column_pair_trends"]["a|b"] == {"metric": "CorrelationSimilarity", "score": pytest.approx(0.0)}
    noisy_b = np.array([1.0, 3.0, 2.0, 5.0, 4.0, 6.0, np.nan])
    synth = pd.DataFrame({"a": np.r_[a, 9.0], "b": noisy_b})  # the row with a missing b is left out of r
    r = np.corrcoef(a, noisy_b[:6])[0, 1]
    report = quality_report(real, synth, {"a": "continuous", "b": "continuous"})
    assert report["column_pair_trends"]["a|b"]["score"] == pytest.approx(1 - abs(1 - r) / 2)


def test_contingency_similarity_on_a_two_by_two_table():
    real = pd.DataFrame({"p": ["x", "x", "y", "y"], "q": ["u", "u", "v", "v"]})
    synth = pd.DataFrame({"p": ["x", "x", "y", "y"], "q": ["u", "v", "v", "v"]})
    # joint frequencies real (x,u) 1/2, (y,v) 1/2; synthetic (x,u) 1/4, (x,v) 1/4, (y,v) 1/2
    expected = 1 - 0.5 * (abs(0.5 - 0.25) + abs(0 - 0.25) + abs(0.5 - 0.5))
    report = quality_report(real, synth, {"p": "categorical", "q": "categorical"})
    assert report["column_pair_trends"]["p|q"] == {"metric": "ContingencySimilarity", "score": pytest.approx(0.75)}
    assert expected == 0.75


def test_contingency_bins_come_from_the_real_column_and_outliers_go_to_the_end_bins():
    real = pd.DataFrame({"v": [0.0, 10.0, 0.5, 9.5], "c": ["lo", "hi", "lo", "hi"]})
    synth = pd.DataFrame({"v": [-50.0, 100.0, 0.2, 9.9], "c": ["lo", "hi", "lo", "hi"]})
    report = quality_report(real, synth, {"v": "continuous", "c": "categorical"})
    assert report["column_pair_trends"]["v|c"]["score"] == pytest.approx(1.0)  # bins 0 and 9 in both
    shifted = pd.DataFrame({"v": [5.2, 5.2, 0.2, 9.9], "c": ["lo", "hi", "lo", "hi"]})  # bin 5: (5,lo), (5,hi)
    report = quality_report(real, shifted, {"v": "continuous", "c": "categorical"})
    assert report["column_pair_trends"]["v|c"]["score"] == pytest.approx(1 - 0.5 * (0.25 + 0.25 + 0.25 + 0.25))


def test_identical_tables_score_one_and_are_not_detected_while_a_shift_is():
    real = mixed_table(300)
    report = quality_report(real, real.copy(), KINDS, seed=1)
    assert all(v["score"] == pytest.approx(1.0) for v in report["column_shapes"].values())
    assert all(v["score"] == pytest.approx(1.0) for v in report["column_pair_trends"].values())
    assert len(report["column_pair_trends"]) == 10
    assert report["overall_score"] == pytest.approx(1.0)
    detection = report["detection"]
    assert detection["classifier"] == "HistGradientBoostingClassifier"
    assert 0.35 < detection["auroc"] < 0.65 and detection["score"] > 0.7
    shifted = real.assign(x=real["x"] + 50.0, y=real["y"] - 50.0)
    far = quality_report(real, shifted, KINDS, seed=1)
    assert far["detection"]["auroc"] > 0.95 and far["detection"]["score"] < 0.1
    assert far["column_shapes"]["x"]["score"] == pytest.approx(0.0)
    assert far["column_pair_trends"]["x|y"]["score"] == pytest.approx(1.0)  # the shift keeps the correlation


def test_missing_values_are_counted_exactly_and_break_nothing():
    real = pd.DataFrame({"n": [1.0, np.nan, 3.0, 4.0, 5.0, None, 7.0, 8.0],
                         "i": pd.array([1, 2, pd.NA, 2, 1, 2, 1, 2], dtype="Int64"),
                         "c": ["a", None, "b", pd.NA, "a", "b", np.nan, "a"]})
    synth = pd.DataFrame({"n": [np.nan] * 4, "i": [1, 2, 2, np.inf], "c": ["a", "a", None, "b"]})
    kinds = {"n": "continuous", "i": "integer", "c": "categorical"}
    report = quality_report(real, synth, kinds)
    shapes = report["column_shapes"]
    assert (shapes["n"]["missing_rate_real"], shapes["n"]["missing_rate_synthetic"]) == (0.25, 1.0)
    assert (shapes["i"]["missing_rate_real"], shapes["i"]["missing_rate_synthetic"]) == (0.125, 0.25)  # inf: missing
    assert (shapes["c"]["missing_rate_real"], shapes["c"]["missing_rate_synthetic"]) == (0.375, 0.25)
    assert shapes["n"]["score"] is None  # nothing to compare with
    assert report["column_pair_trends"]["n|i"]["score"] is None
    assert report["column_shapes_score"] == pytest.approx(np.mean([shapes["i"]["score"], shapes["c"]["score"]]))
    json.dumps(report, allow_nan=False)
    assert 0.0 <= report["detection"]["auroc"] <= 1.0


def test_a_constant_column_leaves_its_correlation_out_of_the_mean():
    real = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [2.0, 4.0, 6.0, 8.0], "z": [5.0] * 4})
    report = quality_report(real, real.copy(), {"a": "continuous", "b": "continuous", "z": "continuous"})
    trends = report["column_pair_trends"]
    assert trends["a|z"]["score"] is None and trends["b|z"]["score"] is None
    assert trends["a|b"]["score"] == pytest.approx(1.0) and report["column_pair_trends_score"] == pytest.approx(1.0)


def _task(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    return pd.DataFrame({"x1": x1, "x2": x2, "g": rng.choice(["p", "q"], n),
                         "label": np.where(x1 + 0.5 * x2 > 0, "yes", "no"), "value": 3 * x1 - x2})


def test_ml_efficacy_compares_synthetic_with_real_training_rows():
    real, holdout = _task(240, 1), _task(120, 2)
    holdout.loc[0, "label"] = None  # rows without a target are not scored
    kinds = {"x1": "continuous", "x2": "continuous", "g": "categorical", "label": "categorical"}
    same = quality_report(real, real.copy(), kinds, target="label", holdout=holdout)["ml_efficacy"]
    assert (same["task"], same["metric"]) == ("classification", "macro_f1")
    assert same["real"] > 0.8 and same["ratio"] == pytest.approx(1.0)
    shuffled = real.assign(label=np.random.default_rng(0).permutation(real["label"].to_numpy()))
    worse = quality_report(real, shuffled, kinds, target="label", holdout=holdout)["ml_efficacy"]
    assert worse["synthetic"] < worse["real"] - 0.3 and worse["ratio"] < 0.7
    kinds = {"x1": "continuous", "x2": "continuous", "value": "continuous"}
    regression = quality_report(real, real.copy(), kinds, target="value", holdout=holdout)["ml_efficacy"]
    assert (regression["task"], regression["metric"]) == ("regression", "r2")
    assert regression["real"] > 0.8 and regression["ratio"] == pytest.approx(1.0)
    assert quality_report(real, real, kinds, target="value")["ml_efficacy"] is None  # no holdout


@pytest.mark.parametrize("change, message", [
    (lambda r, s, k: (r, s.drop(columns="colour"), k), "'colour' is missing from the synthetic table"),
    (lambda r, s, k: (r.iloc[:0], s, k), "real table is empty"),
    (lambda r, s, k: (r, s, {**k, "x": "gaussian"}), "column 'x' has unknown kind 'gaussian'"),
    (lambda r, s, k: (r, s.assign(k="many"), k), "column 'k' of the synthetic table is integer but holds 'many'"),
    (lambda r, s, k: (r, s, {}), "kinds must map"),
])
def test_bad_input_is_a_one_line_data_error_naming_the_problem(change, message):
    real = mixed_table(10)
    real_, synth, kinds = change(real, real.copy(), dict(KINDS))
    with pytest.raises(DataError, match=message) as caught:
        quality_report(real_, synth, kinds)
    assert "\n" not in str(caught.value)
    with pytest.raises(DataError, match="target 'nope'"):
        quality_report(real, real, KINDS, target="nope", holdout=real)
    assert set(KINDS.values()) == set(COLUMN_KINDS)


def test_write_report_round_trips_the_scores_and_draws_every_column(tmp_path):
    real = mixed_table(60)
    real.loc[::5, "colour"] = None
    synth = mixed_table(50, seed=4)
    report = quality_report(real, synth, KINDS)
    paths = write_report(report, real, synth, KINDS, tmp_path / "out")
    assert [p.name for p in paths] == ["report.json", "report.md", "marginals.png"]
    assert json.loads(paths[0].read_text()) == report
    assert "| colour | TVComplement |" in paths[1].read_text()
    png = paths[2].read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    summary = format_summary(report)
    assert f"quality {report['overall_score']:.3f}" in summary and "AUROC" in summary
    assert len(summary.splitlines()) <= 6
