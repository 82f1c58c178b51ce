"""Anomaly detection: ``score`` (per-example scores, AUROC/AUPRC with labels) and ``fit-detector`` (a threshold)."""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CalibrationSizeError, CheckpointError, ConfigError, DataError
from ..fileio import atomic_write_text
from ..names import BACKGROUND_DIR, COMPRESSORS, DEFAULT_SCORE, DETECTOR_FILE, SCORE_DESCRIPTIONS, SCORE_NAMES
from .common import (DEVICE_HELP, add_data_options, check_output, load_run, load_run_data, load_run_data_or_own,
                     positive_int, resolved_split, run_labels)

if TYPE_CHECKING:
    import numpy as np


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("score", help="anomaly scores of every example (higher = more anomalous)",
                              description="Write one row per example of DATA with a column per anomaly score and a "
                                          "column 'score' holding the default one; higher means more anomalous. "
                                          f"Scores: {'; '.join(f'{k}: {v}' for k, v in SCORE_DESCRIPTIONS.items())}. "
                                          "With labels marking the anomalies, print AUROC and AUPRC and write a ROC curve. "
                                          "When the run holds a fitted detector (vaekit fit-detector), its score is the "
                                          "default and a column 'is_anomaly' holds its verdict.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("data", metavar="DATA", help="the examples to score")
    p.add_argument("-o", "--output", required=True, help="output: .csv")
    p.add_argument("--score", choices=SCORE_NAMES,
                   help=f"the score written to column 'score' (default: the run's detector's, else "
                        f"{DEFAULT_SCORE}: how unusual an example's reconstruction, KL and posterior are "
                        "compared with the training data (DoSE), which unlike -log p(x) does not rank simpler "
                        "images from elsewhere as more normal; benchmarks/anomaly.py measures it)")
    p.add_argument("--scores", type=_parse_scores, metavar="A,B",
                   help="the scores to compute besides the default one (default: neg_elbo,reconstruction_error, "
                        "one fast pass each); 'all': every score that applies, including importance sampling "
                        "(-log p(x) with K samples) but not likelihood_regret, which is slow and only computed "
                        "when named")
    p.add_argument("--num-importance-samples", type=positive_int, metavar="K",
                   help="importance samples for -log p(x) (default: the detector's, else 100)")
    p.add_argument("--compressor", choices=COMPRESSORS, help="for input_complexity (default: png)")
    p.add_argument("--background", metavar="RUN2",
                   help="a run trained on perturbed data: adds likelihood_ratio (default: the one saved with the "
                        "run's detector, if any)")
    p.add_argument("--llr-k", type=int, default=1, metavar="K",
                   help="for the llr score: how many of the lowest stochastic layers its second bound takes from the "
                        "prior (0 < K < the number of layers; default 1)")
    p.add_argument("--seed", type=int, help="seed of the binarization draw and the posterior samples (default 0)")
    p.add_argument("--explain", metavar="DIR",
                   help="write why the flagged examples are anomalous into DIR: for images one PNG each (the image, "
                        "its reconstruction and a heat map of each pixel's share of -log p(x|z)), for tables "
                        "explanations.csv with each column's share; flagged = above the detector's threshold, else "
                        "the --explain-top highest scores")
    p.add_argument("--explain-top", type=positive_int, default=16, metavar="N",
                   help="with --explain and no detector (or more flagged examples than N): the N highest scores (default 16)")
    labels = p.add_argument_group("known anomalies (for AUROC, AUPRC and a ROC curve)")
    labels.add_argument("--labels", metavar="FILE",
                        help="one 0/1 (or true/false) per example, 1 = anomaly: .npy, .csv or .txt")
    labels.add_argument("--anomaly-classes", metavar="A,B",
                        help="the data's own labels (or class names) that count as anomalies, e.g. 3,7")
    labels.add_argument("--roc", metavar="PNG", help="where to write the ROC curves (default: beside the output, *_roc.png)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_data_options(p)
    p.set_defaults(func=score)

    p = subparsers.add_parser("fit-detector", help="set an anomaly threshold on clean data and store it with the run",
                              description="Score clean examples and store a threshold in RUN/anomaly_detector.json: "
                                          "with --target-fpr F at most a fraction F of new clean data is flagged "
                                          "(split-conformal quantile); with --contamination C the fraction C of DATA "
                                          "itself is flagged. vaekit score and AnomalyDetector.load then use it.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("data", metavar="DATA", nargs="?",
                   help="clean examples not used in training (default: the run's own data, its test split)")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--target-fpr", type=float, metavar="F", help="false-positive rate on clean data (default 0.05)")
    rule.add_argument("--contamination", type=float, metavar="C", help="fraction of DATA to flag (PyOD's rule)")
    p.add_argument("--score", choices=SCORE_NAMES,
                   help=f"the score to threshold (default {DEFAULT_SCORE}; its density comes from the run's "
                        "typicality.json, or is fitted on half of DATA when the run has none)")
    p.add_argument("--num-importance-samples", type=positive_int, default=100, metavar="K")
    p.add_argument("--compressor", choices=COMPRESSORS, default="png")
    p.add_argument("--background", metavar="RUN2",
                   help="a run trained on perturbed data, for --score likelihood_ratio; it is copied into "
                        f"RUN/{BACKGROUND_DIR} with the detector")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_data_options(p)
    p.set_defaults(func=fit_detector)


QUICK_SCORES = ("neg_elbo", "reconstruction_error")
"""What vaekit score computes besides the default score unless --scores says otherwise: cheap, one pass each."""


def _parse_scores(text: str) -> list[str] | str:
    if text.strip() == "all":
        return "all"
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCORE_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown score(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(SCORE_NAMES)}")
    return names


def _saved_detector(run: str):
    from .. import anomaly

    try:
        return anomaly.read_detector_state(run)
    except CheckpointError:
        if (Path(run) / DETECTOR_FILE).is_file():
            raise  # present but damaged: say so rather than ignore it
        return None


def score(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import anomaly
    from ..plots import save_figure

    out = check_output(args.output, (".csv",))
    roc_path = check_output(args.roc, (".png",)) if args.roc else None
    if args.labels and args.anomaly_classes:
        raise ConfigError("give either --labels or --anomaly-classes, not both")
    vae = load_run(args.run, args.device)
    detector = _saved_detector(args.run)
    if detector is not None and detector.model_fingerprint != anomaly.model_fingerprint(vae):
        raise CheckpointError(f"the detector in {args.run} was calibrated for other weights; run vaekit fit-detector again")
    if args.background:
        background = load_run(args.background, args.device)
    else:
        background = anomaly.load_background(args.run, detector, args.device) if detector is not None else None
    typicality_model = _run_typicality(args.run, vae, args.data_dir)
    k = args.num_importance_samples or (detector.num_importance_samples if detector else 100)
    compressor = args.compressor or (detector.compressor if detector else "png")
    seed = args.seed if args.seed is not None else (detector.seed if detector else 0)
    default = args.score or (detector.score if detector else anomaly.default_score(vae, typicality_model))

    x, labels, dataset = load_run_data(args.data, vae, args.data_dir)
    given = run_labels(vae, labels, dataset, args.run)  # a conditional run scores x given its label
    if given is not None and args.explain:
        raise ConfigError("--explain is not available for conditional runs yet")
    truth = _anomaly_truth(args, labels, dataset, len(x))
    if args.scores == "all":
        names = None  # every score that applies but likelihood regret (slow: only by name)
    else:
        names = list(args.scores or QUICK_SCORES)
        names += [] if default in names else [default]
    scores = anomaly.anomaly_scores(vae, x, names, num_importance_samples=k, compressor=compressor, seed=seed,
                                    background=background, typicality=typicality_model, llr_k=args.llr_k,
                                    labels=given)
    columns = {**scores, "score": scores[default]}
    if detector is not None and detector.score == default:
        columns["is_anomaly"] = (scores[default] > detector.threshold).astype(int)
    named = example_names(dataset, args.data)
    classes = dataset.class_names
    shown = labels if labels is None or classes is None or labels.dtype.kind not in "iu" else \
        np.array([classes[int(v)] if 0 <= int(v) < len(classes) else str(v) for v in labels])  # labels by name
    _write_scores(out, columns, shown, truth, named)
    names = named[1] if named is not None and named[0] == "file" else None
    print(f"wrote {len(scores)} scores of {len(x)} examples to {out} (column 'score' = {default})", file=sys.stderr)
    if args.explain:
        _explain(args, vae, x, columns, names, seed)
    if truth is not None:
        metrics = anomaly.detection_metrics(scores, truth)
        print(f"{int(truth.sum())} anomalies among {len(truth)} examples")
        rows = {name + (" (default)" if name == default else ""): m for name, m in metrics.items()}
        width = max(len(r) for r in rows) + 2
        print(f"{'score':<{width}}{'AUROC':>8}{'AUPRC':>8}")
        for row, m in rows.items():
            print(f"{row:<{width}}{m['auroc']:>8.4f}{m['auprc']:>8.4f}")
        roc_path = roc_path or out.with_name(out.stem + "_roc.png")
        save_figure(anomaly.roc_figure(scores, truth, title=f"ROC curves on {args.data}"), roc_path)
        print(f"wrote the ROC curves to {roc_path}", file=sys.stderr)
    return 0


def _run_typicality(run: str, vae, data_dir: str | None):
    """The run's typicality model; a run without one (trained before it existed) gets it fitted now on its own
    training data and saved beside the model, or ``None`` when that data cannot be read."""
    from .. import anomaly
    from ..anomaly import typicality

    state = typicality.load_typicality(run, vae)
    if state is not None:
        return state
    spec = vae.config_.data.source
    if spec == "array":
        return None
    try:
        x, labels, dataset = load_run_data(spec + ":train", vae, data_dir)
        labels = run_labels(vae, labels, dataset, run)
    except DataError as err:
        print(f"note: {run} has no typicality model and its training data cannot be read ({err}); "
              "scoring without it", file=sys.stderr)
        return None
    try:
        state = typicality.fit_typicality(vae, anomaly.model_units(vae, anomaly.prepare_inputs(vae, x)), labels=labels)
    except DataError as err:
        print(f"note: no typicality model for {run} ({err}); scoring without it", file=sys.stderr)
        return None
    path = typicality.save_typicality(state, run)
    print(f"fitted the typicality model on {state.fit_size:,} training examples of {spec}; saved it as {path}",
          file=sys.stderr)
    return state


def example_names(dataset, spec: str) -> tuple[str, list[str]] | None:
    """The column naming each example of ``spec``: its file (image folders) or its row in the source file."""
    ids = dataset.example_ids(resolved_split(spec, dataset))
    if ids is None:
        return None
    return ("file" if dataset.files is not None else "source_row"), ids


def _explain(args: argparse.Namespace, vae, x: np.ndarray, columns: dict[str, np.ndarray],
             names: list[str] | None, seed: int) -> None:
    import numpy as np

    from ..anomaly.explain import write_explanations

    score = columns["score"]
    order = np.argsort(-score, kind="stable")
    if "is_anomaly" in columns:
        flagged = order[columns["is_anomaly"][order] == 1][: args.explain_top]
        why = f"{len(flagged)} of {int(columns['is_anomaly'].sum())} above the detector's threshold"
    else:
        flagged = order[: args.explain_top]
        why = f"the {len(flagged)} highest scores"
    if len(flagged) == 0:
        print("no example is above the detector's threshold; nothing to explain", file=sys.stderr)
        return
    labels = [Path(n).stem for n in names] if names is not None else None
    paths = write_explanations(vae, x, args.explain, indices=[int(i) for i in flagged], names=labels, scores=score,
                               seed=seed)
    print(f"wrote {len(paths)} explanation file(s) of {why} to {args.explain}", file=sys.stderr)


def _anomaly_truth(args: argparse.Namespace, labels: np.ndarray | None, dataset, n: int) -> np.ndarray | None:
    """Which examples are known anomalies: from --labels, from --anomaly-classes, or from a 0/1 --label-column."""
    import numpy as np

    if args.labels:
        truth = read_anomaly_labels(args.labels)
        if len(truth) != n:
            raise DataError(f"{args.labels} holds {len(truth)} labels but DATA has {n} examples")
        return truth
    if args.anomaly_classes:
        if labels is None:
            raise DataError("--anomaly-classes needs data with labels (built-in sets, labelled .npz, image subfolders, "
                            "--label-column); otherwise use --labels FILE")
        wanted = {c.strip() for c in args.anomaly_classes.split(",") if c.strip()}
        names = dataset.class_names
        as_text = np.array([str(v) for v in labels])
        as_name = np.array([names[int(v)] if names is not None and str(v).lstrip("-").isdigit() and 0 <= int(v) < len(names)
                            else str(v) for v in labels])
        truth = np.isin(as_text, list(wanted)) | np.isin(as_name, list(wanted))
        if not truth.any():
            raise DataError(f"no example of DATA has a label in {sorted(wanted)}; its labels are "
                            f"{', '.join(sorted(set(as_text.tolist()))[:20])}")
        return truth
    if args.label_column and labels is not None:
        return _as_binary(labels, f"column {args.label_column}")
    return None


def read_anomaly_labels(path: str) -> np.ndarray:
    """0/1 anomaly markers from .npy or a text/CSV file with one value per line (a header line is skipped)."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path} does not exist")
    if p.suffix.lower() == ".npy":
        try:
            values = np.load(p, allow_pickle=False).reshape(-1)
        except (ValueError, OSError) as err:
            raise DataError(f"cannot read {path}: {err}") from None
        return _as_binary(values, path)
    rows = [r for r in csv.reader(io.StringIO(p.read_text(encoding="utf-8"))) if r and r[0].strip()]
    if len(rows) > 0 and any(len(r) > 1 for r in rows):
        raise DataError(f"{path} must hold one value per line (0/1 or true/false)")
    cells = [r[0].strip().lower() for r in rows]
    if cells and cells[0] not in ("0", "1", "true", "false", "0.0", "1.0"):
        cells = cells[1:]  # a header
    return _as_binary(np.array(cells), path)


def _as_binary(values: np.ndarray, where: str) -> np.ndarray:
    import numpy as np

    text = np.array([str(v).strip().lower() for v in np.asarray(values).reshape(-1)])
    mapping = {"0": False, "1": True, "0.0": False, "1.0": True, "false": False, "true": True}
    bad = sorted(set(text.tolist()) - set(mapping))
    if bad:
        raise DataError(f"{where} must mark anomalies with 0/1 or true/false; found {', '.join(bad[:5])}")
    return np.array([mapping[t] for t in text], dtype=bool)


def _write_scores(path: Path, columns: dict[str, np.ndarray], labels: np.ndarray | None,
                  truth: np.ndarray | None, named: tuple[str, list[str]] | None = None) -> None:
    n = len(next(iter(columns.values())))
    names = named[1] if named is not None else None
    header = ["index"] + ([named[0]] if named is not None else []) + (["label"] if labels is not None else [])
    header += (["known_anomaly"] if truth is not None else []) + list(columns)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for i in range(n):
        row = [str(i)] + ([names[i]] if names is not None else [])
        row += ([str(labels[i])] if labels is not None else []) + ([str(int(truth[i]))] if truth is not None else [])
        row += [str(int(v[i])) if v.dtype.kind in "iub" else f"{v[i]:.7g}" for v in columns.values()]
        writer.writerow(row)
    atomic_write_text(path, buffer.getvalue())


def _note_training_rows(data: str | None, spec: str, vae, dataset, run: str) -> None:
    """Say so when the calibration examples include the rows the model was trained on: they score lower than new
    data, so a threshold set on them flags more than the target rate of new clean examples."""
    from ..data import parse_spec
    from .common import resolved_split

    source = parse_spec(spec)[0]
    if data is None or source != parse_spec(vae.config_.data.source)[0]:
        return
    if resolved_split(spec, dataset) in ("all", "train"):
        print(f"note: {spec} holds the rows {run} was trained on, which score lower than new data: a threshold set "
              f"on them flags more than the target rate of new clean examples. Calibrate on the rows training held "
              f"out ({source}:test, what vaekit fit-detector {run} uses without DATA) or on new "
              f"clean data", file=sys.stderr)


def fit_detector(args: argparse.Namespace) -> int:
    from .. import anomaly

    vae = load_run(args.run, args.device)
    if vae.model_.conditional:
        raise ConfigError(f"{args.run} is a conditional run; the calibrated detector is not available for conditional "
                          "runs yet: score them with vaekit score, or train without --conditional for a detector")
    x, _, dataset, spec = load_run_data_or_own(args.data, vae, args.run, args.data_dir,
                                               "of clean examples to calibrate on")
    _note_training_rows(args.data, spec, vae, dataset, args.run)
    score_name = args.score or ("likelihood_ratio" if args.background else None)
    if args.background and score_name != "likelihood_ratio":
        raise ConfigError(f"--background is for --score likelihood_ratio, not {score_name}")
    background = load_run(args.background, args.device) if args.background else None
    typicality_model = _run_typicality(args.run, vae, args.data_dir)
    detector = anomaly.AnomalyDetector(vae, score=score_name, target_fpr=args.target_fpr, typicality=typicality_model,
                                       contamination=args.contamination, num_importance_samples=args.num_importance_samples,
                                       compressor=args.compressor, seed=args.seed, background=background)
    try:
        detector.fit(x)
    except CalibrationSizeError as err:
        if args.data is not None:
            raise
        rate = 0.05 if args.target_fpr is None else args.target_fpr
        least = math.ceil(1000 / (err.examples + 1)) / 1000  # the smallest rate that many examples can guarantee
        raise DataError(f"{args.run}'s held-out split of {spec} has {len(x)} examples, too few to guarantee a "
                        f"false-positive rate of {rate} (that needs {err.needed}); name DATA with "
                        f"more clean examples the model was not trained on, ask for --target-fpr {least:g} or more, "
                        f"or use --contamination") from None
    path = detector.save(args.run)
    rule = f"target false-positive rate {detector.rate_}" if detector.rule_ == "target_fpr" else f"contamination {detector.rate_}"
    flagged = float((detector.calibration_scores_ > detector.threshold_).mean())
    print(f"{detector.score_} threshold {detector.threshold_:.6g} ({rule}, {len(x)} examples of {spec}, "
          f"{flagged:.1%} of them above it)")
    print(f"wrote {path}", file=sys.stderr)
    return 0
