"""Fuzzing at scale: the properties of tests/test_fuzz.py with many more (fresh random) examples.

Runs tests/test_fuzz.py under pytest with ``VAEKIT_FUZZ_EXAMPLES=N`` (every property tries N examples, the
slow ones a fixed share of N: fitting a VAE on a DataFrame 5%, the service 10% per operation and mode),
``VAEKIT_FUZZ_COLLECT=1`` (a broken property is recorded and the run goes on, instead of stopping at the
first) and writes what the test file counted: generated inputs per input path and their outcomes (loaded,
which VaekitError, which HTTP status), and every failure found (zero expected), with where it was raised.

    python benchmarks/fuzz.py --examples 2000 --json benchmarks/results/fuzz.json
    python benchmarks/fuzz.py --quick          # 200 examples per property, a minute or two
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples per property (default 2000)")
    parser.add_argument("--quick", action="store_true", help="200 examples per property")
    parser.add_argument("--hang-seconds", type=float, default=60.0, help="an example running longer is a hang")
    parser.add_argument("-k", dest="select", default=None, help="only the properties pytest -k selects")
    parser.add_argument("--json", default=str(HERE / "results" / "fuzz.json"), help="where to write the results")
    args = parser.parse_args(argv)
    examples = 200 if args.quick else args.examples
    if examples < 1:
        parser.error("--examples must be at least 1")

    from common import log, machine

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "fuzz.json"
        env = {**os.environ, "VAEKIT_FUZZ_EXAMPLES": str(examples), "VAEKIT_FUZZ_COLLECT": "1",
               "VAEKIT_FUZZ_REPORT": str(report), "VAEKIT_FUZZ_HANG_SECONDS": str(args.hang_seconds)}
        command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-W", "ignore::RuntimeWarning",
                   str(ROOT / "tests" / "test_fuzz.py")] + (["-k", args.select] if args.select else [])
        log(f"fuzz: {examples} examples per property: {' '.join(command[2:])}")
        started = time.perf_counter()
        finished = subprocess.run(command, cwd=ROOT, env=env)
        seconds = time.perf_counter() - started
        if not report.is_file():
            log(f"fuzz: pytest exited with {finished.returncode} before writing its counts")
            return finished.returncode or 1
        counted = json.loads(report.read_text())

    paths = counted["paths"]
    failures = counted["failures"]
    result = {
        "benchmark": "fuzz",
        "description": "tests/test_fuzz.py's properties (mixed tables, run-directory state, the service's OpenAPI "
                       "schema via schemathesis) with many fresh random examples; every input counted per path",
        "examples_per_property": examples,
        "seconds": round(seconds, 1),
        "pytest_exit_code": finished.returncode,
        "inputs": sum(p["inputs"] for p in paths.values()),
        "failures_found": len(failures),
        "paths": paths,
        "failures": failures,
        "machine": machine(),
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    from vaekit.fileio import atomic_write_json

    atomic_write_json(out, result)

    width = max(len(name) for name in paths)
    print(f"\n{'path':<{width}}  {'inputs':>7}  {'failures':>8}")
    for name, row in paths.items():
        print(f"{name:<{width}}  {row['inputs']:>7}  {row['failures']:>8}")
    print(f"{'all':<{width}}  {result['inputs']:>7}  {len(failures):>8}   ({seconds:.0f} s; {out})")
    for failure in failures[:20]:
        print(f"FAILURE {failure['path']}: {failure['problem']}")
    return 0 if not failures and finished.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
