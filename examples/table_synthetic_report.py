"""From a table to a synthetic table you can check, and its empty cells filled.

    python examples/table_synthetic_report.py --table my-table.csv --target label --out synthetic
    python examples/table_synthetic_report.py --quick        # on a mixed table made from the iris data

1. read the table (CSV, TSV or Parquet): each column's kind is inferred (continuous, integer, yes/no,
   category) and printed, empty cells are allowed;
2. train a VAE on 80% of its rows, one likelihood per column, empty cells modelled;
3. sample as many synthetic rows as there are training rows: out/synthetic.csv, in the table's own form
   (text labels, yes/no as written, integers as integers, empty cells at the learned rates);
4. the quality report against the real training rows (column shapes, pair trends, how well a classifier
   tells real from synthetic rows and, with --target, how well a model trained on synthetic rows predicts the
   held-out real ones): out/report.json, report.md and marginals.png;
5. fill the empty cells of the held-out rows from the model: out/imputed.csv.

Without --table the script writes a demo table first: iris's measurements with the species as text, a yes/no
column and 5% empty cells. Copy it and change the training settings (``vaekit.VAE(...)``) for your table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

import vaekit
from vaekit.data.table import read_table, write_table
from vaekit.generation.report import format_summary, quality_report, write_report


def write_demo_table(path: Path, seed: int = 0) -> Path:
    """iris as a mixed table: four measurements, the species as text, a yes/no column, 5% of cells empty."""
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True)
    frame = iris.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    frame["species"] = np.asarray(iris.target_names)[iris.target]
    frame["long_petals"] = np.where(frame["petal_length"] > 4.0, "yes", "no")
    rng = np.random.default_rng(seed)
    for column in ("sepal_width", "petal_width", "long_petals"):
        frame.loc[rng.random(len(frame)) < 0.05, column] = None
    write_table(frame, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", help="CSV, TSV or Parquet file (default: a demo table made from iris)")
    parser.add_argument("--target", help="a column to predict for the report's ML efficacy (demo: species)")
    parser.add_argument("--out", default="synthetic-table", help="output folder (default synthetic-table)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: vaekit's data-scaled choice)")
    parser.add_argument("--quick", action="store_true", help="demo table, 30 epochs: runs in seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = args.target
    if args.table is None:
        args.table, target = str(write_demo_table(out / "demo-table.csv", args.seed)), target or "species"
    table = read_table(Path(args.table))
    rows = np.random.default_rng(args.seed).permutation(len(table))
    cut = int(0.8 * len(table))
    train, held_out = table.iloc[np.sort(rows[:cut])], table.iloc[np.sort(rows[cut:])]

    vae = vaekit.VAE(epochs=30 if args.quick and args.epochs is None else args.epochs, seed=args.seed).fit(train)
    print("columns:\n" + "\n".join(vae.schema_.describe()))

    synthetic = vae.sample(len(train), seed=args.seed)  # a DataFrame in the table's own form
    write_table(synthetic, out / "synthetic.csv")
    kinds = {c.name: c.kind for c in vae.schema_.columns}
    real = train[list(kinds)]
    report = quality_report(real, synthetic, kinds, target=target, holdout=held_out[list(kinds)] if target else None,
                            seed=args.seed)
    write_report(report, real, synthetic, kinds, out)
    print(format_summary(report))

    imputed = vae.impute(held_out[list(kinds)])  # observed cells kept, empty ones filled from the model
    write_table(imputed, out / "imputed.csv")
    filled = int(held_out[list(kinds)].isna().to_numpy().sum())
    print(f"wrote {out / 'synthetic.csv'} ({len(synthetic)} rows), the report in {out}/ and {out / 'imputed.csv'} "
          f"({filled} empty cells of {len(held_out)} held-out rows filled)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
