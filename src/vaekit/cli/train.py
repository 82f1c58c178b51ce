"""``vaekit train DATA --out RUN``: train a VAE and keep everything in a run directory."""

from __future__ import annotations

import argparse
import contextlib
import os
import dataclasses
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import (ACTIVATIONS, ARCHITECTURES, BINARIZATIONS, LIKELIHOOD_NAMES, LR_SCHEDULES, default_schedule,
                      INFERENCE_NAMES, OBJECTIVE_NAMES, OUTPUT_INITS, PRECISIONS, PRIOR_NAMES, RunConfig)
from ..errors import ConfigError, DataError
from ..fileio import atomic_write_text
from ..names import DEFAULT_LOADER_WORKERS, IN_MEMORY_CHOICES
from .common import DEVICE_HELP, add_data_options, parse_hidden, positive_int

if TYPE_CHECKING:
    from ..data.sources import UnreadableFileError

BAD_FILES = "bad_files.txt"
"""In the run directory: the files --skip-bad-files left out, one a line (path, a tab, what is wrong)."""
LOGGED_BAD_FILES = 20  # the log lists this many; the run directory's bad_files.txt all of them

# Options that may differ on --resume (everything else must match the saved run).
RESUMABLE_OPTIONS = {"epochs", "device", "precision", "checkpoint_every", "progress", "data_dir", "max_rollbacks"}

