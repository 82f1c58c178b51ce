"""Fault injection: SIGKILL `vaekit train` at random moments, resume it with --resume, compare with an unbroken run.

Each training process is a real process (forked from a server that has imported vaekit, so a start
costs milliseconds, not the seconds of importing torch) running the real command line,
``vaekit train digits --out RUN ... --resume``. It is killed with SIGKILL after a random delay
(uniform in [0, --max-delay]), the run directory is audited (every file whole: config.json and
metrics.jsonl parse, model.safetensors loads, the checkpoint that checkpoint.json names loads,
the PNGs open), and training is started again with --resume, until the kill budget is spent;
then the run is left to finish. A round ends when a run finishes; its final weights, optimizer
state and metrics must equal bit for bit those of an uninterrupted run with the same seed.
Kills before the first checkpoint exercise "--resume with no complete checkpoint starts over".

    python benchmarks/fault_injection.py --kills 100 --json benchmarks/results/fault_injection.json
    python benchmarks/fault_injection.py --quick          # 10 kills
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The server that forks the training processes imports these once.
PRELOAD = ["torch._dynamo", "vaekit.cli", "vaekit.cli.train", "vaekit.training.trainer", "vaekit.api", "vaekit.plots", "sklearn.datasets",
           "matplotlib.figure", "matplotlib.backends.backend_agg"]

DEFAULT_TRAIN_ARGS = ["--epochs", "3", "--batch-size", "64", "--latent-dim", "4", "--hidden", "32", "--seed", "3",
                      "--device", "cpu", "--checkpoint-every", "1", "--no-progress"]


def _train_child(argv: list[str], log_path: str, threads: int) -> None:
    """The training process: ``vaekit train`` with its output in a log file."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import torch

    torch.set_num_threads(threads)
    from vaekit.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _noop() -> None:
    pass


class Launcher:
    """Starts training processes from a forkserver that has vaekit imported."""

    def __init__(self, data: str, train_args: list[str], threads: int = 1) -> None:
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(PRELOAD)
        self.data, self.train_args, self.threads = data, list(train_args), threads

    def warm_up(self) -> None:
        """Start the fork server (it imports PRELOAD, seconds) so that no timing includes it."""
        process = self.context.Process(target=_noop, daemon=True)
        process.start()
        process.join()

    def start(self, run_dir: Path, log_path: Path) -> multiprocessing.Process:
        argv = ["train", self.data, "--out", str(run_dir), *self.train_args, "--resume"]
        process = self.context.Process(target=_train_child, args=(argv, str(log_path), self.threads), daemon=True)
        process.start()
        return process


def audit_run_dir(run_dir: Path) -> dict[str, Any]:
    """Check that every file of a (killed) run directory is whole; return what was found.

    Leftover ``.*.tmp`` files (a write cut short) are counted, not failures: they are never read.
    """
    from PIL import Image

    from vaekit.training import checkpoint as ckpt
    from vaekit.config import RunConfig

    found: dict[str, Any] = {"temp_files": 0, "checkpoint_step": None, "problems": []}
    if not run_dir.exists():
        return found
    found["temp_files"] = sum(1 for p in run_dir.rglob(".*.tmp"))
    try:
        if (run_dir / ckpt.CONFIG_FILE).exists():
            RunConfig.from_dict(json.loads((run_dir / ckpt.CONFIG_FILE).read_text()))
        if (run_dir / ckpt.METRICS_FILE).exists():
            for line in (run_dir / ckpt.METRICS_FILE).read_text().splitlines():
                json.loads(line)
        if (run_dir / ckpt.MODEL_FILE).exists():
            ckpt.load_tensors(run_dir / ckpt.MODEL_FILE)
        saved = ckpt.load_checkpoint(run_dir)
        if saved is not None:
            found["checkpoint_step"] = saved["state"]["global_step"]
        for png in run_dir.glob("*.png"):
            with Image.open(png) as img:
                img.load()
    except Exception as err:  # noqa: BLE001 - any failure here is what the audit reports
        found["problems"].append(f"{type(err).__name__}: {err}")
    return found


def final_state(run_dir: Path) -> dict[str, Any]:
    """What must match between runs: final weights, the last checkpoint's tensors and state, the metrics."""
    from vaekit.training import checkpoint as ckpt

    saved = ckpt.load_checkpoint(run_dir)
    timing = {"seconds", "examples_per_second"}
    state = {k: v for k, v in saved["state"].items() if k not in ("epoch_seconds", "history")}
    return {
        "model": ckpt.load_tensors(run_dir / ckpt.MODEL_FILE),
        "checkpoint_model": saved["model"],
        "optimizer": saved["optimizer"]["state"],
        "tensors": saved["tensors"],
        "state": state,
        "metrics": [{k: v for k, v in r.items() if k not in timing} for r in ckpt.read_metrics(run_dir)],
    }


