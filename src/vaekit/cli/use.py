"""Using a trained run: ``sample``, ``fit-sampler``, ``reconstruct``, ``transfer``, ``encode``, ``decode``."""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError, DataError
from ..fileio import atomic_open
from ..names import FITTED_KINDS, SAMPLER_MAX_COMPONENTS, SAMPLER_NAMES, SAMPLER_SOURCES
from .common import (DEVICE_HELP, EXAMPLE_FORMATS, add_data_options, check_output, load_run, load_run_data,
                     positive_int, read_latents, run_labels, save_npy, write_csv, write_examples)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sample", help="generate new examples by decoding z ~ N(0, I) (or a fitted sampler's z)",
                              description="Generate examples: decode z ~ N(0, I), the model's prior (the encoder is "
                                          "not used); with --sampler gmm decode codes drawn from the mixture that "
                                          "vaekit fit-sampler fitted to the training set's latent codes instead.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("-n", "--num", type=positive_int, help="how many (default 64; with several --label, per label, "
                   "default 8)")
    p.add_argument("-o", "--output", required=True, help="output: .png (grid), .npy or .csv; for a table run .csv, .tsv "
                   "or .parquet, in the table's own form")
    p.add_argument("--label", action="append", metavar="NAME",
                   help="a conditional run: generate this class (its name or index); several --label give one row "
                        "each (default: the classes in turn)")
    p.add_argument("--per-label", type=positive_int, metavar="N",
                   help="a conditional run: N examples of every class, one row per class")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--draw", action="store_true", help="draw x ~ p(x|z) instead of taking its mean (always done for "
                   "tables, whose rows must follow every column's distribution)")
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default="prior",
                   help="where z comes from: prior (default) or gmm, the run's fitted mixture (vaekit fit-sampler)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=sample)

    p = subparsers.add_parser("fit-sampler", help="fit a density to the training set's latent codes, for sample --sampler",
                              description="Fit a sampler of the latent space after training (ex-post density "
                                          "estimation, Ghosh et al. 2020) and store it with the run as "
                                          "RUN/sampler_KIND.json and .safetensors; vaekit sample --sampler KIND then "
                                          "decodes its draws instead of prior draws. gmm: a Gaussian mixture with "
                                          "full covariances over the top stochastic layer's posterior means, its "
                                          "number of components (1 to --max-components, fewer for few examples) "
                                          "chosen by BIC; with several stochastic layers the layers below are drawn "
                                          "from the model's own conditionals, as prior sampling does. A conditional "
                                          "run gets one mixture per label (each fitted on that label's examples), "
                                          "and sample --label draws from the label's own.")
    p.add_argument("run", metavar="RUN", help="run directory; the sampler is saved in it")
    p.add_argument("data", metavar="DATA", nargs="?",
                   help="the examples to fit on (default: the run's own training data; a built-in set named without "
                        ":split means its test split, so write e.g. digits:train)")
    p.add_argument("--kind", choices=FITTED_KINDS, default="gmm", help="the sampler (default gmm)")
    p.add_argument("--max-components", type=positive_int, default=SAMPLER_MAX_COMPONENTS, metavar="K",
                   help=f"the most mixture components BIC chooses among (default {SAMPLER_MAX_COMPONENTS})")
    p.add_argument("--source", choices=SAMPLER_SOURCES, default="mean",
                   help="fit on each example's posterior mean (default) or on one draw z ~ q(z|x)")
    p.add_argument("--shared", action="store_true",
                   help="a conditional run: one mixture shared by all labels instead of one per label")
    p.add_argument("--seed", type=int, default=0, help="seed of the fit (default 0)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_data_options(p)
    p.set_defaults(func=fit_sampler)

    p = subparsers.add_parser("reconstruct", help="encode and decode examples",
                              description="Reconstruct examples: decode the posterior mean of each one. A PNG shows "
                                          "originals (upper rows) above their reconstructions.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("data", metavar="DATA", help="data to reconstruct (e.g. fashion-mnist:test, my.npy)")
    p.add_argument("-o", "--output", required=True, help="output: .png (originals beside reconstructions), .npy or .csv")
    p.add_argument("-n", "--num", type=positive_int, help="only the first N examples (default: 32 for .png, all otherwise)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_data_options(p)
    p.set_defaults(func=reconstruct)

    p = subparsers.add_parser("transfer", help="a conditional run: decode examples' codes under another label",
                              description="Latent transfer with a conditional run: encode each example under its own "
                                          "label, then decode its code under --to-label (the style kept, the class "
                                          "changed). A PNG shows the originals in the first row and the transfers to "
                                          "each --to-label in the rows below.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("data", metavar="DATA", help="labelled examples (a built-in set without :split: its test split)")
    p.add_argument("--to-label", action="append", required=True, metavar="NAME",
                   help="the class to decode under (name or index); several give one row each")
    p.add_argument("-o", "--output", required=True, help="output: .png, .npy or .csv")
    p.add_argument("-n", "--num", type=positive_int, help="only the first N examples (default: 8 for .png, all otherwise)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_data_options(p)
    p.set_defaults(func=transfer)

    p = subparsers.add_parser("encode", help="map examples to their latent means (and variances, samples)",
                              description="Encode examples: the mean of q(z|x) for each; with an .npz output also the "
                                          "variances and, with --samples K, K draws z ~ q(z|x).")
    p.add_argument("run", metavar="RUN")
    p.add_argument("data", metavar="DATA")
    p.add_argument("-o", "--output", required=True, help="output: .npy (means), .csv (means) or .npz (mean, variance, samples)")
    p.add_argument("--samples", type=positive_int, metavar="K", help="also K posterior samples per example (.npz only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_data_options(p)
    p.set_defaults(func=encode)

    p = subparsers.add_parser("decode", help="decode latent vectors",
                              description="Decode latent vectors (from .npy, .npz or .csv) with the decoder alone.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("latents", metavar="LATENTS", help="latent vectors, shape (n, latent_dim): .npy, .npz or .csv")
    p.add_argument("-o", "--output", required=True, help="output: .png, .npy or .csv")
    p.add_argument("--draw", action="store_true", help="draw x ~ p(x|z) instead of taking its mean")
    p.add_argument("--label", metavar="NAME", help="a conditional run: decode every vector under this class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
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
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
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
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
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
    from ..generation import samplers

    out = check_output(args.output, EXAMPLE_FORMATS)
    vae = load_run(args.run, args.device)
    labels, ncols = _sample_labels(args, vae)
    if args.sampler in samplers.FITTED_KINDS:
        samplers.load_sampler(args.run, vae, kind=args.sampler)
    n = len(labels) if labels is not None else args.num or 64
    x = vae.sample(n, y=labels, sampler=args.sampler, seed=args.seed, sample_output=True if args.draw else None)
    what = f"{n} samples" + (f" (z from the {args.sampler} sampler)" if args.sampler != "prior" else "")
    if labels is not None:
        shown = list(dict.fromkeys(str(vae.classes_[i]) for i in labels))
        what += f" of {', '.join(shown[:8])}{' ...' if len(shown) > 8 else ''}" + (
            ", one row per class" if ncols else "")
    write_examples(x, out, vae, title=what, ncols=ncols, labels=labels)
    _done(out, what)
    return 0


def _sample_labels(args: argparse.Namespace, vae):
    """The labels to generate (class indices, grouped by class) and the grid's row length, for a conditional run."""
    import numpy as np

    from ..data.labels import resolve_label

    if not vae.model_.conditional:
        if args.label or args.per_label:
            raise ConfigError(f"{args.run} is not a conditional run, so --label and --per-label do not apply (train "
                              "with --conditional to generate chosen classes)")
        return None, None
    classes = list(vae.classes_)
    if args.per_label and args.label:
        raise ConfigError("give --label or --per-label, not both")
    if args.per_label:
        if args.num:
            raise ConfigError("--per-label N says how many of each class; drop -n")
        return np.repeat(np.arange(len(classes)), args.per_label), args.per_label
    if args.label:
        chosen = [resolve_label(name, classes) for name in args.label]
        per = args.num or (64 if len(chosen) == 1 else 8)
        return np.repeat(np.asarray(chosen, dtype=np.int64), per), (per if len(chosen) > 1 else None)
    n = args.num or 64  # no label named: the classes in turn, grouped
    return np.sort(np.arange(n) % len(classes)), None


def fit_sampler(args: argparse.Namespace) -> int:
    from ..generation import samplers

    vae = load_run(args.run, args.device)
    spec = args.data
    if spec is None:
        if vae.config_.data.source == "array":
            raise DataError(f"{args.run} was trained from an in-memory array; name the DATA to fit the sampler on")
        spec = vae.config_.data.source + ":train"
    x, labels, dataset = load_run_data(spec, vae, args.data_dir)
    sampler = samplers.fit_sampler(vae, x, kind=args.kind, seed=args.seed, max_components=args.max_components,
                                   source=args.source, y=run_labels(vae, labels, dataset, args.run),
                                   per_label=False if args.shared else None)
    path = samplers.save_sampler(sampler, args.run)
    print(sampler.describe(vae.classes_ if vae.model_.conditional else None, data=spec))
    print(f"wrote {path} and {path.with_suffix('.safetensors').name}", file=sys.stderr)
    return 0


def reconstruct(args: argparse.Namespace) -> int:
    out = check_output(args.output, EXAMPLE_FORMATS)
    vae = load_run(args.run, args.device)
    x, labels, dataset = load_run_data(args.data, vae, args.data_dir)
    labels = run_labels(vae, labels, dataset, args.run)
    limit = args.num or (32 if out.suffix.lower() == ".png" else len(x))
    x = x[:limit]
    labels = None if labels is None else labels[:limit]
    recon = vae.reconstruct(x, labels)
    if out.suffix.lower() == ".png" and len(vae.input_shape_) == 3:
        from ..plots import save_reconstruction_grid

        save_reconstruction_grid(x, recon, out)
    else:
        write_examples(recon, out, vae, title="reconstructions")
    _done(out, f"{len(x)} reconstructions")
    return 0


def encode(args: argparse.Namespace) -> int:
    import numpy as np

    out = check_output(args.output, (".npy", ".npz", ".csv"))
    if args.samples and out.suffix.lower() != ".npz":
        raise ConfigError("--samples needs an .npz output, which holds mean, variance and samples together")
    vae = load_run(args.run, args.device)
    x, labels, dataset = load_run_data(args.data, vae, args.data_dir)
    indices = run_labels(vae, labels, dataset, args.run)
    mean, variance = vae.encode(x, indices)
    suffix = out.suffix.lower()
    if suffix == ".npy":
        save_npy(out, mean)
    elif suffix == ".csv":
        write_csv(out, mean, prefix="z")
    else:
        arrays = {"mean": mean, "variance": variance}
        if args.samples:
            arrays["samples"] = vae.sample_posterior(x, args.samples, seed=args.seed, y=indices).transpose(1, 0, 2)
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
    if vae.model_.conditional and args.label is None:
        raise ConfigError(f"{args.run} is a conditional run: say which class to decode under with --label NAME")
    if not vae.model_.conditional and args.label is not None:
        raise ConfigError(f"{args.run} is not a conditional run, so --label does not apply")
    x = vae.decode(z, y=args.label, sample=args.draw, seed=args.seed)
    write_examples(x, out, vae, title="decoded")
    _done(out, f"{len(x)} decoded examples")
    return 0


def transfer(args: argparse.Namespace) -> int:
    import numpy as np

    from ..data.labels import resolve_label

    out = check_output(args.output, (".png", ".npy", ".csv"))
    vae = load_run(args.run, args.device)
    if not vae.model_.conditional:
        raise ConfigError(f"{args.run} is not a conditional run; transfer decodes under another label, so train with "
                          "--conditional")
    if vae.is_table_:
        raise ConfigError("transfer writes images and arrays; for a table run, use vaekit.VAE.transfer in Python")
    targets = [resolve_label(name, list(vae.classes_)) for name in args.to_label]
    x, labels, dataset = load_run_data(args.data, vae, args.data_dir)
    labels = run_labels(vae, labels, dataset, args.run)
    limit = args.num or (8 if out.suffix.lower() == ".png" else len(x))
    x, labels = x[:limit], labels[:limit]
    codes = vae.transform(x, labels)
    moved = [vae.decode(codes, y=int(t)) for t in targets]
    names = ", ".join(str(vae.classes_[t]) for t in targets)
    if out.suffix.lower() == ".png":
        write_examples(np.concatenate([x, *moved]), out, vae, ncols=len(x),
                       title=f"originals, then decoded as {names}")
    else:
        write_examples(np.concatenate(moved), out, vae, labels=np.repeat(np.asarray(targets), len(x)))
    _done(out, f"{len(x)} examples decoded under {names}")
    return 0
