"""``vaekit eval RUN [DATA]``: test log-likelihood (importance-weighted), -ELBO, bits/dim and active units;
``vaekit quality RUN [DATA]``: sample quality (Fréchet distance, precision, recall in a classifier's features)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import TYPE_CHECKING

from ..errors import ConfigError, DataError
from ..fileio import atomic_write_json
from ..names import LIKELIHOOD_MEMORY_BUDGET_MB as DEFAULT_MEMORY_BUDGET_MB
from ..names import QUALITY_NEIGHBOURS as DEFAULT_K
from ..names import SAMPLER_NAMES
from .common import (DEVICE_HELP, add_data_options, check_output, load_run, load_run_data, positive_int, run_labels,
                     write_table)

if TYPE_CHECKING:
    from ..evaluation.likelihood import Evaluation
    from ..evaluation.sample_quality import SampleQuality


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="estimate test log-likelihood, -ELBO, bits/dim and active units",
        description="Evaluate a run as the literature does (Burda et al. 2016): the importance-weighted estimate of "
                    "-log p(x) with K samples, the negative ELBO with its reconstruction and KL parts, each with its "
                    "standard error over the data, in nats per example; bits per dimension for discrete data; the "
                    "active latent units (Cov_x E_q[z|x] > 0.01) and the KL per latent dimension.",
        epilog="The estimate is seeded: the same command gives the same number, whatever the memory budget.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("data", nargs="?", metavar="DATA",
                   help="data to evaluate (default: the run's test split, binarized with its fixed draw where the "
                        "run binarizes)")
    p.add_argument("-k", "--importance-samples", type=positive_int, default=5000, metavar="K",
                   help="importance samples per example (default 5000, as in the literature; 1 gives the ELBO). "
                        "The time grows in proportion to K: -k 500 takes about a tenth as long and gives a slightly "
                        "higher (looser) -log p(x); the progress bar shows the time left")
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior draws (default 0)")
    p.add_argument("--per-example", metavar="CSV", help="also write every example's values to this .csv file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--memory-budget-mb", type=float, default=DEFAULT_MEMORY_BUDGET_MB, metavar="MB",
                   help=f"working memory of one chunk of samples (default {DEFAULT_MEMORY_BUDGET_MB}); "
                        "changes the speed, not the result")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_data_options(p)
    p.set_defaults(func=evaluate)
    register_quality(subparsers)


def register_quality(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quality", help="sample quality: Fréchet distance, precision and recall in a classifier's features",
        description="How good a run's samples are: N samples against the data set's test split in the features of "
                    "a small convolutional classifier trained on the data set's own labels (the penultimate layer; "
                    "trained once, seconds to a minute on a CPU, and kept in ~/.cache/vaekit/quality): the Fréchet "
                    "distance of the features' Gaussians (FD, lower is better), and precision (the share of samples "
                    "inside the test images' k-NN manifold: are they realistic?) and recall (the share of test images "
                    "inside the samples' manifold: is the variety covered?) as Kynkäänniemi et al. 2019 define them. "
                    "The same numbers for N training images against the test split are the floor a perfect model "
                    "would reach. Image data with labels only; tables have vaekit report.",
        epilog="FD depends on N (it shrinks as N grows): compare runs at the same N, and with the floor.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("data", nargs="?", metavar="DATA",
                   help="a labelled image data set (default: the run's own); its training split trains the "
                        "classifier, its test split is what the samples are compared with")
    p.add_argument("-n", "--num", type=positive_int, metavar="N",
                   help="samples to draw (default: as many as the test split has images)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and of the floor's training images "
                                                        "(default 0)")
    p.add_argument("-k", "--neighbours", type=positive_int, default=DEFAULT_K, metavar="K",
                   help=f"the k of the k-NN manifolds of precision and recall (default {DEFAULT_K}, as in the paper)")
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default="prior",
                   help="where z comes from: prior (default) or gmm, the run's fitted mixture (vaekit fit-sampler)")
    p.add_argument("--draw", action="store_true",
                   help="compare draws x ~ p(x|z) instead of the decoder's means (the default, as vaekit sample)")
    p.add_argument("--json", metavar="PATH", help="also write the numbers and settings to this .json file")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="where the feature classifiers are kept (default: $VAEKIT_CACHE_DIR/quality, else "
                        "$XDG_CACHE_HOME/vaekit/quality, "
                        "else ~/.cache/vaekit/quality)")
    p.add_argument("--device", default="auto", help=f"where the run's model samples: {DEVICE_HELP}")
    group = p.add_argument_group("data")
    group.add_argument("--data-dir", metavar="DIR", help="where a built-in data set's files are "
                       "(fashion-mnist: default /usr/share/datasets/fashion-mnist)")
    p.set_defaults(func=quality)


def quality(args: argparse.Namespace) -> int:
    from ..evaluation.sample_quality import sample_quality
    from ..generation.samplers import FITTED_KINDS, load_sampler

    out = check_output(args.json, (".json",)) if args.json else None
    vae = load_run(args.run, args.device)
    if vae.is_table_:
        raise DataError(f"{args.run} was trained on a table; vaekit quality compares generated images: use "
                        f"`vaekit report {args.run} -o DIR` for synthetic tables")
    spec = args.data or vae.config_.data.source
    if spec == "array":
        raise ConfigError(f"{args.run} was trained on an in-memory array; name the DATA to compare its samples with")
    if args.sampler in FITTED_KINDS:
        load_sampler(args.run, vae, kind=args.sampler)
    result = sample_quality(vae, spec, num_samples=args.num, seed=args.seed, k=args.neighbours,
                            sampler=args.sampler, draw=args.draw, cache_dir=args.cache_dir, data_dir=args.data_dir,
                            log=lambda message: print(message, file=sys.stderr, flush=True))
    print(describe_quality(result, str(args.run)))
    if out is not None:
        atomic_write_json(out, {"run": str(args.run), **result.to_dict()})
        print(f"wrote the numbers to {out}", file=sys.stderr)
    return 0


def describe_quality(result: SampleQuality, run: str) -> str:
    """Sample quality as a small table: the run's samples and the floor of training images, side by side."""
    sampler = "" if result.sampler == "prior" else f", z from the {result.sampler} sampler"
    sampler += ", drawn from p(x|z)" if result.draw else ""
    floor = f"{result.num_floor:,} train images"
    rows = [("FD (lower is better)", f"{result.fd:.3f}", f"{result.floor_fd:.3f}"),
            ("precision", f"{result.precision:.3f}", f"{result.floor_precision:.3f}"),
            ("recall", f"{result.recall:.3f}", f"{result.floor_recall:.3f}")]
    samples = f"{result.num_samples:,} samples"
    width = max(len(samples), 10)
    lines = [f"{run} vs {result.data} test split ({result.num_test:,} images): {result.num_samples:,} samples"
             f"{sampler}, seed {result.seed}, k={result.k}",
             f"features: the {result.feature_dim}-unit penultimate layer of a classifier trained on {result.data}'s "
             f"labels (test accuracy {result.classifier_test_accuracy:.1%})",
             f"  {'':<22}{samples:>{width}}  {floor:>18}"]
    lines += [f"  {name:<22}{ours:>{width}}  {base:>18}" for name, ours, base in rows]
    if result.conditional_accuracy is not None:
        worst = min(result.per_label_accuracy.items(), key=lambda item: item[1])
        lines.append(f"conditional accuracy: {result.conditional_accuracy:.1%} of the samples are classified as the "
                     f"label they were drawn for (labels in the test split's proportions; lowest: {worst[0]} "
                     f"{worst[1]:.1%})")
    return "\n".join(lines)


def evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from ..data import parse_spec

    per_example = check_output(args.per_example, (".csv",)) if args.per_example else None
    if not (args.memory_budget_mb > 0 and math.isfinite(args.memory_budget_mb)):
        raise ConfigError(f"--memory-budget-mb must be a positive number, got {args.memory_budget_mb}")
    vae = load_run(args.run, args.device)
    spec = args.data
    if spec is None:
        source = vae.config_.data.source
        if source == "array":
            raise ConfigError(f"{args.run} was trained on an in-memory array; name the data to evaluate")
        spec = f"{source}:test"
    x, labels, dataset = load_run_data(spec, vae, args.data_dir)
    result = vae.evaluate(x, num_importance_samples=args.importance_samples, seed=args.seed,
                          y=run_labels(vae, labels, dataset, args.run),
                          memory_budget_mb=args.memory_budget_mb, progress=args.progress and not args.json)
    if per_example is not None:
        columns = {"index": np.arange(result.num_examples), **result.per_example}
        if labels is not None and labels.dtype.kind in "iu":
            columns["label"] = labels
        write_table(per_example, columns)
    columns_nll = vae.column_nll(x, num_importance_samples=min(args.importance_samples, 1000), seed=args.seed) \
        if vae.is_table_ else None
    if args.json:
        summary = {"run": str(args.run), "data": spec, **result.to_dict()}
        if columns_nll is not None:
            summary["column_nll"] = columns_nll
        print(json.dumps(summary, indent=2))
    else:
        print(describe(result, str(args.run), spec, parse_spec(spec)[1] is None))
        if vae.model_.conditional:
            print("  (a conditional run: every number is of p(x|y), each example given its own label)")
        if columns_nll is not None:
            print(describe_columns(columns_nll, min(args.importance_samples, 1000)))
    if per_example is not None:
        print(f"wrote {result.num_examples} examples' values to {per_example}", file=sys.stderr)
    return 0


