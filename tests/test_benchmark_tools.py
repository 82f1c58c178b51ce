"""The benchmarks' own bookkeeping: time to quality, medians, the speed table, merging likelihood results."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import benchmark_module


@pytest.fixture(scope="module")
def speed():
    with benchmark_module("speed") as module:
        yield module


def test_seconds_to_reach_interpolates_between_evaluations(speed):
    curve = [{"seconds": 10.0, "test_neg_elbo": 250.0}, {"seconds": 20.0, "test_neg_elbo": 240.0},
             {"seconds": 30.0, "test_neg_elbo": 235.0}]
    assert speed.seconds_to_reach(curve, 245.0) == pytest.approx(15.0)
    assert speed.seconds_to_reach(curve, 250.0) == pytest.approx(10.0)
    assert speed.seconds_to_reach(curve, 260.0) == pytest.approx(10.0)  # reached at the first evaluation
    assert speed.seconds_to_reach(curve, 230.0) is None


def test_a_run_that_never_reaches_the_target_counts_as_infinitely_slow(speed):
    assert speed.median([1.0, None, 3.0]) == 3.0
    assert speed.median([1.0, None, None]) == math.inf
    assert speed.median([]) is None


def _side(seconds_to_target: float, epochs: int, rate: float, neg_elbo: float) -> dict:
    return {"examples_per_second": rate, "seconds_to_target": seconds_to_target, "test_neg_elbo": neg_elbo,
            "epochs": epochs, "peak_rss_mb": 700.0, "settings": "s", "model_gflops": rate * 3e-6}


def test_the_table_shows_the_budget_run_and_what_3x_would_need(speed, capsys):
    results = {
        "target_neg_elbo": 242.5, "train_speedup": 1.5, "time_to_quality_speedup": 3.2,
        "time_to_quality_speedup_default_schedule": 2.8,
        "train": {"reference": _side(48.0, 12, 13000.0, 241.7), "vaekit": _side(17.1, 10, 19500.0, 239.8),
                  "vaekit-budget": _side(15.0, 6, 19500.0, 241.6)},
        "peaks": {"float32": 180.0, "bfloat16": 1.4, "sizes": {"float32": 2048, "bfloat16": 512}},
    }
    speed.print_table(results)
    out = capsys.readouterr().out
    assert "(6-epoch budget)" in out and "3.20x faster" in out and "2.80x faster" in out
    need = 3 * 13000 * speed.TRAIN_FLOP_PER_EXAMPLE / 1e9
    assert f"{need:.1f}" in out and f"{need / 180:.0%} of the float32 peak" in out


def test_likelihood_merge_adds_rows_with_matching_settings_only(tmp_path, capsys):
    with benchmark_module("likelihood") as likelihood:
        setup = likelihood.SETUPS[0]
        key = setup.fingerprint({**likelihood.FULL, "mode": "full"})
        row = {"name": setup.name, "description": setup.description, "nll": 230.0, "nll_stderr": 0.5,
               "neg_elbo": 233.0, "neg_elbo_stderr": 0.5, "kl": 10.0, "active_units": 5, "kl_per_dim": [1.0] * 50,
               "active_units_per_layer": [5], "bits_per_dim": None, "train_seconds": 100.0,
               "train": {"epochs": 100}, "fingerprint": key}
        stale = {**row, "name": likelihood.SETUPS[1].name, "fingerprint": "other settings"}
        part = tmp_path / "part.json"
        unknown = {**row, "name": "no-such-configuration"}
        part.write_text(json.dumps({"mode": "full", "results": {setup.name: row, likelihood.SETUPS[1].name: stale,
                                                                "no-such-configuration": unknown}}))
        main = tmp_path / "main.json"
        assert likelihood.main(["--json", str(main), "--merge", str(part)]) == 0
        merged = json.loads(main.read_text())["results"]
        assert list(merged) == [setup.name]  # rows trained with other settings, or unknown, are not taken
        table = (tmp_path / "main.md").read_text()
        assert "230.00 ± 0.50" in table and "(not run yet)" in table
        quick = tmp_path / "quick.json"
        quick.write_text(json.dumps({"mode": "quick", "results": {}}))
        with pytest.raises(SystemExit):
            likelihood.main(["--json", str(main), "--merge", str(quick)])
    assert "not full" in capsys.readouterr().err


def test_ablation_target_is_within_reach_of_every_rung(speed, monkeypatch):
    calls = []

    def fake_worker(kind, spec):
        calls.append(spec)
        rung = next(i for i, (_, options, undo) in enumerate(speed.LADDER)
                    if options == spec["options"] and undo == spec["undo"])
        # Later rungs learn faster; every curve improves every epoch.
        curve = [{"epoch": e, "seconds": 2.0 * e, "test_neg_elbo": 260.0 - (2.0 + rung) * e - 0.1 * spec["seed"]}
                 for e in range(1, 11)]
        return {"curve": curve, "examples": 60000 * 10, "seconds": 20.0, "test_neg_elbo": curve[-1]["test_neg_elbo"]}

    monkeypatch.setattr(speed, "run_worker", fake_worker)
    args = type("Args", (), {"ablation_repeats": 2, "ablation_epochs": 10})()
    ablation = speed.measure_ablation(args)["ablation"]
    assert len(calls) == 2 * len(speed.LADDER) and ablation["target_epoch"] == 9
    assert all(math.isfinite(rung["seconds_to_target"]) for rung in ablation["rungs"])
    assert all(len(rung["runs"]) == 2 for rung in ablation["rungs"])


def test_anomaly_benchmark_trains_its_background_model_on_a_copy_or_online(monkeypatch, tmp_path):
    with benchmark_module("anomaly") as bench:
        calls = []
        monkeypatch.setattr(bench, "train_model", lambda x, run_dir, settings, log, perturb_rate=0.0:
                            calls.append((x, perturb_rate)) or (None, 0.0))
        x = np.full((50, 1, 4, 4), 0.5, np.float32)
        for mode in ("copy", "online"):
            bench.maybe_background(x, tmp_path, {**bench.FULL, "background_perturbation": mode}, True, print)
        (copied, copy_rate), (online, online_rate) = calls
        assert copy_rate == 0.0 and abs((copied != 0.5).mean() - 0.2) < 0.03  # one fixed perturbed copy
        assert online_rate == 0.2 and online is x  # clean data; the trainer perturbs every batch
        # the published table's training settings stay pinned against later changes of the trainer's defaults
        assert bench.FULL["lr_schedule"] == "constant" and bench.FULL["adam_beta2"] == 0.999


def test_whole_process_part_alternates_caches_and_takes_medians(speed, monkeypatch, tmp_path, capsys):
    calls = []
    seconds = {"vaekit": [20.0, 22.0, 21.0], "vaekit --no-detector": [10.0, 12.0, 11.0], "plain loop": [15.0, 16.0, 14.0]}

    def fake(command):
        side = ("plain loop" if command[1].endswith("plain_loop.py") else
                "vaekit --no-detector" if "--no-detector" in command else "vaekit")
        calls.append(side)
        return {"seconds": seconds[side][sum(c == side for c in calls) - 1], "cpu_seconds": 1.0, "peak_rss_mb": 500.0,
                "detector_seconds": 9.0 if side == "vaekit" else None, "last_lines": []}

    monkeypatch.setattr(speed, "timed_process", fake)
    args = type("Args", (), {"workdir": str(tmp_path), "quick": False, "repeats": 3, "process_cases": [("mlp", 3)]})()
    case = speed.measure_process(args)["process"]["mlp-3"]
    assert calls[:3] == list(speed.PROCESS_SIDES) and calls[3:6] == list(speed.PROCESS_SIDES[::-1])
    assert case["sides"]["vaekit"]["seconds"] == 21.0 and case["sides"]["plain loop"]["seconds"] == 15.0
    assert case["speedup"] == pytest.approx(15.0 / 21.0) and case["speedup_no_detector"] == pytest.approx(15.0 / 11.0)
    assert case["sides"]["vaekit"]["detector_seconds"] == 9.0
    assert "--hidden 400 --latent-dim 20" in case["commands"]["vaekit"]
    assert case["commands"]["vaekit --no-detector"].endswith("--no-detector")
    calls.clear()
    assert speed.measure_process(args)["process"]["mlp-3"] == case and calls == []  # every run read from the cache
    speed.print_table({"process": {"mlp-3": case}})
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| whole process")]
    assert rows == [["whole process, mlp 3 epochs (s)", "15.0", "21.0", "0.71x (typicality fit 9.0 s)"],
                    ["whole process, mlp 3 epochs --no-detector (s)", "", "11.0", "1.36x"]]


def test_a_whole_process_is_timed_from_outside(speed):
    import sys

    line = "anomaly scores: fitted the typicality model on 5 training examples (1 mixture components, 2.5 s)"
    result = speed.timed_process([sys.executable, "-c", f"print({line!r})"])
    assert result["detector_seconds"] == 2.5 and result["seconds"] > 0 and result["peak_rss_mb"] > 1
    with pytest.raises(RuntimeError, match="failed"):
        speed.timed_process([sys.executable, "-c", "raise SystemExit(3)"])
