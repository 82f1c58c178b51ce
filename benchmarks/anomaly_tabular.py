"""Tabular anomaly-detection benchmark: vaekit's detector and scores beside PyOD's detectors on real labelled tables.

Every detector sees the same splits, seeds and inputs. The tables (scikit-learn's bundled copies; nothing is
downloaded):

    breast-cancer  the ODDS "WBC" protocol: benign rows are normal; a seeded sample of malignant rows, 10% of the
                   benign count (36), are the anomalies. Train on a seeded 60% of the benign rows (214), test on
                   the other benign rows (143) plus the sampled malignant ones.
    wine, iris     one-class-out, for each of the 3 classes as the anomaly: train on a seeded 60% of the rows of
                   the other two classes, test on their other 40% plus every row of the held-out class.
    digits         the 8x8 digits as a 64-column table, one-class-out for each of the 10 classes (same protocol).

Each (table, class) is repeated with 3 seeds (the seed draws the split and seeds every detector that takes one);
a table's number is the mean over its classes, then over the seeds (± the standard deviation over the seeds).

Inputs: every column is standardized with the mean and standard deviation of the training rows (a column that is
constant there is only centred), the same float32 arrays for every detector. PyOD's VAE standardizes its input
once more itself (``preprocessing=True``, its default; close to the identity on these arrays).

Detectors:

    vaekit            ``AnomalyDetector(VAE(seed=seed), seed=seed).fit(X_train)``, then ``anomaly_score(X_test)``:
                      every other setting at its default (data-scaled: at least 2,000 steps; MLP 128,128; latent
                      half the columns, 2 to 20; Gaussian likelihood with a learned variance; the typicality score). The VAE is fitted first
                      (``vae.fit(X_train)``, timed alone) and then handed to the detector: the same computation
                      as ``AnomalyDetector(VAE()).fit(X_train)``, which calls ``vae.fit`` on the same array. The
                      detector sees that X_train is the VAE's own training data: it fits the typicality density
                      on the rows the weights were trained on and sets its threshold (target false-positive rate
                      0.05) on the tenth of the rows ``vae.fit`` held out.
    vaekit:<score>    the other scores of that same fitted VAE, one ``anomaly.anomaly_scores`` call each (typicality
                      with the detector's typicality model: the same numbers as the default, timed by itself).
                      Their fit seconds are the VAE's training alone.
    pyod:<name>       PyOD's ``VAE`` (30 epochs, batch 32, lr 1e-3, latent 2; ``verbose=0``), ``ECOD``, ``IForest``,
                      ``KNN``, ``LOF``, ``OCSVM``, each at PyOD's defaults except ``random_state=seed`` where the
                      detector takes one; ``fit(X_train)``, then ``decision_function(X_test)`` (higher = more anomalous).

Columns "normal fl." and "anom. fl.": the share of the test's normal rows and of its anomalies that the detector's
own threshold flags (vaekit: ``predict`` at its target false-positive rate 0.05; PyOD: ``predict`` at its default
contamination 0.1): the false-positive rate on new clean rows, and the detection rate.

A detector that raises (vaekit's typicality density needs at least 2 * (statistics + 1) training rows) is
recorded with its error and counted as a failure in the tables.

--diagnose (vaekit alone, same splits and seeds) retrains the VAE with three budgets (the default 10 epochs, PyOD's
VAE budget of batch 32 and 30 epochs, and enough epochs for at least 1000 optimizer steps) and scores each with
-ELBO, reconstruction error, -log p(x) and four typicality densities: the default one (all statistics, fitted on the
half of the training rows the detector uses), the same on every training row, and both on the four summary
statistics only (reconstruction, kl, posterior_log_std, code_norm), which a table of a few dozen rows can fit.

Every (table, class, seed, detector) result is cached in --work-dir, so a run resumes where it stopped; a run with
everything cached only prints the tables and writes the JSON.

    python benchmarks/anomaly_tabular.py --quick                 # one seed, a few classes: checks the pipeline
    flock /tmp/vaekit-cpu.lock nice -n 5 python benchmarks/anomaly_tabular.py --json benchmarks/results/anomaly_tabular.json
    ... --diagnose     # also vaekit alone with other training budgets and typicality variants (what the JSON holds)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import vaekit
from vaekit import anomaly
from vaekit.fileio import atomic_write_json

from common import log, machine, settled_work_dir  # benchmarks/common.py

TABLES = ("breast-cancer", "wine", "iris", "digits")
TABLE_IDS = {name: i for i, name in enumerate(TABLES)}  # part of each split's seed
VAEKIT_SCORES = ("neg_elbo", "reconstruction_error", "neg_log_likelihood", "posterior_regret", "typicality")
PYOD_DETECTORS = ("VAE", "ECOD", "IForest", "KNN", "LOF", "OCSVM")
DETECTORS = ("vaekit", *(f"vaekit:{s}" for s in VAEKIT_SCORES), *(f"pyod:{d}" for d in PYOD_DETECTORS))
LABELS = {"vaekit": "vaekit default (typicality)", **{f"vaekit:{s}": f"vaekit {s}" for s in VAEKIT_SCORES},
          **{f"pyod:{d}": f"PyOD {d}" for d in PYOD_DETECTORS}}

FULL = {
    "seeds": [0, 1, 2],
    "classes": {"breast-cancer": [None], "wine": [0, 1, 2], "iris": [0, 1, 2], "digits": list(range(10))},
    "train_fraction": 0.6,           # of the normal rows; the rest are the test set's normal rows
    "wbc_anomaly_fraction": 0.1,     # breast-cancer: malignant rows sampled, relative to the benign count
    "vaekit_vae": {},                # keyword arguments of vaekit.VAE besides seed: {} = its defaults
    "pyod_vae": {"verbose": 0},      # PyOD's VAE besides random_state: its defaults, without the progress bar
    "standardize": "z-score with the training rows' mean and std (std 0 -> 1), the same arrays for every detector",
}
QUICK = {**FULL, "seeds": [0], "classes": {"breast-cancer": [None], "wine": [0], "iris": [0], "digits": [0, 1]}}


# --- data ----------------------------------------------------------------------------------------

def load_table(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    loader = {"breast-cancer": datasets.load_breast_cancer, "wine": datasets.load_wine, "iris": datasets.load_iris,
              "digits": datasets.load_digits}[name]
    data = loader()
    return np.asarray(data.data, dtype=np.float64), np.asarray(data.target)


def split(name: str, x: np.ndarray, y: np.ndarray, cls: int | None, seed: int, settings: dict) -> dict:
    """Training rows (normal only) and test rows with their anomaly labels, standardized with the training rows."""
    rng = np.random.default_rng([seed, TABLE_IDS[name], 0 if cls is None else cls + 1])
    if name == "breast-cancer":  # scikit-learn's target: 0 malignant, 1 benign
        normal, anomalous = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        count = round(settings["wbc_anomaly_fraction"] * len(normal))
        anomalous = np.sort(rng.choice(anomalous, count, replace=False))
    else:
        normal, anomalous = np.flatnonzero(y != cls), np.flatnonzero(y == cls)
    normal = rng.permutation(normal)
    n_train = round(settings["train_fraction"] * len(normal))
    train, test = np.sort(normal[:n_train]), np.r_[np.sort(normal[n_train:]), anomalous]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return {"x_train": ((x[train] - mean) / std).astype(np.float32), "x_test": ((x[test] - mean) / std).astype(np.float32),
            "is_anomaly": np.r_[np.zeros(len(test) - len(anomalous), bool), np.ones(len(anomalous), bool)],
            "train_rows": train, "test_rows": test}


# --- detectors -----------------------------------------------------------------------------------

def metrics(scores: np.ndarray, is_anomaly: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {"auroc": float(roc_auc_score(is_anomaly, scores)), "auprc": float(average_precision_score(is_anomaly, scores))}


def flagged(is_flagged: np.ndarray, is_anomaly: np.ndarray) -> dict[str, float]:
    """The share of the test's normal rows the detector's own threshold flags (its false-positive rate on new clean
    data) and of its anomalies (the detection rate)."""
    return {"flagged_normal": float(is_flagged[~is_anomaly].mean()), "flagged_anomalous": float(is_flagged[is_anomaly].mean())}


def _failure(err: Exception, fit_seconds: float | None = None) -> dict:
    return {"auroc": None, "auprc": None, "fit_seconds": fit_seconds, "score_seconds": None,
            "error": f"{type(err).__name__}: {err}"}


def run_vaekit(data: dict, seed: int, settings: dict) -> dict[str, dict]:
    """The default detector and every other score of the same fitted VAE: one result per vaekit detector key."""
    x_train, x_test, truth = data["x_train"], data["x_test"], data["is_anomaly"]
    vae = vaekit.VAE(**{**settings["vaekit_vae"], "seed": seed})
    started = time.perf_counter()
    vae.fit(x_train)
    train_seconds = time.perf_counter() - started
    info = {"train_rows": int(len(x_train)), "epochs": len(vae.history_), "optimizer_steps": int(vae.history_[-1]["step"]),
            "val_neg_elbo": float(vae.history_[-1]["val_neg_elbo"]), "likelihood": vae.config_.model.likelihood,
            "device": str(vae._device())}
    results: dict[str, dict] = {}
    detector = anomaly.AnomalyDetector(vae, seed=seed)
    try:
        detector.fit(x_train)
        fit_seconds = time.perf_counter() - started
        typicality = detector.typicality_
        info["typicality_components"] = len(typicality.weights)
        info["typicality_statistics"] = len(typicality.statistics)
        info["typicality_fit_rows"] = typicality.fit_size
        scored = time.perf_counter()
        scores = detector.anomaly_score(x_test)
        results["vaekit"] = {**metrics(scores, truth), "fit_seconds": fit_seconds,
                             "score_seconds": time.perf_counter() - scored, "error": None,
                             **flagged(scores > detector.threshold_, truth)}
    except (vaekit.VaekitError, ValueError) as err:  # DataError: too few rows for the typicality density
        results["vaekit"] = _failure(err, time.perf_counter() - started)
        typicality = getattr(detector, "typicality_", None)  # None when its fit failed
    results["vaekit"]["info"] = info
    for name in VAEKIT_SCORES:
        key = f"vaekit:{name}"
        if name == "typicality" and typicality is None:
            results[key] = {**_failure(ValueError("no typicality model: the default detector's fit failed")),
                            "error": results["vaekit"]["error"]}
            continue
        scored = time.perf_counter()
        try:
            scores = anomaly.anomaly_scores(vae, x_test, [name], seed=seed, typicality=typicality)[name]
            results[key] = {**metrics(scores, truth), "fit_seconds": train_seconds,
                            "score_seconds": time.perf_counter() - scored, "error": None}
        except (vaekit.VaekitError, ValueError) as err:  # ValueError: scikit-learn refuses NaN or infinite scores
            results[key] = _failure(err, train_seconds)
    return results


def pyod_detector(name: str, seed: int, settings: dict):
    if name == "VAE":
        from pyod.models.vae import VAE

        return VAE(**{**settings["pyod_vae"], "random_state": seed})
    if name == "ECOD":
        from pyod.models.ecod import ECOD

        return ECOD()
    if name == "IForest":
        from pyod.models.iforest import IForest

        return IForest(random_state=seed)
    if name == "KNN":
        from pyod.models.knn import KNN

        return KNN()
    if name == "LOF":
        from pyod.models.lof import LOF

        return LOF()
    if name == "OCSVM":
        from pyod.models.ocsvm import OCSVM

        return OCSVM()
    raise ValueError(f"unknown PyOD detector {name!r}")


def run_pyod(name: str, data: dict, seed: int, settings: dict) -> dict:
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            detector = pyod_detector(name, seed, settings).fit(data["x_train"])
            fit_seconds = time.perf_counter() - started
            scored = time.perf_counter()
            scores = detector.decision_function(data["x_test"])
            score_seconds = time.perf_counter() - scored
            labels = detector.predict(data["x_test"]) == 1  # PyOD: 1 = outlier, at its contamination (0.1)
        return {**metrics(scores, data["is_anomaly"]), "fit_seconds": fit_seconds, "score_seconds": score_seconds,
                "error": None, **flagged(labels, data["is_anomaly"])}
    except Exception as err:  # noqa: BLE001 - a detector that fails is a result of the benchmark, not its end
        return _failure(err, time.perf_counter() - started)


# --- one unit of work: (table, class, seed) ------------------------------------------------------

def cache_path(work: Path, table: str, cls: int | None, seed: int, detector: str) -> Path:
    unit = "all" if cls is None else f"class-{cls}"
    return work / table / unit / f"seed-{seed}" / f"{detector.replace(':', '-')}.json"


def run_unit(table: str, xy, cls: int | None, seed: int, detectors: list[str], settings: dict, work: Path,
             log, counts: dict) -> dict:
    data = split(table, *xy, cls, seed, settings)
    unit = {"class": cls, "seed": seed, "train_rows": int(len(data["x_train"])), "test_rows": int(len(data["x_test"])),
            "anomalies": int(data["is_anomaly"].sum()), "results": {}}
    todo = [d for d in detectors if not cache_path(work, table, cls, seed, d).is_file()]
    counts["computed"] += len(todo)
    counts["cached"] += len(detectors) - len(todo)
    if todo:
        log(f"{table} class {cls} seed {seed}: {', '.join(todo)}")
    fresh: dict[str, dict] = {}
    if any(d.startswith("vaekit") for d in todo):
        fresh.update(run_vaekit(data, seed, settings))
    for d in todo:
        if d.startswith("pyod:"):
            fresh[d] = run_pyod(d.split(":", 1)[1], data, seed, settings)
    for d in detectors:
        path = cache_path(work, table, cls, seed, d)
        if d in fresh and not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, fresh[d])
            if fresh[d]["error"]:
                log(f"  {d} failed: {fresh[d]['error']}")
        unit["results"][d] = json.loads(path.read_text())
    return unit


# --- diagnostic: why vaekit's default falls short on small tables ---------------------------------

DIAGNOSTIC_TRAINING = {  # name -> how vaekit.VAE is built (besides seed) from the number of training rows
    "10 epochs (default)": lambda n: {},
    "batch 32, 30 epochs (PyOD's VAE budget)": lambda n: {"batch_size": 32, "epochs": 30},
    ">= 1000 steps": lambda n: {"epochs": math.ceil(1000 / math.ceil((n - round(0.1 * n)) / 256))},
}
DIAGNOSTIC_SCORES = ("neg_elbo", "reconstruction_error", "neg_log_likelihood", "typicality (default)",
                     "typicality, all rows", "typicality, 4 summary stats", "typicality, 4 summary stats, all rows")
SUMMARY_STATISTICS = 4  # reconstruction, kl, posterior_log_std, code_norm: the columns before mu_i and log_var_i


def _density_score(fit: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
    """fit_typicality's density (robust scaling, full-covariance mixture chosen by BIC) on any statistics."""
    from sklearn.mixture import GaussianMixture

    center = np.median(fit, axis=0)
    scale = 1.4826 * np.median(np.abs(fit - center), axis=0)
    spread = fit.std(axis=0)
    scale = np.where(scale > 1e-12, scale, np.where(spread > 1e-12, spread, 1.0))
    z, zt = (fit - center) / scale, (test - center) / scale
    k = z.shape[1]
    limit = max(1, min(16, len(z) // (10 * (k + k * (k + 1) // 2 + 1))))
    best, best_bic = None, np.inf
    for n in sorted({1, *(2**i for i in range(1, 12) if 2**i <= limit), limit}):
        gmm = GaussianMixture(n, covariance_type="full", reg_covar=1e-4, n_init=2, random_state=seed).fit(z)
        if gmm.bic(z) < best_bic:
            best, best_bic = gmm, gmm.bic(z)
    return -best.score_samples(zt)


def diagnostic_scores(vae, x_train: np.ndarray, x_test: np.ndarray, seed: int) -> dict[str, np.ndarray | str]:
    """vaekit's plain scores, and the typicality density fitted on the detector's half or on every training row,
    on all the statistics or on the four summary ones only (an error message where it cannot be fitted)."""
    out: dict[str, np.ndarray | str] = {}
    for name in ("neg_elbo", "reconstruction_error", "neg_log_likelihood"):
        out[name] = anomaly.anomaly_scores(vae, x_test, [name], seed=seed)[name]
    x = anomaly.model_units(vae, anomaly.prepare_inputs(vae, x_train, seed=seed))
    half = np.sort(np.random.default_rng(seed).permutation(len(x))[: len(x) // 2])  # AnomalyDetector.fit's half
    for label, rows in (("", half), (", all rows", np.arange(len(x)))):
        try:
            state = anomaly.fit_typicality(vae, x[rows], seed=seed)
            out["typicality (default)" if not label else f"typicality{label}"] = state.score(vae, anomaly.model_units(vae, x_test))
        except vaekit.VaekitError as err:
            out["typicality (default)" if not label else f"typicality{label}"] = f"{type(err).__name__}: {err}"
        stats = anomaly.model_statistics(vae, x, seed=seed)[:, :SUMMARY_STATISTICS]
        stats_test = anomaly.model_statistics(vae, anomaly.model_units(vae, x_test), seed=seed)[:, :SUMMARY_STATISTICS]
        out[f"typicality, 4 summary stats{label}"] = _density_score(stats[rows], stats_test, seed)
    return out


def run_diagnostic_unit(table: str, xy, cls: int | None, seed: int, settings: dict, work: Path, log) -> dict:
    path = work / "diagnostic" / table / ("all" if cls is None else f"class-{cls}") / f"seed-{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    log(f"diagnostic: {table} class {cls} seed {seed}")
    data = split(table, *xy, cls, seed, settings)
    result = {"class": cls, "seed": seed, "variants": {}}
    for variant, options in DIAGNOSTIC_TRAINING.items():
        vae = vaekit.VAE(**{**settings["vaekit_vae"], **options(len(data["x_train"])), "seed": seed})
        started = time.perf_counter()
        vae.fit(data["x_train"])
        entry = {"options": options(len(data["x_train"])), "optimizer_steps": int(vae.history_[-1]["step"]),
                 "train_seconds": time.perf_counter() - started,
                 "val_neg_elbo": float(vae.history_[-1]["val_neg_elbo"]), "auroc": {}, "errors": {}}
        for name, scores in diagnostic_scores(vae, data["x_train"], data["x_test"], seed).items():
            if isinstance(scores, str):
                entry["auroc"][name], entry["errors"][name] = None, scores
            else:
                entry["auroc"][name] = metrics(scores, data["is_anomaly"])["auroc"]
        result["variants"][variant] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)
    return result


def summarize_diagnostic(units: dict[str, list[dict]]) -> dict:
    """Mean AUROC per table, training variant and score (a score that failed on any run of a table has none)."""
    out = {}
    for table, rows in units.items():
        out[table] = {}
        for variant in DIAGNOSTIC_TRAINING:
            entries = [r["variants"][variant] for r in rows]
            seeds = sorted({r["seed"] for r in rows})
            mean = {}
            for name in DIAGNOSTIC_SCORES:
                values = [e["auroc"][name] for e in entries]
                if any(v is None for v in values):
                    mean[name] = None
                else:  # over classes per seed, then over seeds, as in the benchmark's tables
                    mean[name] = float(np.mean([np.mean([e["auroc"][name] for r, e in zip(rows, entries)
                                                         if r["seed"] == s]) for s in seeds]))
            out[table][variant] = {"mean_auroc": mean,
                                   "optimizer_steps": sorted({e["optimizer_steps"] for e in entries}),
                                   "train_seconds": float(np.mean([e["train_seconds"] for e in entries]))}
    return out


def print_diagnostic(diagnostic: dict) -> None:
    print("\ndiagnostic: mean AUROC of vaekit's scores by training budget (same splits and seeds; no PyOD here)")
    short = {"neg_elbo": "elbo", "reconstruction_error": "recon", "neg_log_likelihood": "nll",
             "typicality (default)": "typ", "typicality, all rows": "typ-all", "typicality, 4 summary stats": "typ4",
             "typicality, 4 summary stats, all rows": "typ4-all"}
    print("  typ: the default (44 statistics, fitted on half the training rows); typ-all: on all of them; "
          "typ4(-all): only reconstruction, kl, posterior_log_std, code_norm")
    width = max(len(v) for v in DIAGNOSTIC_TRAINING) + 4
    for table, variants in diagnostic.items():
        print(f"{table}")
        print(" " * width + "".join(f"{short[n]:>9}" for n in DIAGNOSTIC_SCORES) + f"{'steps':>12}")
        for variant, r in variants.items():
            steps = "/".join(str(s) for s in r["optimizer_steps"])
            print(f"  {variant:<{width - 2}}" + "".join(f"{_cell(r['mean_auroc'][n]):>9}" for n in DIAGNOSTIC_SCORES)
                  + f"{steps:>12}")


# --- summary and report --------------------------------------------------------------------------

def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def aggregate(units: list[dict], detectors: list[str]) -> dict[str, dict]:
    """Per detector: mean over classes per seed, then mean and standard deviation over seeds; failures counted."""
    out = {}
    seeds = sorted({u["seed"] for u in units})
    for d in detectors:
        rows = [(u["seed"], u["results"][d]) for u in units if d in u["results"]]
        failures = sum(r["error"] is not None for _, r in rows)
        per_seed = {m: [_mean([r[m] for s, r in rows if s == seed]) for seed in seeds] for m in ("auroc", "auprc")}
        auroc = [v for v in per_seed["auroc"] if v is not None]
        out[d] = {"auroc": _mean(per_seed["auroc"]), "auprc": _mean(per_seed["auprc"]),
                  "auroc_std_over_seeds": float(np.std(auroc)) if len(auroc) > 1 else None,
                  "auroc_per_seed": per_seed["auroc"],
                  "fit_seconds": _mean([r["fit_seconds"] for _, r in rows if r["error"] is None]),
                  "score_seconds": _mean([r["score_seconds"] for _, r in rows if r["error"] is None]),
                  **{m: _mean([r.get(m) for _, r in rows if r["error"] is None])
                     for m in ("flagged_normal", "flagged_anomalous")},
                  "units": len(rows), "failures": failures,
                  "errors": sorted({r["error"] for _, r in rows if r["error"]})}
    return out


def targets(mean: dict[str, dict]) -> dict:
    """The project's targets on one table: vaekit's default >= PyOD's VAE, and within 0.02 AUROC of PyOD's best."""
    pyod = {d: m["auroc"] for d, m in mean.items() if d.startswith("pyod:") and m["auroc"] is not None}
    ours = mean.get("vaekit", {})
    if not pyod or "vaekit" not in mean:
        return {}
    best = max(pyod, key=pyod.get)
    complete = ours["failures"] == 0 and ours["auroc"] is not None
    vs_vae = (ours["auroc"] - pyod["pyod:VAE"]) if complete and "pyod:VAE" in pyod else None
    vs_best = (ours["auroc"] - pyod[best]) if complete else None
    return {"best_pyod": best, "best_pyod_auroc": pyod[best], "vaekit_auroc": ours["auroc"],
            "vaekit_failures": ours["failures"], "vaekit_minus_pyod_vae": vs_vae, "vaekit_minus_best_pyod": vs_best,
            "at_or_above_pyod_vae": vs_vae is not None and vs_vae >= 0,
            "within_0.02_of_best_pyod": vs_best is not None and vs_best >= -0.02}


def summarize(settings: dict, results: dict[str, list[dict]], detectors: list[str], wall_seconds: float,
              counts: dict) -> dict:
    tables = {}
    for table, units in results.items():
        mean = aggregate(units, detectors)
        tables[table] = {"units": units, "mean": mean, "targets": targets(mean)}
    return {"machine": machine(), "settings": settings, "detectors": {d: LABELS[d] for d in detectors},
            "versions": versions(), "wall_seconds_this_run": wall_seconds,
            "results_computed_this_run": counts["computed"], "results_from_cache": counts["cached"], "tables": tables,
            "mean_auroc": {t: {d: v["mean"][d]["auroc"] for d in detectors} for t, v in tables.items()}}


def versions() -> dict:
    out = {}
    for package in ("pyod", "scikit-learn", "numpy"):
        try:
            from importlib.metadata import version

            out[package] = version(package)
        except Exception:  # noqa: BLE001
            out[package] = None
    return out


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def print_report(summary: dict) -> None:
    m, s = summary["machine"], summary["settings"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
          f"vaekit {m['vaekit']}, pyod {summary['versions']['pyod']}")
    print(f"settings: seeds {s['seeds']}, train on {s['train_fraction']:.0%} of the normal rows; {s['standardize']}; "
          f"vaekit.VAE({', '.join(f'{k}={v!r}' for k, v in s['vaekit_vae'].items()) or 'defaults'}, seed=seed)")
    detectors = list(summary["detectors"])
    for table, result in summary["tables"].items():
        units = result["units"]
        classes = sorted({u["class"] for u in units}, key=lambda c: -1 if c is None else c)
        seeds = sorted({u["seed"] for u in units})
        first = units[0]
        print(f"\n{table}: " + ("" if classes == [None] else f"{len(classes)} classes {classes}, ") + f"seeds {seeds}; "
              f"e.g. {first['train_rows']} training rows, {first['test_rows']} test rows of which "
              f"{first['anomalies']} anomalies")
        width = max(len(LABELS[d]) for d in detectors) + 2
        print(" " * width + f"{'AUROC':>8}{'±seeds':>8}{'AUPRC':>8}{'fit s':>9}{'score s':>9}{'normal fl.':>11}"
              f"{'anom. fl.':>10}  failed")
        for d in detectors:
            r = result["mean"][d]
            failed = f"{r['failures']}/{r['units']}" if r["failures"] else ""
            print(f"{LABELS[d]:<{width}}{_cell(r['auroc']):>8}{_cell(r['auroc_std_over_seeds']):>8}{_cell(r['auprc']):>8}"
                  f"{_cell(r['fit_seconds'], 2):>9}{_cell(r['score_seconds'], 2):>9}{_cell(r.get('flagged_normal')):>11}"
                  f"{_cell(r.get('flagged_anomalous')):>10}  {failed}")
        t = result["targets"]
        if t:
            print(f"targets: vaekit default - PyOD VAE = {_cell(t['vaekit_minus_pyod_vae'], 3)} "
                  f"({'met' if t['at_or_above_pyod_vae'] else 'NOT met'}); vaekit default - best PyOD "
                  f"({LABELS[t['best_pyod']]}) = {_cell(t['vaekit_minus_best_pyod'], 3)} "
                  f"({'met' if t['within_0.02_of_best_pyod'] else 'NOT met'})"
                  + (f"; the default failed on {t['vaekit_failures']} run(s)" if t["vaekit_failures"] else ""))
    tables = list(summary["tables"])
    print("\nsummary: mean AUROC per table (one-class-out: mean over classes; then over seeds)")
    width = max(len(LABELS[d]) for d in detectors) + 2
    colw = max(max(len(t) for t in tables) + 2, 9)
    print(" " * width + "".join(f"{t:>{colw}}" for t in tables) + f"{'mean':>{colw}}")
    for d in detectors:
        values = [summary["tables"][t]["mean"][d] for t in tables]
        cells = [_cell(v["auroc"]) + ("*" if v["failures"] else "") for v in values]
        complete = [v["auroc"] for v in values if v["auroc"] is not None and not v["failures"]]
        overall = _cell(float(np.mean(complete))) if len(complete) == len(values) else "-"
        print(f"{LABELS[d]:<{width}}" + "".join(f"{c:>{colw}}" for c in cells) + f"{overall:>{colw}}")
    if any(summary["tables"][t]["mean"][d]["failures"] for t in tables for d in detectors):
        print("* failed on some runs: the mean of the others (see the failures above)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed and a few classes: checks the pipeline in a minute")
    parser.add_argument("--tables", help=f"comma-separated subset of {','.join(TABLES)} to run and report")
    parser.add_argument("--detectors", help="comma-separated subset of the detector keys (vaekit, vaekit:neg_elbo, "
                                            "pyod:ECOD, ...) to run and report")
    parser.add_argument("--diagnose", action="store_true",
                        help="also train vaekit with other budgets and fit the typicality density on other rows and "
                             "statistics (vaekit only; cached like the rest)")
    parser.add_argument("--work-dir", default="runs/bench-anomaly-tabular", help="where per-run results are cached")
    parser.add_argument("--json", metavar="PATH", help="write the summary as JSON")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: these models are tiny, and on 2 cores shared with other jobs "
                             "two threads made training 5-40 times slower, waiting on each other)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    settings = json.loads(json.dumps(QUICK if args.quick else FULL))
    tables = args.tables.split(",") if args.tables else list(TABLES)
    detectors = args.detectors.split(",") if args.detectors else list(DETECTORS)
    unknown = [t for t in tables if t not in TABLES] + [d for d in detectors if d not in DETECTORS]
    if unknown:
        parser.error(f"unknown table(s) or detector(s): {', '.join(unknown)}")
    detectors = [d for d in DETECTORS if d in detectors]
    work = settled_work_dir(args.work_dir, args.quick, settings)
    if work is None:
        return 2

    started = time.perf_counter()
    counts = {"computed": 0, "cached": 0}
    results = {}
    for table in tables:
        xy = load_table(table)
        results[table] = [run_unit(table, xy, cls, seed, detectors, settings, work, log, counts)
                          for cls in settings["classes"][table] for seed in settings["seeds"]]
    diagnostic = None
    if args.diagnose:
        units = {}
        for table in tables:
            xy = load_table(table)
            units[table] = [run_diagnostic_unit(table, xy, cls, seed, settings, work, log)
                            for cls in settings["classes"][table] for seed in settings["seeds"]]
        diagnostic = summarize_diagnostic(units)
    summary = summarize(settings, results, detectors, time.perf_counter() - started, counts)
    if diagnostic is not None:
        summary["diagnostic"] = diagnostic
    print_report(summary)
    if diagnostic is not None:
        print_diagnostic(diagnostic)
    print(f"\nwall time of this run: {summary['wall_seconds_this_run']:.0f} s ({counts['computed']} results computed, "
          f"{counts['cached']} read from the cache in {work})")
    if args.json:
        atomic_write_json(args.json, summary)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
