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
