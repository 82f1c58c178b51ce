"""Sample quality of short vaekit runs: FD, precision and recall in a feature classifier's features.

For digits (and Fashion-MNIST when it is installed) it trains one small VAE, then compares N samples with the
test split (``vaekit.evaluation.sample_quality``): the decoder's means and draws x ~ p(x|z) with z from the
prior, the means with z from an ex-post Gaussian mixture (``--sampler gmm``), and N training images, the
floor a perfect model would reach at this N. Prints a Markdown table and writes
``benchmarks/results/sample_quality.json`` (machine, settings, the state of each step, the rows).

    python benchmarks/sample_quality.py --quick     # digits only, a short run: under a minute on 2 cores
    python benchmarks/sample_quality.py             # digits and Fashion-MNIST: about 5 minutes on 2 cores

It resumes: each step (train a run, fit the mixture, measure a row) is recorded in the JSON file under the
mode's settings as it finishes, runs are kept in ``runs/sample_quality/<mode>/``, and a rerun of the same
command does only what is missing. Other settings start that mode afresh.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, machine  # noqa: E402

import vaekit  # noqa: E402
from vaekit.evaluation.sample_quality import feature_classifier, sample_quality  # noqa: E402
from vaekit.fileio import atomic_write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "sample_quality.json"
RUNS = Path("runs") / "sample_quality"

CONFIGS = {
    "digits": dict(data="digits", vae=dict(latent_dim=8, hidden=(128,), epochs=30), quick_epochs=5),
    "fashion-mnist": dict(data="fashion-mnist", vae=dict(latent_dim=20, arch="mlp", hidden=(400,), epochs=10),
                          quick_epochs=None),  # None: not in --quick
}
ROWS = [  # name, sampler, draw
    ("prior, means", "prior", False),
    ("prior, draws x ~ p(x|z)", "prior", True),
    ("gmm, means", "gmm", False),
]


def mode_settings(quick: bool, names: list[str]) -> dict:
    configs = {}
    for name in names:
        config = CONFIGS[name]
        vae = dict(config["vae"], epochs=config["quick_epochs"] if quick else config["vae"]["epochs"])
        configs[name] = {"data": config["data"], "vae": {k: list(v) if isinstance(v, tuple) else v
                                                          for k, v in vae.items()}}
    return {"quick": quick, "seed": 0, "k": 3, "num_samples": "the test split's size", "configs": configs}


def available(name: str) -> bool:
    try:
        vaekit.load_dataset(CONFIGS[name]["data"])
    except vaekit.errors.DataError as err:
        log(f"{name}: skipped ({err})")
        return False
    return True


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def run_mode(quick: bool, path: Path) -> dict:
    names = [n for n, c in CONFIGS.items() if (not quick or c["quick_epochs"] is not None) and available(n)]
    settings = mode_settings(quick, names)
    results = load_results(path)
    mode = "quick" if quick else "full"
    state = results.get("modes", {}).get(mode)
    if state is None or state.get("settings") != settings:
        state = {"settings": settings, "steps": {}, "rows": []}
    results.setdefault("modes", {})[mode] = state
    results["machine"] = machine()

    def save() -> None:
        atomic_write_json(path, results)

    for name in names:
        config = settings["configs"][name]
        run = RUNS / mode / name
        dataset = vaekit.load_dataset(config["data"])
        step = f"{name}: train"
        if state["steps"].get(step) != "done":
            log(f"{step} ({config['vae']['epochs']} epochs) -> {run}")
            start = time.perf_counter()
            options = {k: tuple(v) if isinstance(v, list) else v for k, v in config["vae"].items()}
            vaekit.VAE(**options, seed=settings["seed"], device="cpu").fit(
                dataset, run_dir=run, resume=(run / "checkpoint.json").is_file())
            state["steps"][step] = "done"
            state.setdefault("seconds", {})[step] = time.perf_counter() - start
            save()
        vae = vaekit.load(run)
        step = f"{name}: fit gmm"
        if state["steps"].get(step) != "done":
            log(step)
            from vaekit.generation import fit_sampler, save_sampler

            save_sampler(fit_sampler(vae, dataset.split("train"), seed=settings["seed"]), run)
            state["steps"][step] = "done"
            save()
        classifier = None
        for label, sampler, draw in ROWS:
            step = f"{name}: {label}"
            if state["steps"].get(step) == "done":
                continue
            if classifier is None:
                classifier = feature_classifier(dataset, log=log)
            if sampler != "prior":
                from vaekit.generation import load_sampler

                load_sampler(run, vae, kind=sampler)
            log(step)
            result = sample_quality(vae, dataset, seed=settings["seed"], k=settings["k"], sampler=sampler,
                                    draw=draw, classifier=classifier)
            state["rows"] = [r for r in state["rows"] if r["step"] != step]
            state["rows"].append({"step": step, "data": name, "samples": label, **result.to_dict(),
                                  "classifier_train_seconds": classifier.train_seconds})
            state["steps"][step] = "done"
            save()
    state["complete"] = True
    save()
    return state


def table(state: dict) -> str:
    lines = ["| data | samples | N | FD | precision | recall | floor FD | floor precision | floor recall | "
             "classifier test accuracy |", "|" + "---|" * 10]
    for r in state["rows"]:
        lines.append(f"| {r['data']} | {r['samples']} | {r['num_samples']:,} | {r['fd']:.2f} | {r['precision']:.3f} "
                     f"| {r['recall']:.3f} | {r['floor_fd']:.2f} | {r['floor_precision']:.3f} | "
                     f"{r['floor_recall']:.3f} | {r['classifier_test_accuracy']:.1%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits only, a short run (under a minute)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    state = run_mode(args.quick, args.json)
    print(table(state))
    log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