DEFAULTS = {
    "epochs": None, "batch_size": None, "lr": None, "lr_schedule": "cosine", "weight_decay": 0.0,
    "adam_beta2": 0.99,
    "latent_dim": None, "hidden": None,
    "arch": "auto", "activation": "relu", "likelihood": "auto", "gaussian_std": 1.0, "binarize": "none",
    "binarize_threshold": None, "kl_weight": 1.0, "warmup_epochs": 0, "patience": None, "seed": 0,
    "device": "auto", "checkpoint_every": None, "test_fraction": 0.1, "upper_latent_dims": (),
    "upper_hidden": (100, 100), "prior": "standard-normal", "vamp_components": 500, "objective": "elbo",
    "objective_samples": None, "free_bits": None, "clip_grad_norm": None, "max_rollbacks": 3, "precision": "fp32",
    "perturb_rate": 0.0, "inference": "bottom-up", "latent_layers": None, "output_init": "auto",
    "residual_blocks": 0,
}


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give one or more column names separated by commas")
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a VAE on a data set", description=__doc__,
        epilog="DATA is a built-in name (digits, fashion-mnist) or a path: .npy, .npz, .csv or a folder of images. "
               "The run directory gets config.json, model.safetensors, checkpoints, metrics.jsonl, loss_curve.png, "
               "samples.png and reconstructions.png.")
    p.add_argument("data", nargs="?", metavar="DATA", help="data to train on (optional with --resume)")
    p.add_argument("--out", "-o", required=True, metavar="RUN", help="run directory to create (or resume)")
    g = p.add_argument_group("model")
    g.add_argument("--latent-dim", type=positive_int, help="latent dimensions (default 20 for images; half the columns, 2 to 20, for vectors and tables)")
    g.add_argument("--arch", choices=("auto", *ARCHITECTURES), help="network: mlp, conv (default auto: conv for images of 16x16 and up)")
    g.add_argument("--hidden", type=parse_hidden, metavar="SIZES",
                   help="comma-separated hidden sizes (MLP units or conv channels; default 128,128 for vectors of "
                        "at most 16 real numbers, else 400; 32,64 for conv)")
    g.add_argument("--residual-blocks", type=int, metavar="N",
                   help="conv networks: N residual cells (two 3x3 convolutions and a skip connection) at each "
                        "resolution of the encoder and the decoder (default 0)")
    g.add_argument("--activation", choices=ACTIVATIONS, help="hidden activation (default relu)")
    g.add_argument("--likelihood", choices=("auto", *LIKELIHOOD_NAMES),
                   help="p(x|z): bernoulli, gaussian (fixed variance = MSE up to a constant), gaussian-learned "
                        "(one learned variance per output), gaussian-decoder (decoder outputs mean and variance); "
                        "default auto: bernoulli for [0, 1] data, gaussian-learned otherwise")
    g.add_argument("--gaussian-std", type=float, metavar="S", help="standard deviation of the fixed-variance gaussian (default 1)")
    g.add_argument("--upper-latent-dims", type=parse_hidden, metavar="SIZES",
                   help="stochastic layers above the first, bottom to top, e.g. 50 for Burda et al.'s two-layer model "
                        "(--hidden 200,200 --latent-dim 100 --upper-latent-dims 50); default none")
    g.add_argument("--latent-layers", type=positive_int, metavar="L",
                   help="L stochastic layers of sizes D, D/2, D/4, ... (rounded up) for --latent-dim D, e.g. 20,10,5 "
                        "for L = 3; --upper-latent-dims names the sizes instead (default 1)")
    g.add_argument("--inference", choices=INFERENCE_NAMES,
                   help="with several stochastic layers: bottom-up, q(z_1|x) q(z_2|z_1) ... (Burda et al. 2016), or "
                        "top-down, q(z_L|x) q(z_{L-1}|x, z_L) ... from a deterministic bottom-up pass (the Ladder VAE, "
                        "Sønderby et al. 2016); the generative model is the same chain (default bottom-up)")
    g.add_argument("--upper-hidden", type=parse_hidden, metavar="SIZES",
                   help="hidden sizes of the MLPs between stochastic layers, both directions (default 100,100)")
    g.add_argument("--prior", choices=PRIOR_NAMES,
                   help="p(z) of the top layer: standard-normal, or vamp (Tomczak and Welling's VampPrior, a mixture of "
                        "posteriors of learned pseudo-inputs; its KL is estimated by sampling); default standard-normal")
    g.add_argument("--vamp-components", type=positive_int, metavar="K", help="pseudo-inputs of the VampPrior (default 500)")
    g.add_argument("--conditional", action="store_true",
                   help="a conditional VAE (Sohn et al. 2015): encoder and decoder also see the label (an image "
                        "folder's subfolder, a built-in set's class, a table's --label-column); then vaekit sample "
                        "--label NAME or --per-label N, and vaekit transfer")
    g.add_argument("--binarize", choices=BINARIZATIONS,
                   help="for [0, 1] data: static (threshold, or one fixed random draw), dynamic (a fresh draw at every step)")
    g.add_argument("--binarize-threshold", type=float, metavar="T", help="with --binarize static: threshold instead of a random draw")
    tab = p.add_argument_group("tables", "column kinds are inferred from the values (see docs/tables.md); these override it")
    tab.add_argument("--categorical", type=_names, metavar="A,B", help="model these columns as categories")
    tab.add_argument("--continuous", type=_names, metavar="C", help="model these columns as real numbers")
    tab.add_argument("--drop-columns", type=_names, metavar="D", help="leave these columns out of the model")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=positive_int, help="passes over the training data (default 10, or more for a small "
                   "data set: at least 2,000 optimizer steps)")
    t.add_argument("--batch-size", type=positive_int, help="examples per step (default 256; for fewer than 2,048 training examples one eighth of them, at least 16)")
    t.add_argument("--lr", type=float, help="Adam learning rate, the peak of the cosine schedule "
                   "(default 6e-3 * sqrt(batch size / 256))")
    t.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help="cosine: the learning rate rises to --lr over the first 5%% of the steps, then falls to 0 "
                        "over the run's --epochs (resuming with more epochs stretches it); constant: --lr throughout "
                        "(default cosine)")
    t.add_argument("--weight-decay", type=float, help="Adam weight decay (default 0)")
    t.add_argument("--adam-beta2", type=float, metavar="B2",
                   help="Adam's second-moment decay (default 0.99, which suits short runs; 0.999 is Adam's own "
                        "default and the published VAE setups')")
    t.add_argument("--kl-weight", type=float, help="weight of the KL term, beta (default 1)")
    t.add_argument("--warmup-epochs", type=int, help="epochs over which the KL weight rises linearly from 0 (default 0)")
    t.add_argument("--free-bits", type=float, metavar="NATS",
                   help="minimum KL per latent dimension (batch average) that the elbo objective counts, against "
                        "posterior collapse (Kingma et al. 2016; default 0.1 for a top-down hierarchy trained with "
                        "the elbo objective, whose upper layers collapse without them, else 0: off)")
    t.add_argument("--objective", choices=OBJECTIVE_NAMES,
                   help="elbo, or iwae: the importance-weighted bound of Burda et al. 2016 (default elbo)")
    t.add_argument("--objective-samples", type=positive_int, metavar="K",
                   help="posterior samples per example in the objective (default 1 for elbo, 5 for iwae)")
    t.add_argument("--patience", type=positive_int, help="stop after this many epochs without a better validation -ELBO, "
                   "keeping the best weights (default: no early stopping)")
    t.add_argument("--seed", type=int, help="seed for initialisation, data order and sampling (default 0)")
    t.add_argument("--device", help=DEVICE_HELP)
    t.add_argument("--precision", choices=PRECISIONS,
                   help="fp32, or bf16/fp16: the networks run under torch.autocast in that type (fp16 with gradient "
                        "scaling); densities and weights stay float32 (default fp32)")
    t.add_argument("--nproc", type=positive_int, metavar="N",
                   help="train in N processes on this machine with DistributedDataParallel (starts torchrun; gloo on "
                        "CPU, NCCL on GPUs); --batch-size is the global batch. For several machines run torchrun "
                        "yourself (see docs/training.md)")
    t.add_argument("--checkpoint-every", type=positive_int, metavar="STEPS",
                   help="also checkpoint every this many steps, and at the end of every epoch (default: at the end of the "
                        "first and the last epoch, and of others at most every 20 s)")
    t.add_argument("--clip-grad-norm", type=float, metavar="NORM",
                   help="scale the gradients down to this total 2-norm when it is larger (default: no clipping)")
    t.add_argument("--max-rollbacks", type=int, metavar="N",
                   help="when a loss or gradient becomes NaN or infinite, roll back to the last good state and halve "
                        "the learning rate, at most N times in a row before stopping with an error (default 3; 0: stop "
                        "at once)")
    t.add_argument("--perturb", dest="perturb_rate", type=float, metavar="RATE",
                   help="replace this share of the training values with random ones in [0, 1] (on the data's grid for "
                        "binary and 8-bit data), a fresh draw every step: trains the background model that --background "
                        "of vaekit fit-detector and score takes for the likelihood ratio (Ren et al. 2019; they use "
                        "0.1-0.3). Validation stays on clean data (default 0: off)")
    t.add_argument("--output-init", choices=OUTPUT_INITS,
                   help="where the decoder's output bias starts: marginal (the best fit to the training data that "
                        "ignores z, so the first steps need not spend the code on the average example), pytorch "
                        "(PyTorch's default), or auto: marginal under the VampPrior, which otherwise collapses with a "
                        "tanh network, pytorch otherwise (default auto)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    t.add_argument("--no-detector", dest="detector", action="store_false",
                   help="do not fit the typicality model of vaekit score's default score after training (about 10 s "
                        "on Fashion-MNIST); vaekit score or vaekit fit-detector fits it when it is first needed")
    data = add_data_options(p)
    data.add_argument("--skip-bad-files", action="store_true",
                      help="leave out images (and .npy shards) that cannot be read, damaged or truncated, instead of "
                           "stopping: counted and listed in the log and in RUN/bad_files.txt. Streamed from disk, a "
                           "file found bad during training is replaced in its batch by the next readable example")
    d = p.add_argument_group("data bigger than memory")
    d.add_argument("--data-in-memory", choices=IN_MEMORY_CHOICES, default="auto",
                   help="auto: hold the data in memory when it fits --memory-budget-mb, else stream the training split of "
                        "a .npy file, a folder of .npy shards or of images from disk; yes: always load it whole; "
                        "no: always stream (default auto)")
    d.add_argument("--memory-budget-mb", type=float, metavar="MB",
                   help="memory the data may take (default: half of the available memory)")
    d.add_argument("--loader-workers", type=int, default=DEFAULT_LOADER_WORKERS, metavar="N",
                   help=f"DataLoader worker processes reading streamed batches (default {DEFAULT_LOADER_WORKERS})")
    p.set_defaults(func=run)


