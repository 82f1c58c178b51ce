"""Scale-out measurements: bf16 against fp32 on this CPU, and 2 processes (DDP, gloo) against 1.

    python benchmarks/scale_out.py --json benchmarks/results/scale_out.json     # Fashion-MNIST, 3 epochs per run
    python benchmarks/scale_out.py --part precision --epochs 1 --repeats 1 --json ...   # what the README reports
    python benchmarks/scale_out.py --part processes --epochs 2 --json ...
    python benchmarks/scale_out.py --quick                                      # digits, seconds
    python benchmarks/scale_out.py --soak 100 --json benchmarks/results/scale_out_soak.json   # launch reliability

precision: the same seeded run (784-400-20 MLP, dynamically binarized Fashion-MNIST, batch 128, lr 1e-3)
in fp32 and under bf16 autocast, alternated ``--repeats`` times in one process; examples/s is the median
over all epochs of a setting, the test -ELBO (nats per example, one seeded posterior sample per test image)
is the one after the last epoch.
processes: ``vaekit train`` in 1 process with all cores as threads, then ``vaekit train --nproc 2``
(torchrun, gloo, cores split between the ranks), same global batch and seed; examples/s counts the
examples of all ranks.
soak: N consecutive 2-process launches of ``vaekit train digits`` (1 epoch; every third one then resumed
for a second epoch; every fifth launch instead two torchrun agents with --nnodes 2 on loopback), each checked
for exit status 0 and a complete run directory; failures are counted and their logs kept. Progress is kept in
--soak-dir, so an interrupted soak continues where it stopped.
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


SOAK_MODEL = ["--latent-dim", "4", "--hidden", "64", "--batch-size", "64", "--no-progress", "--device", "cpu",
              "--seed", "3"]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(args: list[str], log_path: Path, nodes: int = 1) -> int:
    """One launch (one agent, or ``nodes`` agents on loopback started together); the worst exit status."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    port = _free_port()
    if nodes == 1:
        commands = [[sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                     "--master-port", str(port), "-m", "vaekit", *args]]
    else:
        commands = [[sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc-per-node", "1",
                     "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
                     "-m", "vaekit", *args] for rank in range(nodes)]
    with open(log_path, "w") as log:
        procs = [subprocess.Popen(c, env=env, stdout=log, stderr=subprocess.STDOUT) for c in commands]
        codes = [p.wait(timeout=600) for p in procs]
    return max(codes, key=abs)


def soak(launches: int, work: Path) -> dict:
    """``launches`` launches as the module docstring says; resumable through work/progress.json."""
    import shutil

    work.mkdir(parents=True, exist_ok=True)
    progress_path = work / "progress.json"
    done = json.loads(progress_path.read_text()) if progress_path.is_file() else {"results": []}
    for i in range(len(done["results"]), launches):
        out = work / "run"
        shutil.rmtree(out, ignore_errors=True)
        nodes = 2 if i % 5 == 4 else 1
        entry = {"launch": i + 1, "nodes": nodes, "resumed": i % 3 == 2, "failures": []}
        started = time.perf_counter()
        steps = [("train", ["train", "digits", "--out", str(out), "--epochs", "1", *SOAK_MODEL])]
        if entry["resumed"]:
            steps.append(("resume", ["train", "digits", "--out", str(out), "--resume", "--epochs", "2", *SOAK_MODEL]))
        for name, args in steps:
            log_path = work / f"log-{i + 1}-{name}.txt"
            code = _torchrun(args, log_path, nodes)
            complete = (out / "model.safetensors").is_file() and (out / "metrics.jsonl").is_file()
            if code != 0 or not complete:
                entry["failures"].append({"step": name, "exit_code": code, "log": str(log_path)})
                break
            log_path.unlink()
        entry["seconds"] = time.perf_counter() - started
        done["results"].append(entry)
        progress_path.write_text(json.dumps(done, indent=1) + "\n")
        status = "ok" if not entry["failures"] else f"FAILED ({entry['failures'][0]['step']})"
        print(f"launch {i + 1}/{launches}: {nodes} node(s), {'train + resume' if entry['resumed'] else 'train'}: "
              f"{status}, {entry['seconds']:.1f} s", flush=True)
    results = done["results"][:launches]
    return {"launches": len(results), "torchrun_invocations": sum(1 + r["resumed"] for r in results),
            "two_node_launches": sum(r["nodes"] == 2 for r in results),
            "resumes": sum(r["resumed"] for r in results),
            "failed_launches": sum(bool(r["failures"]) for r in results),
            "failures": [f | {"launch": r["launch"]} for r in results for f in r["failures"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits, 2 epochs, 1 repeat")
    parser.add_argument("--part", choices=("all", "precision", "processes"), default="all")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    parser.add_argument("--soak", type=int, metavar="N", help="only the soak: N consecutive launches (see above)")
    parser.add_argument("--soak-dir", default="runs/bench-soak", help="where the soak keeps its progress and logs")
    args = parser.parse_args()
    if args.soak:
        report = {"machine": machine(), "settings": {"data": "digits", "model_options": SOAK_MODEL,
                                                     "processes": 2, "resume_every": 3, "two_nodes_every": 5}}
        report["soak"] = soak(args.soak, Path(args.soak_dir))
        result = report["soak"]
        print(f"{result['launches']} launches ({result['two_node_launches']} on 2 nodes, {result['resumes']} resumed, "
              f"{result['torchrun_invocations']} torchrun runs): {result['failed_launches']} failed")
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        return
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
