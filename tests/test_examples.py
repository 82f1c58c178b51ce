"""The scripts in examples/ run, with --quick, on the embedded data, and do what they say."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(name: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env.setdefault("OMP_NUM_THREADS", "1")  # the tests share their cores (see tests/test_docs.py)
    if (ROOT / "src" / "vaekit").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    result = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{name}: exit code {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_every_example_is_tested():
    tested = {"folder_anomaly_report.py", "likelihood_evaluation.py", "table_synthetic_report.py",
              "conditional_generation.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


@pytest.mark.slow
def test_folder_anomaly_report(tmp_path):
    result = run_example("folder_anomaly_report.py", tmp_path, "--out", "report")
    report = tmp_path / "report"
    with open(report / "scores.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 60 + 15 + 8 + 1  # held-out digits, unseen 9s, noise, blank
    assert all(Path(r["file"]).suffix == ".png" for r in rows)
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)  # most anomalous first
    flagged = {Path(r["file"]).stem for r in rows if r["is_anomaly"] == "1"}
    # Uniform noise is far from any digit: most of it must be flagged, and few of the held-out normal digits.
    noise = {f"noise_{j}" for j in range(8)}
    assert len(noise & flagged) >= 6, flagged
    assert sum(name.startswith("digit") for name in flagged) <= 10, flagged
    explanations = sorted(p.stem for p in (report / "explanations").glob("*.png"))
    assert explanations == sorted(flagged)
    assert (report / "run" / "anomaly_detector.json").is_file()
    assert "images flagged" in result.stdout


@pytest.mark.slow
def test_likelihood_evaluation(tmp_path):
    result = run_example("likelihood_evaluation.py", tmp_path, "--json", "result.json")
    summary = json.loads((tmp_path / "result.json").read_text(encoding="utf-8"))
    assert summary["importance_samples"] == 100 and summary["num_examples"] == 359  # digits' test split
    # The importance-weighted estimate is a tighter bound than the ELBO: -log p(x) <= -ELBO.
    assert 0 < summary["nll"] <= summary["neg_elbo"]
    assert summary["bits_per_dim"] is not None  # binarized data: a discrete likelihood
    assert "-log p(x)" in result.stdout
    # A second run evaluates the run the first one trained, with the same seeded numbers.
    again = run_example("likelihood_evaluation.py", tmp_path, "--json", "again.json")
    assert json.loads((tmp_path / "again.json").read_text(encoding="utf-8"))["nll"] == summary["nll"]
    assert "-log p(x)" in again.stdout


@pytest.mark.slow
def test_table_synthetic_report(tmp_path):
    import pandas as pd

    result = run_example("table_synthetic_report.py", tmp_path, "--out", "out")
    out = tmp_path / "out"
    real = pd.read_csv(out / "demo-table.csv")
    synthetic = pd.read_csv(out / "synthetic.csv")
    assert list(synthetic.columns) == list(real.columns) and len(synthetic) == int(0.8 * len(real))
    assert set(synthetic["species"].dropna()) <= set(real["species"])  # labels as written
    assert set(synthetic["long_petals"].dropna()) <= {"yes", "no"}
    report = json.loads((out / "report.json").read_text())
    assert 0.5 < report["overall_score"] <= 1.0 and report["rows_synthetic"] == len(synthetic)
    imputed = pd.read_csv(out / "imputed.csv")
    assert not imputed.isna().to_numpy().any() and len(imputed) == len(real) - int(0.8 * len(real))
    assert "quality" in result.stdout and "empty cells" in result.stdout


@pytest.mark.slow
def test_conditional_generation(tmp_path):
    from PIL import Image

    result = run_example("conditional_generation.py", tmp_path, "--out", "pictures", "--per-label", "4")
    grid = Image.open(tmp_path / "pictures" / "per_label.png")
    transfer = Image.open(tmp_path / "pictures" / "transfer.png")
    # digits' 8x8 images tiled with 2-pixel gaps (then scaled up by a whole factor): 10 rows (classes) of 4 samples,
    # and 4 rows (originals, then 3 classes) of 8.
    scale = transfer.size[0] // (8 * 10 + 2)
    assert transfer.size == (scale * (8 * 10 + 2), scale * (4 * 10 + 2))
    assert grid.size == (scale * (4 * 10 + 2), scale * (10 * 10 + 2))
    share = float(result.stdout.split("class asked for: ")[1].split("%")[0]) / 100
    assert share > 0.2  # 5 epochs; chance is 0.1 (the full run: see the script's docstring)