def describe_columns(columns_nll: dict[str, float], k: int) -> str:
    """The per-column -log p(x_c) of a table run, one line each."""
    width = max(len(n) for n in columns_nll)
    lines = [f"  per column: -log p(x_c), the column's marginal (importance-weighted, K={k}; nats, continuous columns "
             "in their own units; a missing cell counts as the probability of being missing)"]
    lines += [f"    {name:<{width}}  {value:10.3f}" for name, value in columns_nll.items()]
    return "\n".join(lines)


def describe(result: Evaluation, run: str, spec: str, whole: bool = False) -> str:
    """The evaluation as a short text report."""
    k = result.importance_samples
    dims = len(result.kl_per_dim)
    lines = [
        f"{run} on {spec}: {result.num_examples:,} examples, K={k} importance samples, seed {result.seed}, "
        f"{result.seconds:.1f} s",
        "nats per example, mean ± standard error over the examples",
        f"  -log p(x)  (importance-weighted, K={k})  {result.nll:10.3f} ± {result.nll_stderr:.3f}",
        f"  -ELBO                                  {result.neg_elbo:10.3f} ± {result.neg_elbo_stderr:.3f}",
        f"    reconstruction  -log p(x|z)          {result.reconstruction:10.3f} ± {result.reconstruction_stderr:.3f}",
        f"    KL(q(z|x) || p(z))                   {result.kl:10.3f} ± {result.kl_stderr:.3f}",
    ]
    if result.bits_per_dim is not None:
        lines.append(f"  bits/dim: {result.bits_per_dim:.4f} ± {result.bits_per_dim_stderr:.4f} (-log p(x)), "
                     f"{result.elbo_bits_per_dim:.4f} (-ELBO)")
    per_layer = " + ".join(str(c) for c in result.active_units_per_layer)
    lines.append(f"  active units: {result.active_units} of {dims}"
                 + (f" ({per_layer} by layer)" if len(result.active_units_per_layer) > 1 else "")
                 + " (Burda et al.: Cov_x E_q[z|x] > 0.01)")
    lines.append("  KL per latent dimension: " + " ".join(f"{v:.2f}" for v in result.kl_per_dim))
    lines.extend(collapse_warnings(result.active_units_per_layer))
    return "\n".join(lines)


def collapse_warnings(active_units_per_layer: list[int]) -> list[str]:
    """A line for each stochastic layer without an active unit: it collapsed to its prior (posterior collapse)."""
    remedy = "--free-bits NATS or a longer --warmup-epochs work against this"
    layers = len(active_units_per_layer)
    if layers == 1:
        return [f"  warning: no latent unit is active: the posterior collapsed to the prior and z carries (almost) "
                f"nothing about x; {remedy}"] if active_units_per_layer[0] == 0 else []
    return [f"  warning: stochastic layer {i + 1} of {layers} has no active unit: it collapsed to its prior and "
            f"passes (almost) nothing on; {remedy}" for i, count in enumerate(active_units_per_layer) if count == 0]
