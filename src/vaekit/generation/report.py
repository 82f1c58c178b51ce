"""How close a synthetic table is to the real one: the quality metrics as SDMetrics defines them.

``quality_report(real, synthetic, kinds)`` compares the columns named in ``kinds`` (each one of COLUMN_KINDS):

- column shapes, one score per column: ``KSComplement`` (numeric) = 1 - the two-sample Kolmogorov-Smirnov
  statistic, or ``TVComplement`` (boolean/categorical) = 1 - the total variation distance of the category
  frequencies; both on the non-missing values only.
- column pair trends, one score per pair: ``CorrelationSimilarity`` (both numeric) = 1 - |r_real - r_synth| / 2
  with Pearson's r on the rows where both are present, else ``ContingencySimilarity`` = 1 - the total variation
  distance of the joint frequency tables (numeric columns cut into 10 equal-width bins fixed by the real column).
- overall score: the mean of the column-shape and pair-trend means (SDMetrics' "overall quality"); a pair whose
  correlation is undefined (a constant column) scores None and is left out of the means.
- detection: the mean 5-fold AUROC of a HistGradientBoostingClassifier telling real rows from synthetic ones
  (0.5 is best; identical rows share a fold), and score = 1 - max(0, 2 * AUROC - 1) (1 is best).
- ML efficacy (with ``target`` and ``holdout``): HistGradientBoosting models trained on synthetic rows and on real
  rows, both scored on the real held-out rows (macro F1 or R^2); ratio = synthetic / real.

Missing values (NaN, None, pd.NA, and +-inf in numeric columns) are left out of every metric and reported as
rates. Category labels are compared as strings after normalising whole numbers (1, 1.0, "1.0" and "1" are one
label); in boolean columns True/"true"/1 and False/"false"/0 are one label each.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ..fileio import atomic_write_bytes, atomic_write_json, atomic_write_text

COLUMN_KINDS = ("continuous", "integer", "boolean", "categorical")
NUMERIC_KINDS = ("continuous", "integer")
CONTINGENCY_BINS = 10
MAX_ONE_HOT = 50  # a categorical feature keeps its most frequent real labels; the rest share one "other" column
DETECTION_FOLDS = 5
MAX_ITER = 100
DUPLICATE_CHUNK = 10
_WHOLE = re.compile(r"^[+-]?\d+\.0*$")
_BOOL = {"true": "True", "1": "True", "false": "False", "0": "False"}


def _label(value, boolean: bool) -> str:
    if isinstance(value, (bool, np.bool_)):
        text = "True" if value else "False"
    elif isinstance(value, (int, np.integer)):
        text = str(int(value))
    elif isinstance(value, (float, np.floating)):
        text = str(int(value)) if float(value).is_integer() else repr(float(value))
    else:
        text = str(value).strip()
        if _WHOLE.match(text):
            text = str(int(text.split(".")[0]))
    return _BOOL.get(text.lower(), text) if boolean else text


def _column(frame: pd.DataFrame, name, kind: str, table: str) -> np.ndarray:
    """A float array with NaN for missing (numeric kinds) or an object array of labels with None for missing."""
    series = frame[name]
    if kind in NUMERIC_KINDS:
        values = pd.to_numeric(series, errors="coerce")
        bad = values.isna() & ~series.isna()
        if bad.any():
            raise DataError(f"column {name!r} of the {table} table is {kind} but holds {series[bad].iloc[0]!r}")
        values = values.to_numpy(dtype=float, na_value=np.nan)
        return np.where(np.isfinite(values), values, np.nan)
    present = ~series.isna().to_numpy()
    codes, uniques = pd.factorize(series[present])
    labels = np.array([_label(u, kind == "boolean") for u in uniques] + [None], dtype=object)
    out = np.full(len(series), None, dtype=object)
    out[present] = labels[codes]
    return out


def _missing(values: np.ndarray) -> np.ndarray:
    return np.isnan(values) if values.dtype.kind == "f" else pd.isna(values)


def _prepare(frame, kinds: dict, table: str) -> dict:
    """The columns named in ``kinds`` as arrays (see ``_column``); bad input is a one-line ``DataError``."""
    if not isinstance(kinds, dict) or not kinds:
        raise DataError("kinds must map at least one column name to one of " + ", ".join(COLUMN_KINDS))
    for name, kind in kinds.items():
        if kind not in COLUMN_KINDS:
            raise DataError(f"column {name!r} has unknown kind {kind!r} (choose from {', '.join(COLUMN_KINDS)})")
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"the {table} table must be a pandas DataFrame, not {type(frame).__name__}")
    if len(frame) == 0:
        raise DataError(f"the {table} table is empty")
    for name in kinds:
        if name not in frame.columns:
            raise DataError(f"column {name!r} is missing from the {table} table")
    return {name: _column(frame, name, kind, table) for name, kind in kinds.items()}


def _num(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _mean(scores) -> float | None:
    scores = [s for s in scores if s is not None]
    return float(np.mean(scores)) if scores else None


def _tvd(real: pd.Series, synthetic: pd.Series) -> float:
    """Total variation distance 0.5 * sum |p - q| between two frequency vectors aligned on their labels."""
    return float(real.sub(synthetic, fill_value=0.0).abs().sum() / 2.0)


def ks_complement(real, synthetic) -> float | None:
    """KSComplement = 1 - max_x |F_real(x) - F_synth(x)|, the empirical CDFs of the non-missing values."""
    from scipy.stats import ks_2samp

    r, s = (np.asarray(v, dtype=float) for v in (real, synthetic))
    r, s = r[np.isfinite(r)], s[np.isfinite(s)]
    return None if len(r) == 0 or len(s) == 0 else 1.0 - float(ks_2samp(r, s).statistic)


def tv_complement(real, synthetic) -> float | None:
    """TVComplement = 1 - 0.5 * sum_c |p_real(c) - p_synth(c)| over the categories of the non-missing values."""
    r, s = pd.Series(real, dtype=object).dropna(), pd.Series(synthetic, dtype=object).dropna()
    if len(r) == 0 or len(s) == 0:
        return None
    return 1.0 - _tvd(r.value_counts(normalize=True), s.value_counts(normalize=True))


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    return float(np.clip((dx @ dy) / math.sqrt((dx @ dx) * (dy @ dy)), -1.0, 1.0))


def correlation_similarity(real_a, real_b, synth_a, synth_b) -> float | None:
    """CorrelationSimilarity = 1 - |r_real - r_synth| / 2, Pearson's r on rows where both values are present;
    None when a correlation is undefined (a constant column, fewer than two complete rows)."""
    r = _pearson(np.asarray(real_a, dtype=float), np.asarray(real_b, dtype=float))
    s = _pearson(np.asarray(synth_a, dtype=float), np.asarray(synth_b, dtype=float))
    return None if r is None or s is None else 1.0 - abs(r - s) / 2.0


def contingency_similarity(real_a, real_b, synth_a, synth_b) -> float | None:
    """ContingencySimilarity = 1 - 0.5 * sum_(a,b) |p_real(a,b) - p_synth(a,b)|, the joint frequencies of the
    (already discrete) labels on rows where both are present."""
    def joint(a, b):
        pairs = pd.DataFrame({"a": pd.Series(a, dtype=object), "b": pd.Series(b, dtype=object)}).dropna()
        return pairs.value_counts(normalize=True) if len(pairs) else None
    r, s = joint(real_a, real_b), joint(synth_a, synth_b)
    return None if r is None or s is None else 1.0 - _tvd(r, s)


def _bins(real: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin numbers 0..9 of ``values`` on 10 equal-width bins spanning the real column (outliers to the end bins)."""
    present = real[np.isfinite(real)]
    if len(present) == 0:
        return np.full(len(values), None, dtype=object)
    edges = np.histogram_bin_edges(present, bins=CONTINGENCY_BINS)
    out = np.digitize(values, edges[1:-1]).astype(object)
    out[~np.isfinite(values)] = None
    return out


