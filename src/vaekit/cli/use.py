"""Using a trained run: ``sample``, ``fit-sampler``, ``reconstruct``, ``encode``, ``decode``."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from ..errors import ConfigError, DataError
from ..fileio import atomic_open
from ..generation import samplers
from .common import (EXAMPLE_FORMATS, add_data_options, check_output, load_run, load_run_data, positive_int,
                     read_latents, save_npy, write_csv, write_examples)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sample", help="generate new examples by decoding z ~ N(0, I) (or a fitted sampler's z)",
                              description="Generate examples: decode z ~ N(0, I), the model's prior (the encoder is "
                                          "not used); with --sampler gmm decode codes drawn from the mixture that "
                                          "vaekit fit-sampler fitted to the training set's latent codes instead.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("-n", "--num", type=positive_int, default=64, help="how many (default 64)")
    p.add_argument("-o", "--output", required=True, help="output: .png (grid), .npy or .csv; for a table run .csv, .tsv "
                   "or .parquet, in the table's own form")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--draw", action="store_true", help="draw x ~ p(x|z) instead of taking its mean (always done for "
                   "tables, whose rows must follow every column's distribution)")
    p.add_argument("--sampler", choices=tuple(samplers.SAMPLERS), default="prior",
                   help="where z comes from: prior (default) or gmm, the run's fitted mixture (vaekit fit-sampler)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    p.set_defaults(func=sample)

    p = subparsers.add_parser("fit-sampler", help="fit a density to the training set's latent codes, for sample --sampler",
                              description="Fit a sampler of the latent space after training (ex-post density "
                                          "estimation, Ghosh et al. 2020) and store it with the run as "
                                          "RUN/sampler_KIND.json and .safetensors; vaekit sample --sampler KIND then "
                                          "decodes its draws instead of prior draws. gmm: a Gaussian mixture with "
                                          "full covariances over the top stochastic layer's posterior means, its "
                                          "number of components (1 to --max-components, fewer for few examples) "
                                          "chosen by BIC; with several stochastic layers the layers below are drawn "
                                          "from the model's own conditionals, as prior sampling does.")
    p.add_argument("run", metavar="RUN", help="run directory; the sampler is saved in it")
    p.add_argument("data", metavar="DATA", nargs="?",
                   help="the examples to fit on (default: the run's own training data; a built-in set named without "
                        ":split means its test split, so write e.g. digits:train)")
    p.add_argument("--kind", choices=samplers.FITTED_KINDS, default="gmm", help="the sampler (default gmm)")
    p.add_argument("--max-components", type=positive_int, default=samplers.DEFAULT_MAX_COMPONENTS, metavar="K",
                   help=f"the most mixture components BIC chooses among (default {samplers.DEFAULT_MAX_COMPONENTS})")
    p.add_argument("--source", choices=samplers.SOURCES, default="mean",
                   help="fit on each example's posterior mean (default) or on one draw z ~ q(z|x)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fit (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    add_data_options(p)
    p.set_defaults(func=fit_sampler)

    p = subparsers.add_parser("reconstruct", help="encode and decode examples",
                              description="Reconstruct examples: decode the posterior mean of each one. A PNG shows "
                                          "originals (upper rows) above their reconstructions.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("data", metavar="DATA", help="data to reconstruct (e.g. fashion-mnist:test, my.npy)")
    p.add_argument("-o", "--output", required=True, help="output: .png (originals beside reconstructions), .npy or .csv")
    p.add_argument("-n", "--num", type=positive_int, help="only the first N examples (default: 32 for .png, all otherwise)")
    p.add_argument("--device", default="cpu")
    add_data_options(p)
    p.set_defaults(func=reconstruct)

    p = subparsers.add_parser("encode", help="map examples to their latent means (and variances, samples)",
                              description="Encode examples: the mean of q(z|x) for each; with an .npz output also the "
                                          "variances and, with --samples K, K draws z ~ q(z|x).")
    p.add_argument("run", metavar="RUN")
    p.add_argument("data", metavar="DATA")
    p.add_argument("-o", "--output", required=True, help="output: .npy (means), .csv (means) or .npz (mean, variance, samples)")
    p.add_argument("--samples", type=positive_int, metavar="K", help="also K posterior samples per example (.npz only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    add_data_options(p)
    p.set_defaults(func=encode)

    p = subparsers.add_parser("decode", help="decode latent vectors",
                              description="Decode latent vectors (from .npy, .npz or .csv) with the decoder alone.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("latents", metavar="LATENTS", help="latent vectors, shape (n, latent_dim): .npy, .npz or .csv")
    p.add_argument("-o", "--output", required=True, help="output: .png, .npy or .csv")
    p.add_argument("--draw", action="store_true", help="draw x ~ p(x|z) instead of taking its mean")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=decode)


    p = subparsers.add_parser("impute", help="fill a table's empty cells from the model",
                              description="Fill the missing cells of a table from a run trained on a table, given each "
                                          "row's observed cells (observed cells are kept as they are). Without --draws "
                                          "one table with the best single guess (importance-weighted posterior mean, "
                                          "the most probable label for categories); with --draws K, K tables of "
                                          "draws (multiple imputation), one after the other with a 'draw' column.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("data", metavar="TABLE", help="the table (.csv, .tsv or .parquet) with empty cells")
    p.add_argument("-o", "--output", required=True, help="output: .csv, .tsv or .parquet")
    p.add_argument("--draws", type=positive_int, metavar="K", help="K imputations drawn from p(x_missing | x_observed)")
    p.add_argument("--importance-samples", type=positive_int, default=100, help="z samples per row (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=impute)
    register_report(subparsers)


def register_report(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="how close a table run's synthetic rows are to the real ones",
                              description="A quality report for a table run's synthetic rows, with the metrics as "
                                          "SDMetrics defines them: column shapes (KS / TV complement), column-pair "
                                          "trends (correlation / contingency similarity), their average, a detection "
                                          "AUROC (a classifier telling real from synthetic rows; 0.5 is best) and, "
                                          "with --target, machine-learning efficacy on the held-out real rows. "
                                          "Writes report.json, report.md and marginals.png to the output folder.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("data", metavar="TABLE", nargs="?",
                   help="the real rows (default: the run's own table): its training split is compared, its test "
                        "split serves --target")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the report")
    p.add_argument("-n", "--num", type=positive_int, help="synthetic rows (default: as many as the real training rows)")
    p.add_argument("--target", metavar="COLUMN", help="a column to predict for the machine-learning efficacy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=report)


def report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data import load_dataset
    from ..generation.report import format_summary, quality_report, write_report

    vae = load_run(args.run, args.device)
    if not vae.is_table_:
        raise ConfigError(f"{args.run} was not trained on a table; the quality report compares synthetic tables")
    source = args.data or vae.config_.data.source
    if source == "array":
        raise ConfigError(f"{args.run} was trained on an in-memory DataFrame; name the TABLE of real rows")
    dataset = load_dataset(source, like=vae.config_.data)
    real, holdout = dataset.split("train"), dataset.split("test")
    kinds = {c.name: c.kind for c in vae.schema_.columns}
    if args.target is not None and args.target not in kinds:
        raise ConfigError(f"--target {args.target}: the model's columns are {', '.join(kinds)}")
    synthetic = vae.sample(args.num or len(real), seed=args.seed)
    result = quality_report(real, synthetic, kinds, target=args.target, holdout=holdout if args.target else None,
                            seed=args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    written = write_report(result, real, synthetic, kinds, out)
    print(format_summary(result), flush=True)
    _done(out, ", ".join(p.name for p in written))
    return 0


def impute(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data.table import read_table, write_table

    out = check_output(args.output, (".csv", ".tsv", ".parquet"))
    vae = load_run(args.run, args.device)
    if not vae.is_table_:
        raise ConfigError(f"{args.run} was not trained on a table; impute fills the empty cells of tables")
    frame = read_table(Path(args.data).expanduser())
    missing_before = int(frame[vae.schema_.names].isna().sum().sum()) if set(vae.schema_.names) <= set(frame.columns) else 0
    filled = vae.impute(frame, draws=args.draws, num_importance_samples=args.importance_samples, seed=args.seed)
    tables = [filled] if args.draws is None else filled
    results = []
    for d, table in enumerate(tables):
        whole = frame.copy()
        for name in vae.schema_.names:  # the modelled columns filled; every other column as it was
            whole[name] = table[name].to_numpy()
        if args.draws is not None:
            whole.insert(0, "draw", d + 1)
        results.append(whole)
    import pandas as pd

    write_table(pd.concat(results, ignore_index=True), out)
    _done(out, f"{len(frame)} rows with {missing_before} empty cells filled"
          + (f", {args.draws} draws" if args.draws else ""))
    return 0


def _done(path, what: str) -> None:
    print(f"wrote {what} to {path}", file=sys.stderr)


def sample(args: argparse.Namespace) -> int:
    out = check_output(args.output, EXAMPLE_FORMATS)
    vae = load_run(args.run, args.device)
    if args.sampler in samplers.FITTED_KINDS:
        samplers.load_sampler(args.run, vae, kind=args.sampler)
    x = vae.sample(args.num, sampler=args.sampler, seed=args.seed, sample_output=True if args.draw else None)
    what = f"{args.num} samples" + (f" (z from the {args.sampler} sampler)" if args.sampler != "prior" else "")
    write_examples(x, out, vae, title=what)
    _done(out, what)
    return 0


def fit_sampler(args: argparse.Namespace) -> int:
    vae = load_run(args.run, args.device)
    spec = args.data
    if spec is None:
        if vae.config_.data.source == "array":
            raise DataError(f"{args.run} was trained from an in-memory array; name the DATA to fit the sampler on")
        spec = vae.config_.data.source + ":train"
    x, _, _ = load_run_data(spec, vae, args.data_dir)
    sampler = samplers.fit_sampler(vae, x, kind=args.kind, seed=args.seed, max_components=args.max_components,
                                   source=args.source)
    path = samplers.save_sampler(sampler, args.run)
    best = sampler.bic[sampler.components]
    tried = sorted(sampler.bic)
    print(f"{sampler.kind} sampler: {sampler.components} component{'s' * (sampler.components != 1)} (full covariance) "
          f"over the {sampler.dim}-dimensional {'top layer' if sampler.layer else 'latent space'}, fitted on the "
          f"posterior {sampler.source}s of {sampler.fit_size:,} examples of {spec}; BIC {best:.1f}, the lowest of "
          f"{tried[0]}..{tried[-1]} components (1 component: {sampler.bic[1]:.1f})")
    print(f"wrote {path} and {path.with_suffix('.safetensors').name}", file=sys.stderr)
    return 0


def reconstruct(args: argparse.Namespace) -> int:
    out = check_output(args.output, EXAMPLE_FORMATS)
    vae = load_run(args.run, args.device)
    x, _, _ = load_run_data(args.data, vae, args.data_dir)
    limit = args.num or (32 if out.suffix.lower() == ".png" else len(x))
    x = x[:limit]
    recon = vae.reconstruct(x)
    if out.suffix.lower() == ".png" and len(vae.input_shape_) == 3:
        from ..plots import save_reconstruction_grid

        save_reconstruction_grid(x, recon, out)
    else:
        write_examples(recon, out, vae, title="reconstructions")
    _done(out, f"{len(x)} reconstructions")
    return 0


def encode(args: argparse.Namespace) -> int:
    out = check_output(args.output, (".npy", ".npz", ".csv"))
    if args.samples and out.suffix.lower() != ".npz":
        raise ConfigError("--samples needs an .npz output, which holds mean, variance and samples together")
    vae = load_run(args.run, args.device)
    x, labels, _ = load_run_data(args.data, vae, args.data_dir)
    mean, variance = vae.encode(x)
    suffix = out.suffix.lower()
    if suffix == ".npy":
        save_npy(out, mean)
    elif suffix == ".csv":
        write_csv(out, mean, prefix="z")
    else:
        arrays = {"mean": mean, "variance": variance}
        if args.samples:
            arrays["samples"] = vae.sample_posterior(x, args.samples, seed=args.seed).transpose(1, 0, 2)
        if labels is not None and labels.dtype.kind in "iuf":
            arrays["labels"] = labels
        with atomic_open(out, "wb") as fh:
            np.savez(fh, **arrays)
    _done(out, f"latents of {len(x)} examples ({vae.latent_dim_} dimensions)")
    return 0


def decode(args: argparse.Namespace) -> int:
    out = check_output(args.output, EXAMPLE_FORMATS)
    vae = load_run(args.run, args.device)
    z = read_latents(args.latents, vae.latent_dim_)
    x = vae.decode(z, sample=args.draw, seed=args.seed)
    write_examples(x, out, vae, title="decoded")
    _done(out, f"{len(x)} decoded examples")
    return 0