def differences(reference: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """Names of everything that differs (tensors compared bit for bit); empty when identical."""
    import torch

    diffs = []
    for part in ("model", "checkpoint_model", "tensors"):
        if set(reference[part]) != set(other[part]):
            diffs.append(f"{part}: different tensor names")
            continue
        diffs += [f"{part}.{name}" for name, value in reference[part].items()
                  if not (value.dtype == other[part][name].dtype and value.shape == other[part][name].shape
                          and torch.equal(value, other[part][name]))]
    ref_opt, opt = reference["optimizer"], other["optimizer"]
    for index, values in ref_opt.items():
        for key, value in values.items():
            mine = opt.get(index, {}).get(key)
            same = torch.equal(value, mine) if isinstance(value, torch.Tensor) and isinstance(mine, torch.Tensor) \
                else value == mine
            if not same:
                diffs.append(f"optimizer.{index}.{key}")
    for part in ("state", "metrics"):
        if reference[part] != other[part]:
            diffs.append(part)
    return diffs


def run_kill_loop(kills: int, *, max_delay: float | None = None, seed: int = 0, data: str = "digits",
                  train_args: list[str] | None = None, workdir: str | Path | None = None, threads: int = 1,
                  time_limit: float = 3600.0, log=print) -> dict[str, Any]:
    """Kill training ``kills`` times at random moments; every round's result is compared with the reference."""
    train_args = DEFAULT_TRAIN_ARGS if train_args is None else train_args
    rng = random.Random(seed)
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="vaekit-faults-")) if own_dir else Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    launcher = Launcher(data, train_args, threads)
    launcher.warm_up()
    started = time.perf_counter()
    try:
        # The reference: one uninterrupted run (started with --resume on an empty directory, as the others).
        t0 = time.perf_counter()
        process = launcher.start(root / "reference", root / "reference.log")
        process.join()
        reference_seconds = time.perf_counter() - t0
        if process.exitcode != 0:
            raise RuntimeError(f"the reference run failed ({process.exitcode}): {(root / 'reference.log').read_text()}")
        reference = final_state(root / "reference")
        if max_delay is None:
            max_delay = reference_seconds / 2
        log(f"reference run: {reference_seconds:.2f} s; kill delays uniform in [0, {max_delay:.2f}] s")

        rounds: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        done_kills = 0
        def budget_left() -> bool:
            return done_kills < kills and time.perf_counter() - started < time_limit

        while budget_left() or (rounds and rounds[-1].get("identical") is None):
            run_dir = root / f"round-{len(rounds) + 1}"
            if not rounds or rounds[-1].get("identical") is not None:
                rounds.append({"round": len(rounds) + 1, "kills": 0, "identical": None, "problems": []})
            current = rounds[-1]
            process = launcher.start(run_dir, root / f"round-{current['round']}.log")
            delay = rng.uniform(0.0, max_delay) if budget_left() else None
            process.join(delay)
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
                process.join()
                done_kills += 1
                current["kills"] += 1
                audit = audit_run_dir(run_dir)
                events.append({"kill": done_kills, "round": current["round"], "delay_s": round(delay, 4), **audit})
                current["problems"] += audit["problems"]
                continue
            if process.exitcode != 0:
                log_text = (root / f"round-{current['round']}.log").read_text()[-2000:]
                current["problems"].append(f"exit code {process.exitcode}: {log_text}")
                current["identical"] = False
                continue
            diffs = differences(reference, final_state(run_dir))
            current["identical"] = not diffs and not current["problems"]
            current["differences"] = diffs
            log(f"round {current['round']}: {current['kills']} kills, "
                f"{'identical to the uninterrupted run' if current['identical'] else 'DIFFERENT: ' + ', '.join(diffs + current['problems'])[:400]}")
            if own_dir:
                shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)
    seconds = time.perf_counter() - started
    completed = [r for r in rounds if r["identical"] is not None]
    return {
        "kills": done_kills,
        "rounds": len(completed),
        "identical_rounds": sum(1 for r in completed if r["identical"]),
        "kills_in_identical_rounds": sum(r["kills"] for r in completed if r["identical"]),
        "all_identical": all(r["identical"] for r in completed) and bool(completed),
        "kills_before_first_checkpoint": sum(1 for e in events if e["checkpoint_step"] is None),
        "kills_leaving_temp_files": sum(1 for e in events if e["temp_files"]),
        "audit_problems": [p for r in rounds for p in r["problems"]],
        "reference_seconds": reference_seconds,
        "max_delay_s": max_delay,
        "seconds": seconds,
        "rounds_detail": rounds,
        "events": events,
        "settings": {"data": data, "train_args": train_args, "seed": seed, "threads": threads},
    }


def print_report(result: dict[str, Any]) -> None:
    rows = [
        ("kills (SIGKILL)", result["kills"]),
        ("rounds (runs finished after their kills)", result["rounds"]),
        ("rounds identical to the uninterrupted run", result["identical_rounds"]),
        ("kills before the first checkpoint", result["kills_before_first_checkpoint"]),
        ("kills that cut a write short (.tmp left)", result["kills_leaving_temp_files"]),
        ("files found damaged after a kill", len(result["audit_problems"])),
        ("uninterrupted run (s)", f"{result['reference_seconds']:.2f}"),
        ("total time (s)", f"{result['seconds']:.1f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"| {'':<{width}} | value |\n| {'-' * width} | ----- |")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")
    print("ALL IDENTICAL" if result["all_identical"] and not result["audit_problems"] else "FAILURES: see the JSON")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=100, help="SIGKILLs in all (default 100)")
    parser.add_argument("--max-delay", type=float, help="kill after a delay uniform in [0, this] seconds "
                        "(default: half the uninterrupted run's time)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each training process")
    parser.add_argument("--quick", action="store_true", help="10 kills")
    parser.add_argument("--json", metavar="PATH", help="write the full result here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import machine

    kills = 10 if args.quick else args.kills
    result = run_kill_loop(kills, max_delay=args.max_delay, seed=args.seed, threads=args.threads)
    result["machine"] = machine()
    result["command"] = "python benchmarks/fault_injection.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print_report(result)
    if args.json:
        from vaekit.fileio import atomic_write_json

        atomic_write_json(args.json, result)
    return 0 if result["all_identical"] and not result["audit_problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