def _given(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}


def _option_value(config: RunConfig, name: str):
    for section in (config.model, config.train, config.data):
        if hasattr(section, name):
            return getattr(section, name)
    return None


def run(args: argparse.Namespace) -> int:
    from ..data.sources import UnreadableFileError
    from ..training import distributed

    if args.nproc is not None and args.nproc > 1 and not distributed.launched_by_torchrun():
        return distributed.launch(args.nproc, args.argv)  # each rank runs this command again under torchrun
    finished = False
    try:
        try:
            code = _train(args)
        except UnreadableFileError as err:
            raise DataError(_with_skip_hint(err, args)) from None
        finished = True
    finally:
        distributed.shutdown(wait_for_all=finished)
    if distributed.launched_by_torchrun():
        # Every file is written and the process group is gone. Skip the interpreter's teardown: in about one
        # run in three a torch C++ thread was destroyed while joinable during it and the rank aborted
        # (SIGABRT, "terminate called without an active exception"), which torchrun reports as a failed run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _train(args: argparse.Namespace) -> int:
    from ..api import latent_dim_for, load, make_run_config
    from ..data import load_dataset, parse_spec
    from ..training import checkpoint as ckpt
    from ..training import distributed
    from ..training.trainer import train

    out = Path(args.out)
    data_options = dict(in_memory=args.data_in_memory, memory_budget_mb=args.memory_budget_mb,
                        loader_workers=args.loader_workers, skip_bad_files=args.skip_bad_files)
    if args.resume and ckpt.is_run_dir(out):
        config = ckpt.load_config(out)
        conflicts = [f"--{k.replace('_', '-')} {v} (the run has {_option_value(config, k)})"
                     for k, v in _given(args).items()
                     if k not in RESUMABLE_OPTIONS and _option_value(config, k) not in (None, v)
                     and not (isinstance(v, tuple) and tuple(v) == tuple(_option_value(config, k)))]
        if conflicts:
            raise ConfigError(f"{out} was trained with other settings: {'; '.join(conflicts)}. "
                              "Drop these options to resume it, or train into a new --out")
        if args.data is not None and parse_spec(args.data)[0] != config.data.source:
            raise ConfigError(f"{out} was trained on {config.data.source}, not {parse_spec(args.data)[0]}")
        train_cfg = dataclasses.replace(config.train, **{k: v for k, v in _given(args).items()
                                                         if k in ("epochs", "device", "precision", "checkpoint_every",
                                                                  "max_rollbacks")})
        config = dataclasses.replace(config, train=train_cfg)
        dataset = load_dataset(config.data.source, data_dir=args.data_dir, like=config.data, **data_options)
    else:
        if args.data is None:
            raise ConfigError("name the data to train on (a built-in name or a path), or use --resume with an existing run")
        if ckpt.is_run_dir(out) and not args.resume:
            raise ConfigError(f"{out} already holds a run; add --resume to continue it, or choose another --out")
        source, split = parse_spec(args.data)
        if split not in (None, "train"):
            raise ConfigError(f"training uses the training split and validates on the test split; drop ':{split}'")
        opts = {**DEFAULTS, **_given(args)}
        dataset = load_dataset(source, data_dir=args.data_dir, image_size=args.image_size, channels=args.channels,
                               label_column=args.label_column, test_fraction=opts["test_fraction"],
                               split_seed=opts["seed"], binarize=opts["binarize"],
                               binarize_threshold=opts["binarize_threshold"], categorical=args.categorical,
                               continuous=args.continuous, drop_columns=args.drop_columns,
                               # an array likelihood named for a table of numbers: read it as a numeric array
                               as_table=opts["likelihood"] in ("auto", "table"), **data_options)
        config = make_run_config(
            dataset, latent_dim=opts["latent_dim"], hidden=opts["hidden"], arch=opts["arch"],
            likelihood=opts["likelihood"], activation=opts["activation"], gaussian_std=opts["gaussian_std"],
            epochs=opts["epochs"], batch_size=opts["batch_size"], lr=opts["lr"], lr_schedule=opts["lr_schedule"],
            weight_decay=opts["weight_decay"], adam_beta2=opts["adam_beta2"],
            kl_weight=opts["kl_weight"], warmup_epochs=opts["warmup_epochs"], patience=opts["patience"],
            seed=opts["seed"], device=opts["device"], checkpoint_every=opts["checkpoint_every"],
            upper_latent_dims=opts["upper_latent_dims"], upper_hidden=opts["upper_hidden"], prior=opts["prior"],
            vamp_components=opts["vamp_components"], objective=opts["objective"],
            objective_samples=opts["objective_samples"], free_bits=opts["free_bits"],
            clip_grad_norm=opts["clip_grad_norm"], max_rollbacks=opts["max_rollbacks"], precision=opts["precision"],
            perturb_rate=opts["perturb_rate"], inference=opts["inference"], latent_layers=opts["latent_layers"],
            conditional=args.conditional, output_init=opts["output_init"], residual_blocks=opts["residual_blocks"])

    context = distributed.initialize(config.train.device)  # joins torchrun's process group, if launched by it
    log = _logger(args.progress) if context.is_main else (lambda message: None)
    m = config.model
    log(f"data: {dataset}")
    if dataset.skipped_files:
        log(f"--skip-bad-files: left out {_listing(dataset.skipped_files, out)}")
    if dataset.train_stream is not None and args.skip_bad_files:
        dataset.train_stream.on_bad_file = lambda path, reason: log(
            f"--skip-bad-files: {path} cannot be read ({reason}); training goes on without it, its place in each "
            "batch taken by the next readable example")
    if dataset.config.table is not None:
        from ..data.table import TableSchema

        log("columns:\n" + "\n".join(TableSchema.from_dict(dataset.config.table).describe()))
    if not args.resume:
        reason = default_schedule(dataset.num_train, _given(args).get("batch_size"), _given(args).get("epochs"))[2]
        if reason:
            log(reason)
        latent_reason = latent_dim_for(dataset)[1] if "latent_dim" not in _given(args) else ""
        if latent_reason:
            log(latent_reason)
    t = config.train
    latents = ",".join(map(str, (m.latent_dim, *m.upper_latent_dims)))
    inference = f" ({m.inference})" if m.upper_latent_dims else ""
    conditioned = (f", conditional on {m.num_classes} classes ({', '.join(m.class_names[:6])}"
                   f"{', ...' if m.num_classes > 6 else ''})" if m.num_classes else "")
    log(f"model: {m.arch} {','.join(map(str, m.hidden))}"
        f"{f' ({m.residual_blocks} residual blocks per resolution)' if m.residual_blocks else ''} -> latent {latents}{inference}, likelihood {m.likelihood}, "
        f"prior {m.prior}{conditioned}; "
        f"training {t.epochs} epochs, batch {t.batch_size}, lr {t.lr:g} ({t.lr_schedule}), objective {t.objective}"
        + (f" (k={t.objective_samples})" if t.objective_samples > 1 else "")
        + (f", free bits {t.free_bits}" if t.free_bits else "")
        + (f", precision {t.precision}" if t.precision != "fp32" else "")
        + (f"; {context.world_size} processes ({context.backend}), global batch split over them"
           if context.enabled else ""))
    started = time.perf_counter()
    entries_before = ckpt.entries_of(out)
    try:
        model, history = train(config, dataset, run_dir=out, resume=args.resume, progress=args.progress, log=log)
    except BaseException:
        if context.is_main and not ckpt.remove_unstarted_run(out, entries_before):
            _write_bad_files(out, dataset, log)
        raise
    if not context.is_main:
        return 0
    _write_bad_files(out, dataset, log)
    vae = load(out)  # as saved: what every later command sees
    _write_pictures(vae, out, dataset)
    from ..anomaly.typicality import TYPICALITY_FILE

    if args.detector:
        _fit_typicality(vae, out, dataset, log)
    elif (out / TYPICALITY_FILE).is_file():  # a resumed run's: fitted for the weights before this training
        (out / TYPICALITY_FILE).unlink()
        log("anomaly scores: removed the typicality model of the weights before resuming (--no-detector)")
    last = history[-1] if history else {}
    log(f"done in {time.perf_counter() - started:.1f} s: validation -ELBO {last.get('val_neg_elbo', float('nan')):.3f} "
        f"nats/example. Run directory: {out}")
    return 0


