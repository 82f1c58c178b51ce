"""``vaekit eval RUN [DATA]``: test log-likelihood (importance-weighted), -ELBO, bits/dim and active units."""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from ..data import parse_spec
from ..errors import ConfigError
from ..evaluation.likelihood import DEFAULT_MEMORY_BUDGET_MB, Evaluation
from .common import add_data_options, check_output, load_run, load_run_data, positive_int, write_table


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
                   help="importance samples per example (default 5000, as in the literature; 1 gives the ELBO)")
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior draws (default 0)")
    p.add_argument("--per-example", metavar="CSV", help="also write every example's values to this .csv file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--memory-budget-mb", type=float, default=DEFAULT_MEMORY_BUDGET_MB, metavar="MB",
                   help=f"working memory of one chunk of samples (default {DEFAULT_MEMORY_BUDGET_MB}); "
                        "changes the speed, not the result")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_data_options(p)
    p.set_defaults(func=evaluate)


def evaluate(args: argparse.Namespace) -> int:
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
    x, labels, _ = load_run_data(spec, vae, args.data_dir)
    result = vae.evaluate(x, num_importance_samples=args.importance_samples, seed=args.seed,
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
