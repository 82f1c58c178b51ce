"""Latent-space tools: ``interpolate``, ``traverse``, ``latent-plot``, ``manifold``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import ConfigError, DataError
from ..names import EMBEDDINGS, INTERPOLATION_METHODS, RANKINGS
from .common import (DEVICE_HELP, add_data_options, check_output, load_run, load_run_data, load_run_data_or_own,
                     positive_int, save_npy, write_csv)

if TYPE_CHECKING:
    import numpy as np

PICTURE_OR_ARRAY = (".png", ".npy")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("interpolate", help="decode points between two examples' latent means",
                              description="Decode evenly spaced points on the path between the latent means of two "
                                          "examples of DATA (a straight line, or a great circle with --method spherical). "
                                          "A PNG shows the two examples at the ends of the strip; .npy holds the decoded steps.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("data", metavar="DATA", help="the data the two examples come from (e.g. fashion-mnist:test)")
    p.add_argument("--from", dest="start", type=int, default=0, metavar="I", help="index of the first example (default 0)")
    p.add_argument("--to", dest="end", type=int, default=1, metavar="J", help="index of the second example (default 1)")
    p.add_argument("--steps", type=positive_int, default=10, help="points on the path, both ends included (default 10)")
    p.add_argument("--method", choices=INTERPOLATION_METHODS, default="linear", help="linear (default) or spherical")
    p.add_argument("-o", "--output", required=True, help="output: .png or .npy")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_data_options(p)
    p.set_defaults(func=interpolate)

    p = subparsers.add_parser("traverse", help="vary the most informative latent dimensions one at a time",
                              description="A grid with one row per latent dimension (the most informative first, by "
                                          "average KL to the prior or by active-unit variance over DATA) and one column "
                                          "per offset of that dimension from a base point (the prior's mean, or an "
                                          "example's latent mean with --base).")
    p.add_argument("run", metavar="RUN")
    p.add_argument("data", metavar="DATA", nargs="?",
                   help="examples that rank the dimensions (default: the run's own data, its test split)")
    p.add_argument("-o", "--output", required=True, help="output: .png or .npy (decoded grid, dims x steps x example)")
    p.add_argument("--top", type=positive_int, default=8, help="how many dimensions (default 8)")
    p.add_argument("--dims", type=_parse_dims, help="these dimensions instead of the most informative, e.g. 0,3,5")
    p.add_argument("--by", choices=RANKINGS, default="kl",
                   help="rank by average KL to the N(0, 1) prior (default) or by active-unit variance Var_x(E[z|x])")
    p.add_argument("--steps", type=positive_int, default=9, help="columns per dimension (default 9)")
    p.add_argument("--span", type=float, default=3.0, help="offsets range over [-SPAN, SPAN] (default 3)")
    p.add_argument("--base", type=int, metavar="I", help="vary around the latent mean of example I of DATA (default: the origin)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_data_options(p)
    p.set_defaults(func=traverse)

    p = subparsers.add_parser("latent-plot", help="scatter plot of a data set's latent means in 2-D",
                              description="Plot the latent means of DATA in two dimensions: the latent itself when it "
                                          "is 2-D, otherwise PCA or (--method tsne) t-SNE; coloured by label when the "
                                          "data has labels. .npy/.csv outputs hold the 2-D coordinates.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("data", metavar="DATA")
    p.add_argument("-o", "--output", required=True, help="output: .png, .npy or .csv")
    p.add_argument("--method", choices=EMBEDDINGS, default="auto",
                   help="auto (default: the latent when 2-D, else PCA), latent, pca or tsne")
    p.add_argument("--max-points", type=positive_int, default=5000,
                   help="plot a seeded random subset of at most this many examples (default 5000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_data_options(p)
    p.set_defaults(func=latent_plot)

    p = subparsers.add_parser("manifold", help="decode a grid over a 2-D latent space",
                              description="For a model with a 2-D latent: decode a regular grid whose axes are evenly "
                                          "spaced quantiles of the prior (Kingma & Welling 2014, figure 4).")
    p.add_argument("run", metavar="RUN")
    p.add_argument("-o", "--output", required=True, help="output: .png or .npy (decoded grid, steps x steps x example)")
    p.add_argument("--steps", type=positive_int, default=20, help="grid points per axis (default 20)")
    p.add_argument("--quantiles", type=_parse_range, default=(0.05, 0.95), metavar="LOW,HIGH",
                   help="prior quantiles at the grid's edges (default 0.05,0.95)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=manifold)


def _parse_dims(text: str) -> list[int]:
    try:
        dims = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dims takes comma-separated dimension numbers such as 0,3,5, got {text!r}") from None
    if not dims:
        raise argparse.ArgumentTypeError("--dims needs at least one dimension")
    return dims


def _parse_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers LOW,HIGH such as 0.05,0.95, got {text!r}") from None
    return low, high


def _example(x: np.ndarray, index: int, what: str) -> np.ndarray:
    if not -len(x) <= index < len(x):
        raise DataError(f"{what} {index} is out of range: the data holds {len(x)} examples (0..{len(x) - 1})")
    return x[index]


def _done(path, what: str) -> None:
    print(f"wrote {what} to {path}", file=sys.stderr)


def interpolate(args: argparse.Namespace) -> int:
    from ..generation import latent
    from ..plots import save_figure

    out = check_output(args.output, PICTURE_OR_ARRAY)
    vae = load_run(args.run, args.device)
    x, _, _ = load_run_data(args.data, vae, args.data_dir)
    start, end = _example(x, args.start, "--from"), _example(x, args.end, "--to")
    if args.steps < 2:
        raise ConfigError(f"--steps must be at least 2, got {args.steps}")
    _, decoded = latent.interpolate(vae, start, end, steps=args.steps, method=args.method)
    if out.suffix.lower() == ".npy":
        save_npy(out, decoded)
    else:
        title = f"{args.method} interpolation, examples {args.start} -> {args.end} of {args.data}"
        save_figure(latent.interpolation_figure(decoded, originals=(start, end), title=title), out)
    _done(out, f"{args.steps}-step {args.method} interpolation")
    return 0


def traverse(args: argparse.Namespace) -> int:
    from ..generation import latent
    from ..plots import save_figure

    out = check_output(args.output, PICTURE_OR_ARRAY)
    vae = load_run(args.run, args.device)
    x, _, _, spec = load_run_data_or_own(args.data, vae, args.run, args.data_dir, "that ranks the dimensions")
    order, values = latent.informative_dimensions(vae, x, by=args.by)
    stat_of = dict(zip(order.tolist(), values.tolist()))
    dims = args.dims if args.dims is not None else order[:args.top].tolist()
    base = None if args.base is None else vae.transform(_example(x, args.base, "--base")[None])[0]
    offsets, decoded = latent.traverse(vae, dims, base=base, steps=args.steps, span=args.span)
    if out.suffix.lower() == ".npy":
        save_npy(out, decoded)
    else:
        stat_name = "KL" if args.by == "kl" else "var"
        around = "the origin" if args.base is None else f"example {args.base}"
        fig = latent.traverse_figure(offsets, decoded, dims, stats=[stat_of[d] for d in dims], stat_name=stat_name,
                                     title=f"latent traversal around {around} (ranked by {stat_name} over {spec})")
        save_figure(fig, out)
    _done(out, f"traversal of latent dimensions {', '.join(map(str, dims))}")
    return 0


def latent_plot(args: argparse.Namespace) -> int:
    import numpy as np

    from ..generation import latent
    from ..plots import save_figure

    out = check_output(args.output, (".png", ".npy", ".csv"))
    vae = load_run(args.run, args.device)
    x, labels, dataset = load_run_data(args.data, vae, args.data_dir)
    if len(x) > args.max_points:
        keep = np.sort(np.random.default_rng(args.seed).choice(len(x), args.max_points, replace=False))
        x, labels = x[keep], None if labels is None else labels[keep]
    coords, method = latent.latent_embedding(vae, x, method=args.method, seed=args.seed)
    suffix = out.suffix.lower()
    if suffix == ".npy":
        save_npy(out, coords.astype(np.float32))
    elif suffix == ".csv":
        write_csv(out, coords, prefix="c")
    else:
        fig = latent.latent_scatter_figure(coords, labels, dataset.class_names, method=method)
        save_figure(fig, out)
    _done(out, f"2-D latent coordinates ({method}) of {len(x)} examples")
    return 0


def manifold(args: argparse.Namespace) -> int:
    from ..generation import latent
    from ..plots import save_figure

    out = check_output(args.output, PICTURE_OR_ARRAY)
    vae = load_run(args.run, args.device)
    if args.steps < 2:
        raise ConfigError(f"--steps must be at least 2, got {args.steps}")
    grid, decoded = latent.manifold(vae, steps=args.steps, quantile_range=args.quantiles)
    if out.suffix.lower() == ".npy":
        save_npy(out, decoded)
    else:
        save_figure(latent.manifold_figure(grid, decoded), out)
    _done(out, f"{args.steps}x{args.steps} manifold grid")
    return 0