def _features(columns: dict, kinds: dict, reference: dict, others: list) -> list[np.ndarray]:
    """One float matrix per table in ``[reference] + others``: numeric columns standardised by the reference
    (missing -> its median, plus a 0/1 indicator when any table has a gap); labels one-hot, missing its own column."""
    tables = [reference] + others
    blocks = [[] for _ in tables]
    for name in columns:
        ref = reference[name]
        if kinds[name] in NUMERIC_KINDS:
            present = ref[np.isfinite(ref)]
            median, mean, std = ((float(np.median(present)), present.mean(), present.std()) if len(present)
                                 else (0.0, 0.0, 1.0))
            gaps = any(np.isnan(t[name]).any() for t in tables)
            for block, t in zip(blocks, tables):
                miss = np.isnan(t[name])
                block.append(((np.where(miss, median, t[name]) - mean) / (std or 1.0))[:, None])
                if gaps:
                    block.append(miss[:, None].astype(float))
        else:
            kept = list(pd.Series(ref, dtype=object).value_counts().index[:MAX_ONE_HOT])
            mapped = [np.where(_missing(t[name]), "\0missing", np.where(pd.Series(t[name], dtype=object).isin(kept),
                                                                         t[name], "\0other")) for t in tables]
            cats = kept + [c for c in ("\0other", "\0missing") if any((m == c).any() for m in mapped)]
            for block, m in zip(blocks, mapped):
                block.append(np.eye(len(cats))[pd.Categorical(m, categories=cats).codes])
    return [np.hstack(b) for b in blocks]


