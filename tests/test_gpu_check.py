"""benchmarks/gpu_check.py, the script a lent GPU runs, works end to end: here CPU against CPU, where every
parity check must be exact (the same weights and draws on the same device)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_check_runs_on_the_cpu_and_its_parity_checks_are_exact(tmp_path, capsys):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(BENCHMARKS))
    gpu_check.RESULTS.clear()
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--device", "cpu", "--quick", "--skip-speed", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    checks = {r["check"]: r for r in report["results"]}
    parity = [r for name, r in checks.items() if name.startswith("parity:")]
    assert len(parity) == len(gpu_check.PARITY_MODELS)
    assert all(r["ok"] and r["worst_relative_difference"] == 0.0 for r in parity)  # same device: bit-identical
    assert checks["train:fp32"]["ok"] and checks["train:bf16"]["ok"] and checks["iwae"]["ok"]
    assert checks["nccl"]["ok"] is None and checks["train:fp16"]["ok"] is None  # CUDA-only paths say so
    assert report["failed"] == []


def test_conv_and_ladder_speed_rows_train_and_respect_the_time_budget():
    import math

    import numpy as np
    import torch

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(BENCHMARKS))
    rng = np.random.default_rng(0)
    train = rng.random((256, 1, 28, 28), dtype=np.float32)
    test = rng.random((32, 1, 28, 28), dtype=np.float32)
    gpu_check.RESULTS.clear()
    gpu_check.check_conv_speed(train, test, torch.device("cpu"), True, math.inf)
    rows = {r["check"]: r for r in gpu_check.RESULTS}
    trained = [name for name in rows if name.count(":") == 3]
    assert sorted(trained) == sorted(f"speed:{net}:{p}:{side}" for net, sides in
                                     (("conv", ("plain-loop", "vaekit")), ("ladder", ("vaekit",)))
                                     for p in ("fp32", "bf16") for side in sides)
    for name in trained:  # each side trained its own model and scored it on the test images
        assert rows[name]["ok"] and rows[name]["examples_per_second"] > 0
        assert 0 < rows[name]["test_neg_elbo"] < 28 * 28 * math.log(2) * 2
    assert rows["speed:ladder-iwae"]["images_per_second"] > 0
    gpu_check.RESULTS.clear()
    gpu_check.check_conv_speed(train, test, torch.device("cpu"), True, -math.inf)  # no time left: every row says so
    assert len(gpu_check.RESULTS) == 7 and all(r["ok"] is None and "budget" in r["detail"] for r in gpu_check.RESULTS)
