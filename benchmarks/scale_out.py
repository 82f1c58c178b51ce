"""Scale-out measurements: bf16 against fp32 on this CPU, and 2 processes (DDP, gloo) against 1.

    python benchmarks/scale_out.py --json benchmarks/results/scale_out.json     # Fashion-MNIST, 3 epochs per run
    python benchmarks/scale_out.py --part precision --epochs 1 --repeats 1 --json ...   # what the README reports
    python benchmarks/scale_out.py --part processes --epochs 2 --json ...
    python benchmarks/scale_out.py --quick                                      # digits, seconds

precision: the same seeded run (784-400-20 MLP, dynamically binarized Fashion-MNIST, batch 128, lr 1e-3)
in fp32 and under bf16 autocast, alternated ``--repeats`` times in one process; examples/s is the median
over all epochs of a setting, the test -ELBO (nats per example, one seeded posterior sample per test image)
is the one after the last epoch.
processes: ``vaekit train`` in 1 process with all cores as threads, then ``vaekit train --nproc 2``
(torchrun, gloo, cores split between the ranks), same global batch and seed; examples/s counts the
examples of all ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402


def precision_runs(data_name: str, epochs: int, repeats: int, batch_size: int) -> dict:
    import vaekit
    from vaekit.api import make_run_config
    from vaekit.training.trainer import train

    data = vaekit.load_dataset(data_name, binarize="dynamic")
    results: dict[str, dict] = {}
    for _ in range(repeats):
        for precision in ("fp32", "bf16"):
            config = make_run_config(data, latent_dim=20, hidden=(400,), arch="mlp", epochs=epochs,
                                     batch_size=batch_size, lr=1e-3, seed=0, device="cpu", precision=precision)
            started = time.perf_counter()
            _, history = train(config, data, progress=False)
            entry = results.setdefault(precision, {"examples_per_second": [], "test_neg_elbo": [], "seconds": []})
            entry["examples_per_second"] += [r["examples_per_second"] for r in history]
            entry["test_neg_elbo"].append(history[-1]["val_neg_elbo"])
            entry["seconds"].append(time.perf_counter() - started)
    for entry in results.values():
        entry["median_examples_per_second"] = statistics.median(entry["examples_per_second"])
    return results


def process_runs(data_name: str, epochs: int, batch_size: int) -> dict:
    results = {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in (1, 2):
            out = Path(tmp) / f"p{nproc}"
            command = [sys.executable, "-m", "vaekit", "train", data_name, "--out", str(out), "--epochs", str(epochs),
                       "--batch-size", str(batch_size), "--lr", "1e-3", "--hidden", "400", "--latent-dim", "20",
                       "--arch", "mlp", "--binarize", "dynamic", "--seed", "0", "--device", "cpu", "--no-progress"]
            env = dict(os.environ)
            if nproc > 1:
                command += ["--nproc", str(nproc)]
                env.pop("OMP_NUM_THREADS", None)  # the launcher gives each rank cores // nproc threads
            else:
                env["OMP_NUM_THREADS"] = str(cores)
            started = time.perf_counter()
            subprocess.run(command, env=env, check=True, capture_output=True, text=True)
            history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            results[str(nproc)] = {
                "examples_per_second": [r["examples_per_second"] for r in history],
                "median_examples_per_second": statistics.median(r["examples_per_second"] for r in history),
                "test_neg_elbo": history[-1]["val_neg_elbo"], "seconds": time.perf_counter() - started,
                "threads_per_process": max(1, cores // nproc)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits, 2 epochs, 1 repeat")
    parser.add_argument("--part", choices=("all", "precision", "processes"), default="all")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    args = parser.parse_args()
    data_name, epochs, repeats = ("digits", 2, 1) if args.quick else ("fashion-mnist", args.epochs, args.repeats)
    report = {"machine": machine(), "settings": {"data": data_name, "epochs": epochs, "repeats": repeats,
                                                 "batch_size": args.batch_size, "model": "mlp 784-400-20 bernoulli",
                                                 "binarize": "dynamic", "lr": 1e-3, "seed": 0}}
    if args.part in ("all", "precision"):
        report["precision"] = precision_runs(data_name, epochs, repeats, args.batch_size)
    if args.part in ("all", "processes"):
        report["processes"] = process_runs(data_name, epochs, args.batch_size)
    print(f"{data_name}, {epochs} epochs per run, batch {args.batch_size}; {report['machine']['cpu']}, "
          f"{report['machine']['cores']} cores")
    print(f"{'setting':<22} {'examples/s (median)':>20} {'test -ELBO (nats)':>20}")
    for precision, entry in report.get("precision", {}).items():
        elbo = " / ".join(f"{v:.2f}" for v in entry["test_neg_elbo"])
        print(f"{precision:<22} {entry['median_examples_per_second']:>20,.0f} {elbo:>20}")
    for nproc, entry in report.get("processes", {}).items():
        label = f"{nproc} process(es) x {entry['threads_per_process']} thr"
        print(f"{label:<22} {entry['median_examples_per_second']:>20,.0f} {entry['test_neg_elbo']:>20.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