def _folds(X: np.ndarray, y: np.ndarray, folds: int, rng) -> np.ndarray:
    """Stratified fold numbers keeping identical rows in one fold (in chunks of DUPLICATE_CHUNK): a copied row
    tested by a model that saw its twin with the other label is misjudged systematically (exact copies would
    give an AUROC far below 0.5). The chunks spread frequent combinations of categories over all folds."""
    _, vector = np.unique(X, axis=0, return_inverse=True)
    order = rng.permutation(len(X))
    order = order[np.argsort(vector.ravel()[order], kind="stable")]
    ordered = vector.ravel()[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ordered)) + 1]
    rank = np.arange(len(X)) - np.repeat(starts, np.diff(np.r_[starts, len(X)]))
    _, group = np.unique(np.c_[ordered, rank // DUPLICATE_CHUNK], axis=0, return_inverse=True)
    group = group.ravel()
    share = np.bincount(group, weights=y[order]) / np.bincount(group)  # stratify on each group's synthetic share
    fold_of_group = np.empty(len(share), dtype=int)
    fold_of_group[np.lexsort((rng.random(len(share)), share))] = np.arange(len(share)) % folds
    fold = np.empty(len(X), dtype=int)
    fold[order] = fold_of_group[group]
    return fold


def _detection(real: dict, synth: dict, kinds: dict, n_real: int, n_synth: int, seed: int, max_rows: int) -> dict:
    """The mean stratified k-fold AUROC of a classifier telling real (0) from synthetic (1) rows, and
    score = 1 - max(0, 2 * AUROC - 1). Both tables are subsampled to the same number of rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    n = min(n_real, n_synth, max(1, max_rows // 2))
    folds = min(DETECTION_FOLDS, n)
    result = {"classifier": "HistGradientBoostingClassifier", "folds": folds, "rows_per_class": n,
              "auroc": None, "score": None}
    if folds < 2:
        return result
    r, s = ({k: v[pick] for k, v in t.items()} for t, pick in
            ((real, rng.choice(n_real, n, replace=False)), (synth, rng.choice(n_synth, n, replace=False))))
    X = np.vstack(_features(kinds, kinds, r, [s]))
    y = np.r_[np.zeros(n, int), np.ones(n, int)]
    fold = _folds(X, y, folds, rng)
    aucs = []
    for k in range(folds):
        test = fold == k
        if len(np.unique(y[test])) < 2 or len(np.unique(y[~test])) < 2:
            continue
        # early stopping on a validation split of the training folds; too few rows for one: a fixed MAX_ITER
        model = HistGradientBoostingClassifier(max_iter=MAX_ITER, early_stopping=bool((~test).sum() >= 200),
                                               random_state=seed).fit(X[~test], y[~test])
        aucs.append(roc_auc_score(y[test], model.predict_proba(X[test])[:, 1]))
    if aucs:
        result.update(auroc=float(np.mean(aucs)), score=1.0 - max(0.0, 2.0 * float(np.mean(aucs)) - 1.0))
    return result


def _ml_efficacy(real: dict, synth: dict, hold: dict, kinds: dict, target: str, seed: int, max_rows: int) -> dict:
    """Holdout macro F1 (classification) or R^2 (regression) of models trained on synthetic vs on real rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.metrics import f1_score, r2_score

    classify = kinds[target] not in NUMERIC_KINDS
    features = {k: v for k, v in kinds.items() if k != target}
    if not features:
        raise DataError(f"ml_efficacy needs at least one column besides the target {target!r}")
    rng, tables = np.random.default_rng(seed), []
    for table, name in ((real, "real"), (synth, "synthetic"), (hold, "holdout")):
        keep = np.flatnonzero(~_missing(table[target]))
        if len(keep) == 0 and name != "synthetic":
            raise DataError(f"the {name} table has no rows where the target {target!r} is present")
        if name != "holdout" and len(keep) > max_rows:
            keep = np.sort(rng.choice(keep, max_rows, replace=False))
        tables.append({k: v[keep] for k, v in table.items()})
    X_real, X_synth, X_hold = _features(features, kinds, tables[0], tables[1:])
    y_real, y_synth, y_hold = (t[target] for t in tables)
    Model = HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor

    def score(X, y):
        if len(y) == 0:
            return None
        if classify and len(set(y)) < 2:  # one class to learn: predict it
            return float(f1_score(y_hold, np.full(len(y_hold), y[0]), average="macro", zero_division=0))
        prediction = Model(max_iter=MAX_ITER, random_state=seed).fit(X, y).predict(X_hold)
        return float(f1_score(y_hold, prediction, average="macro", zero_division=0)) if classify else \
            _num(r2_score(y_hold, prediction))

    on_synth, on_real = score(X_synth, y_synth), score(X_real, y_real)
    ratio = on_synth / on_real if on_synth is not None and on_real is not None and on_real > 0 else None
    return {"task": "classification" if classify else "regression", "metric": "macro_f1" if classify else "r2",
            "target": str(target), "synthetic": on_synth, "real": on_real, "ratio": ratio}


def quality_report(real: pd.DataFrame, synthetic: pd.DataFrame, kinds: dict[str, str], *,
                   target: str | None = None, holdout: pd.DataFrame | None = None, seed: int = 0,
                   max_rows: int = 20000) -> dict:
    """The metrics in the module docstring as a JSON-ready dict (plain floats; None where a metric does not apply).

    Shapes and pair trends use every row; detection draws at most ``max_rows / 2`` rows from each table (as
    many from both), ML efficacy trains on at most ``max_rows`` rows of each. A bad input is a ``DataError``.
    """
    r, s = _prepare(real, kinds, "real"), _prepare(synthetic, kinds, "synthetic")
    if target is not None and target not in kinds:
        raise DataError(f"the target {target!r} is not one of the columns in kinds")
    shapes = {}
    for name, kind in kinds.items():
        numeric = kind in NUMERIC_KINDS
        shapes[str(name)] = {"metric": "KSComplement" if numeric else "TVComplement",
                             "score": (ks_complement if numeric else tv_complement)(r[name], s[name]),
                             "missing_rate_real": float(_missing(r[name]).mean()),
                             "missing_rate_synthetic": float(_missing(s[name]).mean())}
    pairs, names = {}, list(kinds)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if kinds[a] in NUMERIC_KINDS and kinds[b] in NUMERIC_KINDS:
                metric, value = "CorrelationSimilarity", correlation_similarity(r[a], r[b], s[a], s[b])
            else:
                cut = {c: ((_bins(r[c], r[c]), _bins(r[c], s[c])) if kinds[c] in NUMERIC_KINDS else (r[c], s[c]))
                       for c in (a, b)}
                metric = "ContingencySimilarity"
                value = contingency_similarity(cut[a][0], cut[b][0], cut[a][1], cut[b][1])
            pairs[f"{a}|{b}"] = {"metric": metric, "score": _num(value)}
    shape_score = _mean(v["score"] for v in shapes.values())
    pair_score = _mean(v["score"] for v in pairs.values())
    ml = None
    if target is not None and holdout is not None:
        h = _prepare(holdout, kinds, "holdout")
        ml = _ml_efficacy(r, s, h, kinds, target, seed, max_rows)
    return {"rows_real": len(real), "rows_synthetic": len(synthetic), "columns": [str(c) for c in kinds],
            "column_shapes": shapes, "column_shapes_score": shape_score,
            "column_pair_trends": pairs, "column_pair_trends_score": pair_score,
            "overall_score": _mean([shape_score, pair_score]),
            "detection": _detection(r, s, kinds, len(real), len(synthetic), seed, max_rows),
            "ml_efficacy": ml}


def _fmt(x, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def format_summary(report: dict) -> str:
    """A few lines for the terminal: the headline scores, detection, ML efficacy and the weakest columns."""
    det, ml = report.get("detection") or {}, report.get("ml_efficacy")
    lines = [f"quality {_fmt(report['overall_score'])} (column shapes {_fmt(report['column_shapes_score'])}, "
             f"column pair trends {_fmt(report['column_pair_trends_score'])}; 1 is best)",
             f"detection ({det.get('classifier')}): AUROC {_fmt(det.get('auroc'))} (0.5 is best), "
             f"score {_fmt(det.get('score'))}"]
    if ml:
        lines.append(f"ML efficacy ({ml['task']}, {ml['metric']} on holdout): trained on synthetic "
                     f"{_fmt(ml['synthetic'])}, on real {_fmt(ml['real'])}, ratio {_fmt(ml['ratio'])}")
    worst = sorted((v["score"], k) for k, v in report["column_shapes"].items() if v["score"] is not None)[:3]
    if worst:
        lines.append("weakest columns: " + ", ".join(f"{k} {v:.3f}" for v, k in worst))
    lines.append(f"{report['rows_real']} real rows, {report['rows_synthetic']} synthetic rows, "
                 f"{len(report['columns'])} columns")
    return "\n".join(lines)


def _markdown(report: dict) -> str:
    rows = ["| column | metric | score | missing (real) | missing (synthetic) |", "|---|---|---|---|---|"]
    for name, v in report["column_shapes"].items():
        rows.append(f"| {str(name).replace('|', '/')} | {v['metric']} | {_fmt(v['score'])} "
                    f"| {v['missing_rate_real']:.1%} | {v['missing_rate_synthetic']:.1%} |")
    summary = "\n".join(f"- {line}" for line in format_summary(report).splitlines())
    return f"# Synthetic data quality\n\n{summary}\n\n" + "\n".join(rows) + "\n"


def _panel(ax, name, kind: str, real: np.ndarray, synth: np.ndarray) -> None:
    if kind in NUMERIC_KINDS:
        r, s = real[np.isfinite(real)], synth[np.isfinite(synth)]
        both = np.concatenate([r, s])
        if len(both):
            low, high = both.min(), both.max()
            whole = kind == "integer" and high - low <= 40 and np.all(both == np.round(both))
            edges = np.arange(low - 0.5, high + 1.5) if whole else np.histogram_bin_edges(both, bins=20)
            for values, color in ((r, "tab:blue"), (s, "tab:orange")):
                if len(values):
                    ax.hist(values, bins=edges, density=True, alpha=0.5, color=color)
    else:
        r, s = (pd.Series(v, dtype=object).dropna().value_counts(normalize=True) for v in (real, synth))
        labels = list(r.add(s, fill_value=0).sort_values(ascending=False).index[:12])
        x = np.arange(len(labels))
        ax.bar(x - 0.2, [r.get(c, 0.0) for c in labels], 0.4, color="tab:blue")
        ax.bar(x + 0.2, [s.get(c, 0.0) for c in labels], 0.4, color="tab:orange")
        ax.set_xticks(x, [str(c)[:10] for c in labels], rotation=45, ha="right", fontsize=7)
    ax.set_title(f"{name}\nmissing: real {_missing(real).mean():.1%}, synth {_missing(synth).mean():.1%}",
                 fontsize=8)
    ax.tick_params(labelsize=7)


def write_report(report: dict, real, synthetic, kinds, out_dir) -> list[Path]:
    """Write report.json, a short report.md table, and marginals.png (one small panel per column: real vs synthetic
    histogram for numeric columns, side-by-side bars for boolean/categorical, the missing rate in each panel's title);
    return the paths written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    r, s = _prepare(real, kinds, "real"), _prepare(synthetic, kinds, "synthetic")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md", out / "marginals.png"]
    atomic_write_json(paths[0], report)
    atomic_write_text(paths[1], _markdown(report))
    ncols, nrows = min(4, len(kinds)), math.ceil(len(kinds) / 4)
    fig = Figure(figsize=(3.2 * ncols, 2.6 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, kind) in zip(axes, kinds.items()):
        _panel(ax, name, kind, r[name], s[name])
    for ax in axes[len(kinds):]:
        ax.set_axis_off()
    fig.legend(handles=[Patch(color="tab:blue", alpha=0.6, label="real"),
                        Patch(color="tab:orange", alpha=0.6, label="synthetic")], loc="outside upper right",
               fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    atomic_write_bytes(paths[2], buffer.getvalue())
    return paths
