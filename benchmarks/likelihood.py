"""Test log-likelihood of a fixed set of VAEs, estimated as the literature does it.

Trains and evaluates one- and two-stochastic-layer models (the architectures of Burda et al. 2016),
with the ELBO and the IWAE objectives, with and without a VampPrior, on dynamically binarized
Fashion-MNIST, plus two models of ``digits`` and one 8-bit (discretized logistic) Fashion-MNIST model, and
the top-down hierarchy over residual convolutional networks (issue 19's model) on binarized and 8-bit images.
Every model is evaluated on the full test set with K = 5000 importance samples (the test split is
binarized with one fixed, seeded draw); the convolutional rows, whose K = 5000 estimate on 10,000 images takes
hours on 2 cores, with a smaller K on all of them (an upper bound on the K = 5000 estimate) and K = 5000 on their
first images beside it. Prints a Markdown table and writes JSON (``--json``) and the table (``--markdown``).

    python benchmarks/likelihood.py --quick                  # smoke test: a few minutes on 2 cores
    python benchmarks/likelihood.py                          # full mode: about 5 hours on 2 cores (see below)
    python benchmarks/likelihood.py --only fm-1l-elbo        # one configuration (repeatable option)
    python benchmarks/likelihood.py --max-minutes 25         # stop starting new work after 25 minutes
    python benchmarks/likelihood.py --only fm-ladder-resconv --train-only   # train now, evaluate later
    python benchmarks/likelihood.py --only fm-ladder-resconv --eval-device cuda   # evaluate on a GPU

The full mode runs for hours on a 2-core CPU, so it works in pieces: each configuration's result is
cached in the JSON file (keyed by its settings) and skipped on the next run, and training resumes from
its run directory (``runs/likelihood/...``), where it stopped. With ``--max-minutes`` an invocation
trains in segments and stops when its time is up; run the same command again to continue.

On a 2-core machine two configurations run faster side by side, one core each, than one after the
other on both: give each its own results file, then merge them into the main one.

    taskset -c 0 python benchmarks/likelihood.py --only fm-1l-iwae --json a.json &
    taskset -c 1 python benchmarks/likelihood.py --only fm-2l-iwae --json b.json
    python benchmarks/likelihood.py --merge a.json b.json    # rows added to the results file, table rewritten
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import vaekit
from vaekit.training import checkpoint as ckpt
from vaekit.api import make_run_config
from vaekit.evaluation.likelihood import evaluate
from vaekit.fileio import atomic_write_json, atomic_write_text
from vaekit.training.trainer import train

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path("runs") / "likelihood"

BURDA_1L = dict(hidden=(200, 200), latent_dim=50, activation="tanh")
BURDA_2L = dict(hidden=(200, 200), latent_dim=100, upper_latent_dims=(50,), upper_hidden=(100, 100), activation="tanh")
LADDER_RESCONV = dict(arch="conv", hidden=(32, 64), residual_blocks=2, latent_dim=32, upper_latent_dims=(16, 8),
                      inference="top-down")
DIGITS_1L = dict(hidden=(128,), latent_dim=8, activation="tanh")
DIGITS_2L = dict(hidden=(128,), latent_dim=16, upper_latent_dims=(8,), upper_hidden=(64,), activation="tanh")


@dataclass
class Setup:
    """One configuration: data, model and training options, and the evaluation."""

    name: str
    description: str
    data: str
    binarize: str
    model: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    epochs: int = 100
    quick_epochs: int = 1
    # Full mode: evaluate on the first N images of the fixed test draw instead of all of them (None: all). For
    # convolutional decoders, whose K = 5000 estimate on the 10,000 test images takes hours on 2 cores; the table
    # says so in the row.
    test_images: int | None = None
    # "published": Adam 1e-3 at a constant rate, beta2 0.999, batch 128, as the published setups trained (and in
    # segments, which a constant rate allows); "defaults": vaekit's own training defaults (batch 256, Adam 6e-3 with
    # beta2 0.99, cosine decay over the run), trained in one piece since the schedule spans the whole run (an
    # interrupted run resumes from its last epoch's checkpoint).
    recipe: str = "published"
    # Full mode: the number of importance samples of the main evaluation, where it is not the mode's K (None: the
    # mode's), and a check on the first N test images at the mode's K beside it (None: none). A smaller K gives an
    # upper bound on the K = 5000 estimate (the importance-weighted bound tightens with K in expectation, Burda et
    # al. 2016), and the check measures how far apart the two are on the same images.
    importance_samples: int | None = None
    check_images: int | None = None

    def fingerprint(self, mode: dict[str, Any]) -> str:
        settings = {"data": self.data, "binarize": self.binarize, "model": self.model, "train": self.train,
                    "epochs": self.epochs, **mode}
        if self.test_images is not None:  # (absent otherwise: the other rows keep their cached results)
            settings["test_images"] = self.test_images
        if self.recipe != "published":  # likewise
            settings["recipe"] = self.recipe
        for name in ("importance_samples", "check_images"):
            if getattr(self, name) is not None:
                settings[f"row_{name}"] = getattr(self, name)
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:16]


SETUPS = [
    Setup("fm-1l-elbo", "1 layer (784-200-200-50), ELBO", "fashion-mnist", "dynamic", BURDA_1L),
    Setup("fm-1l-iwae", "1 layer, IWAE k=5", "fashion-mnist", "dynamic", BURDA_1L, dict(objective="iwae", objective_samples=5)),
    Setup("fm-2l-elbo", "2 layers (784-200-200-100, 100-100-50), ELBO", "fashion-mnist", "dynamic", BURDA_2L),
    Setup("fm-2l-iwae", "2 layers, IWAE k=5", "fashion-mnist", "dynamic", BURDA_2L, dict(objective="iwae", objective_samples=5)),
    # Tomczak and Welling train the VampPrior with a KL warm-up; without it the posterior collapses early on.
    Setup("fm-1l-elbo-vamp", "1 layer, ELBO, VampPrior (500 pseudo-inputs), KL warm-up 10 epochs", "fashion-mnist",
          "dynamic", {**BURDA_1L, "prior": "vamp", "vamp_components": 500}, dict(warmup_epochs=10)),
    Setup("fm-2l-iwae-vamp", "2 layers, IWAE k=5, VampPrior (500), KL warm-up 10 epochs", "fashion-mnist", "dynamic",
          {**BURDA_2L, "prior": "vamp", "vamp_components": 500},
          dict(objective="iwae", objective_samples=5, warmup_epochs=10)),
    # The top-down hierarchy over residual convolutional networks (issue 19's model), with vaekit's default training
    # recipe and free bits 0.1 nats per unit (without them the upper layers collapse: benchmarks/pythae_side_by_side.py,
    # 28+1+0 active units against 30+16+8): about 85 s an epoch on 2 cores, so 50 epochs are about 71 minutes. Its
    # K = 5000 estimate on the 10,000 test images would take about 3.7 hours on 2 cores, so the row gives the K = 1000
    # bound on all 10,000 (about 45 minutes) and K = 5000 on the first 500 beside it. With a GPU, --eval-device
    # cuda evaluates there (the training time in the row stays the CPU's).
    Setup("fm-ladder-resconv", "3 layers top-down (32, 16, 8) over a residual conv network (channels 32, 64, 2 "
          "cells per resolution), ELBO, free bits 0.1, KL warm-up 5 epochs, vaekit's default schedule",
          "fashion-mnist", "dynamic", {**LADDER_RESCONV}, dict(warmup_epochs=5, free_bits=0.1), epochs=50,
          recipe="defaults", importance_samples=1000, check_images=500),
    Setup("fm8-1l-elbo-dlogistic", "8-bit images, 1 layer, ELBO, discretized logistic", "fashion-mnist", "none",
          {**BURDA_1L, "likelihood": "discretized-logistic"}),
    # The same ladder on the 8-bit images, with a discretized logistic per pixel: 20 epochs (about 15 minutes), its
    # K = 100 bound on all 10,000 test images and K = 5000 on the first 200 beside it.
    Setup("fm8-ladder-resconv-dlogistic", "8-bit images, 3 layers top-down over a residual conv network, ELBO, "
          "discretized logistic, free bits 0.1, KL warm-up 2 epochs, vaekit's default schedule", "fashion-mnist",
          "none", {**LADDER_RESCONV, "likelihood": "discretized-logistic"}, dict(warmup_epochs=2, free_bits=0.1),
          epochs=20, recipe="defaults", importance_samples=100, check_images=200),
    Setup("digits-1l-elbo", "digits: 1 layer (64-128-8), ELBO", "digits", "dynamic", DIGITS_1L, epochs=1000,
          quick_epochs=20),
    Setup("digits-2l-iwae-vamp", "digits: 2 layers (64-128-16, 16-64-8), IWAE k=5, VampPrior (100)", "digits",
          "dynamic", {**DIGITS_2L, "prior": "vamp", "vamp_components": 100},
          dict(objective="iwae", objective_samples=5, warmup_epochs=10), epochs=1000, quick_epochs=20),
]

FULL = {"importance_samples": 5000, "train_subset": None, "test_subset": None}
QUICK = {"importance_samples": 100, "train_subset": 3000, "test_subset": 500}
SEGMENT_SECONDS = 120.0  # training runs in segments of about this long, so --max-minutes can stop between them


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "vaekit": vaekit.__version__, "python": platform.python_version(), "platform": platform.platform()}


def load_data(setup: Setup, mode: dict[str, Any], seed: int = 0):
    data = vaekit.load_dataset(setup.data, binarize=setup.binarize, split_seed=seed)
    if mode["train_subset"]:
        data.x_train = data.x_train[:mode["train_subset"]]
        data.x_test = data.x_test[:mode["test_subset"]]
        data.y_train = data.y_train[:mode["train_subset"]] if data.y_train is not None else None
        data.y_test = data.y_test[:mode["test_subset"]] if data.y_test is not None else None
    return data


def run_setup(setup: Setup, mode: dict[str, Any], quick: bool, run_dir: Path, deadline: float,
              log, train_only: bool = False, eval_device: str = "cpu") -> dict[str, Any] | None:
    """Train (resuming where a previous piece stopped) and evaluate one configuration; ``None`` when time ran out."""
    data = load_data(setup, mode)
    epochs = setup.quick_epochs if quick else setup.epochs
    # Adam 1e-3 with a constant rate and beta2 0.999, as in the published setups (and as the rows in
    # benchmarks/results/likelihood.json were trained); a constant rate also lets training go in segments.
    recipe = (dict(batch_size=128, lr=1e-3, lr_schedule="constant", adam_beta2=0.999) if setup.recipe == "published"
              else {})
    options = {**dict(arch="mlp", seed=0, device="cpu"), **recipe, **setup.model, **setup.train}
    done = len(ckpt.read_metrics(run_dir)) if ckpt.is_run_dir(run_dir) else 0
    while done < epochs:
        if time.time() > deadline:
            log(f"{setup.name}: out of time after {done}/{epochs} epochs; run the same command again to continue")
            return None
        history = ckpt.read_metrics(run_dir) if done else []
        per_epoch = history[-1]["seconds"] if history else None
        segment = max(1, int(SEGMENT_SECONDS / per_epoch)) if per_epoch else 1
        if setup.recipe != "published":  # the schedule spans the run: one piece
            segment = epochs
        target = min(epochs, done + segment)
        config = make_run_config(data, **{**options, "epochs": target})
        _, history = train(config, data, run_dir=run_dir, resume=done > 0, progress=False)
        done = len(history)
        last = history[-1]
        log(f"{setup.name}: epoch {done}/{epochs}, validation -ELBO {last['val_neg_elbo']:.2f}, "
            f"{last['seconds']:.1f} s/epoch")
    if time.time() > deadline or train_only:
        log(f"{setup.name}: trained; " + ("not evaluated (--train-only)" if train_only else
                                          "out of time before the evaluation; run the same command again"))
        return None
    model, config = ckpt.load_model(run_dir)
    model.to(eval_device)
    history = ckpt.read_metrics(run_dir)
    x_test = data.split("test")
    if setup.test_images is not None and not quick:
        x_test = x_test[:setup.test_images]
    k = setup.importance_samples if setup.importance_samples is not None and not quick else mode["importance_samples"]
    log(f"{setup.name}: evaluating {len(x_test)} test examples with K={k}")
    result = evaluate(model, x_test, num_importance_samples=k, seed=0)
    check = None
    if setup.check_images is not None:
        n = min(setup.check_images, len(x_test)) if not quick else min(100, len(x_test))
        log(f"{setup.name}: and the first {n} with K={mode['importance_samples']}")
        small = evaluate(model, x_test[:n], num_importance_samples=mode["importance_samples"], seed=0)
        same = result.per_example["nll"][:n]
        difference = small.per_example["nll"] - same
        check = {"test_examples": n, "importance_samples": mode["importance_samples"], "nll": small.nll,
                 "nll_stderr": small.nll_stderr, "eval_seconds": small.seconds,
                 f"nll_at_k{k}": float(same.mean()), "difference": float(difference.mean()),
                 "difference_stderr": float(difference.std(ddof=1) / n ** 0.5)}
    return {
        "name": setup.name, "description": setup.description, "data": setup.data, "binarize": setup.binarize,
        "model": {k: list(v) if isinstance(v, tuple) else v for k, v in setup.model.items()},
        "train": {**setup.train, "epochs": epochs, "batch_size": config.train.batch_size, "lr": config.train.lr,
                  "lr_schedule": config.train.lr_schedule, "adam_beta2": config.train.adam_beta2},
        "eval_device": str(eval_device), "eval_machine": machine(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": sum(h["seconds"] for h in history),
        "train_examples": len(data.x_train), "test_examples": len(x_test),
        "final_val_neg_elbo": history[-1]["val_neg_elbo"],
        "eval_seconds": result.seconds, **({"check": check} if check else {}),
        **{k: v for k, v in result.to_dict().items() if k not in ("posterior_mean_variance",)},
    }


def markdown_table(results: dict[str, dict[str, Any]], names: list[str], mode_name: str, k: int) -> str:
    lines = [f"| configuration | test -log p(x) (K={k}) | test -ELBO | KL | active units | bits/dim | "
             "training time | epochs |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in names:
        r = results.get(name)
        if r is None:
            lines.append(f"| {name} | (not run yet) | | | | | | |")
            continue
        units = f"{r['active_units']} of {len(r['kl_per_dim'])}"
        if len(r["active_units_per_layer"]) > 1:
            units += " (" + "+".join(map(str, r["active_units_per_layer"])) + ")"
        bits = f"{r['bits_per_dim']:.4f}" if r.get("bits_per_dim") is not None else ""
        seconds = r["train_seconds"]
        duration = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
        subset = (f" (first {r['test_examples']:,} test images)" if r.get("test_examples") and mode_name == "full"
                  and r["test_examples"] < 10_000 and r.get("data") == "fashion-mnist" else "")
        if r.get("importance_samples", k) != k:
            subset += f" (K = {r['importance_samples']}: an upper bound on the K = {k} estimate)"
        if r.get("check"):
            c = r["check"]
            subset += (f"; K = {c['importance_samples']} on the first {c['test_examples']:,}: {c['nll']:.2f}, "
                       f"{-c['difference']:.2f} ± {c['difference_stderr']:.2f} below K = {r['importance_samples']} "
                       "on the same images")
        lines.append(f"| {name}: {r['description']}{subset} | {r['nll']:.2f} ± {r['nll_stderr']:.2f} | "
                     f"{r['neg_elbo']:.2f} ± {r['neg_elbo_stderr']:.2f} | {r['kl']:.2f} | {units} | {bits} | "
                     f"{duration} | {r['train']['epochs']} |")
    return "\n".join(lines) + (f"\n\nnats per example, mean ± standard error over the test set ({mode_name} mode); "
                                "training time: the sum of the epochs' wall-clock times as the row was trained "
                                "(rows may differ in threads and in what else the machine ran)\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK['train_subset']} training and {QUICK['test_subset']} test examples, "
                             f"1 epoch (digits 20), K={QUICK['importance_samples']}")
    parser.add_argument("--only", action="append", metavar="NAME", choices=[s.name for s in SETUPS],
                        help="run only this configuration (repeat for more)")
    parser.add_argument("--force", action="store_true", help="recompute cached results, training included")
    parser.add_argument("--reevaluate", action="store_true",
                        help="evaluate cached rows again from their trained runs in --runs (after a change of the "
                             "evaluation code); training is kept")
    parser.add_argument("--max-minutes", type=float, default=math.inf,
                        help="start no new training segment or evaluation after this many minutes")
    parser.add_argument("--json", type=Path, help="results file (default benchmarks/results/likelihood[-quick].json)")
    parser.add_argument("--markdown", type=Path, help="table file (default: the JSON path with .md)")
    parser.add_argument("--runs", type=Path, default=RUNS, help=f"where the run directories go (default {RUNS})")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                        help="add the rows of these result files (e.g. from configurations run in parallel with "
                             "--only and their own --json) to the results file, then write the table")
    parser.add_argument("--train-only", action="store_true",
                        help="train (or resume) the selected rows and stop before their evaluation")
    parser.add_argument("--eval-device", default="cpu", metavar="DEVICE",
                        help="where the K-sample evaluation runs (cpu, cuda, cuda:N; default cpu); training is "
                             "always on the CPU, and the row records both")
    parser.add_argument("--list", action="store_true", help="list the configurations and exit")
    args = parser.parse_args(argv)
    if args.list:
        for s in SETUPS:
            print(f"{s.name:22s} {s.description}")
        return 0
    mode_name = "quick" if args.quick else "full"
    mode = QUICK if args.quick else FULL
    json_path = args.json or RESULTS / f"likelihood{'-quick' if args.quick else ''}.json"
    md_path = args.markdown or json_path.with_suffix(".md")
    started = time.time()
    deadline = started + args.max_minutes * 60

    def log(message: str) -> None:
        print(f"[{time.time() - started:7.1f} s] {message}", file=sys.stderr, flush=True)

    stored = json.loads(json_path.read_text()) if json_path.is_file() else {}
    results: dict[str, dict[str, Any]] = stored.get("results", {})
    keys = {s.name: s.fingerprint({**mode, "mode": mode_name}) for s in SETUPS}  # each row's settings
    for path in args.merge or []:
        part = json.loads(path.read_text())
        if part.get("mode", mode_name) != mode_name:
            parser.error(f"{path} holds {part['mode']} mode results, not {mode_name}")
        # Only rows of known configurations trained with today's settings.
        results.update({name: row for name, row in part.get("results", {}).items()
                        if name in keys and row.get("fingerprint") == keys[name]})
    if args.merge:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(json_path, {"benchmark": "likelihood", "mode": mode_name, "machine": machine(),
                                      "settings": mode, "results": results})
    selected = [s for s in SETUPS if (not args.only or s.name in args.only) and not args.merge]
    for setup in selected:
        key = keys[setup.name]
        cached = results.get(setup.name)
        if cached and cached.get("fingerprint") == key and not (args.force or args.reevaluate):
            log(f"{setup.name}: cached ({cached['nll']:.2f} nats)")
            continue
        run_dir = args.runs / mode_name / setup.name
        if args.reevaluate and not args.force and not ckpt.is_run_dir(run_dir):
            log(f"{setup.name}: no trained run in {run_dir} to evaluate again; skipped")
            continue
        if args.force and run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        if setup.data == "fashion-mnist":
            try:
                vaekit.load_dataset("fashion-mnist")
            except vaekit.DataError as err:
                log(f"{setup.name}: skipped: {err}")
                continue
        result = run_setup(setup, mode, args.quick, run_dir, deadline, log, args.train_only,
                           torch.device(args.eval_device))
        if result is None:
            if args.train_only:
                continue
            break
        result["fingerprint"] = key
        results[setup.name] = result
        log(f"{setup.name}: -log p(x) {result['nll']:.2f} ± {result['nll_stderr']:.2f}, -ELBO {result['neg_elbo']:.2f}, "
            f"{result['active_units']} active units, trained {result['train_seconds'] / 60:.1f} min, "
            f"evaluated in {result['eval_seconds']:.0f} s")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(json_path, {"benchmark": "likelihood", "mode": mode_name, "machine": machine(),
                                      "settings": mode, "results": results})
    table = markdown_table(results, [s.name for s in SETUPS], mode_name, mode["importance_samples"])
    print(table)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(md_path, f"# Test log-likelihood ({mode_name} mode)\n\nMachine: {machine()['cpu']}, "
                               f"{machine()['cores']} cores, torch {torch.__version__}\n\n{table}")
    log(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