def _with_skip_hint(err: UnreadableFileError, args: argparse.Namespace) -> str:
    """The error, with what to do: --skip-bad-files when the file is one of several (not the data file itself)."""
    from ..data import parse_spec
    from ..training import checkpoint as ckpt

    source = parse_spec(args.data)[0] if args.data else None
    if source is None:  # --resume: the run's own data
        with contextlib.suppress(Exception):
            source = ckpt.load_config(args.out).data.source
    if args.skip_bad_files or source is None or Path(err.path).resolve() == Path(source).expanduser().resolve():
        return str(err)  # the data is this one file: nothing to skip it for
    return f"{err}. Replace or remove it, or add --skip-bad-files to train without the files that cannot be read"


def _listing(files: list[tuple[str, str]], out: Path) -> str:
    """'N file(s) that cannot be read: path (reason), ...' for the log, the first LOGGED_BAD_FILES of them."""
    shown = "; ".join(f"{path} ({reason})" for path, reason in files[:LOGGED_BAD_FILES])
    more = f"; and {len(files) - LOGGED_BAD_FILES:,} more" if len(files) > LOGGED_BAD_FILES else ""
    return f"{len(files):,} file(s) that cannot be read: {shown}{more} (all listed in {out / BAD_FILES})"


def _write_bad_files(out: Path, dataset, log) -> None:
    """bad_files.txt in the run directory: the unreadable files skipped (those of earlier sessions of a resumed run
    too), and a line in the log for those that training met."""
    found = dict(dataset.skipped_files)
    in_training = [] if dataset.train_stream is None else [
        (path, reason) for path, reason in dataset.train_stream.unreadable_files() if path not in found]
    found.update(in_training)
    if not found or not out.is_dir():
        return
    path = out / BAD_FILES
    earlier = {}
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in path.read_text(encoding="utf-8").splitlines()[1:]:
            name, _, reason = line.partition("\t")
            earlier[name] = reason
    every = {**earlier, **{p: " ".join(r.split()) for p, r in found.items()}}
    atomic_write_text(path, "file\treason\n" + "".join(f"{p}\t{r}\n" for p, r in sorted(every.items())))
    if in_training:
        log(f"--skip-bad-files: training left out {_listing(sorted(in_training), out)}")
    else:
        log(f"--skip-bad-files: {len(found):,} file(s) left out, listed in {path}")


