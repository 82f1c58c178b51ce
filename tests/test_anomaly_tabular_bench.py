"""benchmarks/anomaly_tabular.py's bookkeeping: the WBC split, the JSON it writes, its cache and resumption."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import benchmark_module

pytest.importorskip("pyod", reason="the tabular anomaly benchmark compares with PyOD: pip install -e '.[bench]'")

DETECTORS = "vaekit,vaekit:neg_elbo,pyod:ECOD,pyod:IForest"


def test_quick_run_on_breast_cancer_writes_every_number_and_resumes_from_its_cache(tmp_path, capsys):
    from sklearn.datasets import load_breast_cancer
    from sklearn.metrics import roc_auc_score

    with benchmark_module("anomaly_tabular") as bench:
        out = tmp_path / "result.json"
        args = ["--quick", "--tables", "breast-cancer", "--detectors", DETECTORS, "--work-dir", str(tmp_path / "work"),
                "--json", str(out)]
        assert bench.main(args) == 0
        first = capsys.readouterr()
        summary = json.loads(out.read_text())

        # The ODDS WBC protocol, counted independently: 357 benign rows (60% train), 10% of that many malignant ones.
        x, y = load_breast_cancer(return_X_y=True)
        benign = int((y == 1).sum())
        n_train, anomalies = round(0.6 * benign), round(0.1 * benign)
        assert (benign, n_train, anomalies) == (357, 214, 36)
        data = bench.split("breast-cancer", x, y, None, 0, summary["settings"])
        assert set(data["train_rows"]) <= set(np.flatnonzero(y == 1))
        assert not set(data["train_rows"]) & set(data["test_rows"])
        assert set(data["test_rows"][data["is_anomaly"]]) <= set(np.flatnonzero(y == 0))
        np.testing.assert_allclose(data["x_train"].mean(0), 0.0, atol=1e-4)  # standardized with the training rows

        assert {"machine", "settings", "detectors", "versions", "tables", "mean_auroc"} <= set(summary)
        assert (summary["results_computed_this_run"], summary["results_from_cache"]) == (4, 0)
        assert summary["settings"]["seeds"] == [0]
        table = summary["tables"]["breast-cancer"]
        assert set(table) == {"units", "mean", "targets"}
        (unit,) = table["units"]
        assert (unit["train_rows"], unit["test_rows"], unit["anomalies"]) == (n_train, benign - n_train + anomalies,
                                                                              anomalies)
        assert list(unit["results"]) == DETECTORS.split(",")
        for result in unit["results"].values():
            assert result["error"] is None
            assert 0.5 < result["auroc"] <= 1.0 and 0.0 < result["auprc"] <= 1.0
            assert result["fit_seconds"] >= 0 and result["score_seconds"] >= 0
        # 214 training rows: the data-scaled default (batch 27, 8 steps an epoch, 250 epochs) gives 2,000 steps
        assert unit["results"]["vaekit"]["info"]["optimizer_steps"] == 2000
        assert table["mean"]["pyod:ECOD"]["auroc"] == unit["results"]["pyod:ECOD"]["auroc"]  # one class, one seed
        assert summary["mean_auroc"]["breast-cancer"]["vaekit"] == unit["results"]["vaekit"]["auroc"]

        # ECOD is deterministic: its AUROC, computed here on the same split, is the one in the JSON.
        from pyod.models.ecod import ECOD

        ecod = ECOD().fit(data["x_train"]).decision_function(data["x_test"])
        assert unit["results"]["pyod:ECOD"]["auroc"] == pytest.approx(roc_auc_score(data["is_anomaly"], ecod))
        t = table["targets"]
        assert t["best_pyod"] in ("pyod:ECOD", "pyod:IForest")
        assert t["within_0.02_of_best_pyod"] == (t["vaekit_auroc"] - t["best_pyod_auroc"] >= -0.02)

        # A second run finds every result in the cache: it runs nothing and reports the same numbers.
        assert "breast-cancer class None seed 0" in first.err
        assert bench.main(args) == 0
        second = capsys.readouterr()
        assert "seed 0:" not in second.err
        again = json.loads(out.read_text())
        assert (again["results_computed_this_run"], again["results_from_cache"]) == (0, 4)
        assert again["tables"] == summary["tables"]
        assert "vaekit default (typicality)" in second.out and "PyOD ECOD" in second.out
