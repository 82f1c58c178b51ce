"""Using a trained run: ``sample``, ``reconstruct``, ``encode``, ``decode``."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from ..errors import ConfigError
from ..fileio import atomic_open
from .common import (EXAMPLE_FORMATS, add_data_options, check_output, load_run, load_run_data, positive_int,
                     read_latents, save_npy, write_csv, write_examples)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sample", help="generate new examples by decoding z ~ N(0, I)",
                              description="Generate examples from the prior: decode z ~ N(0, I) (the encoder is not used).")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("-n", "--num", type=positive_int, default=64, help="how many (default 64)")
    p.add_argument("-o", "--output", required=True, help="output: .png (grid), .npy or .csv")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--draw", action="store_true", help="draw x ~ p(x|z) instead of taking its mean")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    p.set_defaults(func=sample)

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


def _done(path, what: str) -> None:
    print(f"wrote {what} to {path}", file=sys.stderr)


def sample(args: argparse.Namespace) -> int:
    out = check_output(args.output, EXAMPLE_FORMATS)
    vae = load_run(args.run, args.device)
    x = vae.sample(args.num, seed=args.seed, sample_output=args.draw)
    write_examples(x, out, vae, title=f"{args.num} samples")
    _done(out, f"{args.num} samples")
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