def _write_pictures(vae, out: Path, dataset) -> None:
    """samples.png and reconstructions.png in the run directory, for a first look (a table: samples.csv)."""
    import numpy as np

    from .common import write_examples

    labels = None
    if vae.model_.conditional:  # samples: one row per class (at most 16 classes shown), 8 of each
        from ..data.labels import split_label_indices

        shown = min(len(vae.classes_), 16)
        sample_labels = np.repeat(np.arange(shown), 8 if not vae.is_table_ else max(1, 64 // shown))
        labels = split_label_indices(dataset, "test", list(vae.classes_))[:32]
    else:
        sample_labels = None
    count = 64 if sample_labels is None else len(sample_labels)
    if vae.is_table_:
        from ..data.table import write_table

        write_table(vae.sample(count, y=sample_labels, seed=0), out / "samples.csv")
        return
    title = "samples" if sample_labels is None else "samples, one row per class"
    write_examples(vae.sample(count, y=sample_labels, seed=0), out / "samples.png", vae, title=title)
    originals = dataset.split("test")[:32].numpy()  # in the data's own units
    if len(vae.input_shape_) == 3:
        from ..plots import save_reconstruction_grid

        save_reconstruction_grid(originals, vae.reconstruct(originals, labels), out / "reconstructions.png")
    else:
        both = np.stack([originals, vae.reconstruct(originals, labels)], axis=1).reshape(-1, *vae.input_shape_)
        write_examples(both, out / "reconstructions.png", vae, title="originals (even rows) and reconstructions")


def _fit_typicality(vae, out: Path, dataset, log) -> None:
    """typicality.json: the density of the model's statistics on the training data, for ``vaekit score``'s default."""
    from .. import anomaly
    from ..anomaly import typicality

    streamed = dataset.train_stream is not None
    which = "test" if streamed else "train"
    x = dataset.split(which, units="model").numpy()  # binarized as the model saw them
    labels = None
    if vae.model_.conditional:
        from ..data.labels import split_label_indices

        labels = split_label_indices(dataset, which, list(vae.classes_))
    started = time.perf_counter()
    try:
        state = typicality.fit_typicality(vae, x, labels=labels)
    except DataError as err:
        log(f"anomaly scores: no typicality model ({err}); vaekit score will use {anomaly.default_score(vae)}")
        return
    typicality.save_typicality(state, out)
    log(f"anomaly scores: fitted the typicality model on {state.fit_size:,} {'test' if streamed else 'training'} "
        f"examples ({len(state.weights)} mixture components, {time.perf_counter() - started:.1f} s)")


def _logger(enabled: bool):
    def log(message: str) -> None:
        if enabled:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)
    return log
