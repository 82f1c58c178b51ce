"""Generation on Fashion-MNIST, vaekit and pythae side by side: FD, precision, recall, conditional accuracy.

Every row trains on the same data with the same budget: Fashion-MNIST's 60,000 training images as grey values
in [0, 1] (no binarization) with a Bernoulli likelihood on them, the likelihood vaekit's default image path
picks for Fashion-MNIST and the one pythae's ``reconstruction_loss="bce"`` is; the same epochs, batch 128,
Adam at a constant 1e-3 with betas (0.9, 0.999) (pythae's trainer defaults, which vaekit is set to); seed 0.
The MLP rows share one architecture, vaekit's default MLP for images (784-400-20, ReLU), built for pythae by
``benchmarks/pythae_adapter.py``:

    vaekit_prior         vaekit VAE, z ~ N(0, I)
    vaekit_gmm           the same model, z from its ex-post Gaussian mixture (``vaekit.generation.fit_sampler``,
                         what ``vaekit fit-sampler`` fits: BIC picks 1-20 full-covariance components on the
                         training set's posterior means)
    vaekit_conditional   vaekit's conditional VAE (``VAE(conditional=True)``, labels from the data set), samples
                         drawn (``vae.sample(n, y=labels)``) for labels in the test split's proportions, as
                         ``sample_quality`` draws them (Fashion-MNIST's test split: 1,000 per class), z ~ N(0, I)
    vaekit_conditional_gmm
                         the same model, each label's codes from that label's own ex-post mixture (``fit_sampler``
                         on a conditional model: one BIC-chosen mixture per label)
    vaekit_conditional_shared_gmm
                         the same model, codes from one mixture fitted on all labels' codes (``per_label=False``,
                         ``vaekit fit-sampler --shared``): what the per-label mixture is measured against
    vaekit_conv_prior    the strongest cheap vaekit image model: the convolutional architecture that
    vaekit_conv_gmm      ``vaekit train fashion-mnist`` picks by default (hidden 32, 64; latent 20), prior and gmm
    vaekit_conv_conditional, vaekit_conv_conditional_gmm
                         the conditional VAE on that convolutional architecture, prior and per-label gmm
    vaekit_gmm_draw, vaekit_conv_gmm_draw, vaekit_conv_conditional_gmm_draw
                         the same mixtures fitted as pythae's sampler fits its own, on one posterior draw
                         z ~ q(z|x) per training image (``vaekit fit-sampler --source draw``): samples of the
                         aggregate posterior itself instead of its centres
    pythae_normal        pythae's ``VAE`` trained with its own ``TrainingPipeline`` on the same MLP, sampled with
                         its ``NormalSampler``
    pythae_gmm           the same pythae model with its ``GaussianMixtureSampler`` (its defaults: 10 components,
                         fitted on one posterior draw per training image)

Each row decodes the same number of samples (the mean of p(x|z): Bernoulli probabilities, for both libraries)
and ``vaekit.evaluation.sample_quality`` compares them with the same 10,000 test images: the Fréchet distance,
precision and recall (k = 3) in the features of the classifier ``feature_classifier(dataset)`` trains on the
data set's own labels; the conditional rows add the share of its samples that classifier assigns to the class
asked for. The training images themselves, as many as the samples, give the floor.

    python benchmarks/generation.py --quick    # 2,000 training and 500 test images, 1 epoch: about a minute
    python benchmarks/generation.py            # 10 epochs on all 60,000: about 15 minutes on 2 cores

Resumable: each trained model and each finished row are kept under runs/bench-generation/<quick|full>/, and
running the same command again does only what is missing (a failed row is tried again). Prints a Markdown
table and writes benchmarks/results/generation.json (the machine, the settings, every row); saves an 8x8 grid of
each row's samples as docs/images/generation_<row>.png (a conditional row's: one row of 8 per class; --quick: into
the work directory instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, machine, settled_work_dir  # noqa: E402

import vaekit  # noqa: E402
from vaekit.evaluation.sample_quality import (  # noqa: E402
    ClassifierSettings, compare_samples, feature_classifier, sample_quality)
from vaekit.fileio import atomic_write_json  # noqa: E402
from vaekit.models.networks import DEFAULT_HIDDEN  # noqa: E402
from vaekit.plots import save_image_grid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "generation.json"
RUNS = Path("runs") / "bench-generation"
IMAGES = ROOT / "docs" / "images"
# vaekit's default MLP for images (DEFAULT_HIDDEN["mlp"], the default latent size and activation).
ARCH = dict(hidden=(400,), latent_dim=20, activation="relu")
CONV_HIDDEN = tuple(DEFAULT_HIDDEN["conv"])
ADAM_BETAS = (0.9, 0.999)  # torch's and pythae's Adam defaults
MODELS = {  # what is trained; rows sharing a model sample it differently
    "vaekit_mlp": dict(library="vaekit", arch="mlp", hidden=ARCH["hidden"]),
    "vaekit_cvae": dict(library="vaekit", arch="mlp", hidden=ARCH["hidden"], conditional=True),
    "vaekit_conv": dict(library="vaekit", arch="conv", hidden=CONV_HIDDEN),
    "vaekit_conv_cvae": dict(library="vaekit", arch="conv", hidden=CONV_HIDDEN, conditional=True),
    "pythae_vae": dict(library="pythae", arch="mlp", hidden=ARCH["hidden"]),
}
ROWS = [  # row, description, model, sampler
    ("vaekit_prior", "vaekit VAE (MLP), prior z ~ N(0, I)", "vaekit_mlp", "prior"),
    ("vaekit_gmm", "vaekit VAE (MLP), GMM ex-post sampler", "vaekit_mlp", "gmm"),
    ("vaekit_conditional", "vaekit conditional VAE (MLP), prior, label asked", "vaekit_cvae", "prior"),
    ("vaekit_conditional_gmm", "vaekit conditional VAE (MLP), per-label GMM sampler", "vaekit_cvae", "gmm"),
    ("vaekit_conditional_shared_gmm", "vaekit conditional VAE (MLP), one GMM for all labels", "vaekit_cvae",
     "gmm_shared"),
    ("vaekit_conv_prior", "vaekit VAE (conv, the default image arch), prior", "vaekit_conv", "prior"),
    ("vaekit_conv_gmm", "vaekit VAE (conv), GMM ex-post sampler", "vaekit_conv", "gmm"),
    ("vaekit_conv_conditional", "vaekit conditional VAE (conv), prior, label asked", "vaekit_conv_cvae", "prior"),
    ("vaekit_conv_conditional_gmm", "vaekit conditional VAE (conv), per-label GMM sampler", "vaekit_conv_cvae",
     "gmm"),
    # The same three mixtures fitted as pythae's GaussianMixtureSampler fits its own: on one posterior draw per image.
    ("vaekit_gmm_draw", "vaekit VAE (MLP), GMM on posterior draws", "vaekit_mlp", "gmm_draw"),
    ("vaekit_conv_gmm_draw", "vaekit VAE (conv), GMM on posterior draws", "vaekit_conv", "gmm_draw"),
    ("vaekit_conv_conditional_gmm_draw", "vaekit conditional VAE (conv), per-label GMM on posterior draws",
     "vaekit_conv_cvae", "gmm_draw"),
    ("pythae_normal", "pythae VAE (MLP), NormalSampler", "pythae_vae", "normal"),
    ("pythae_gmm", "pythae VAE (MLP), GaussianMixtureSampler", "pythae_vae", "gmm"),
]
QUICK = dict(epochs=1, train_images=2000, test_images=500, num_samples=500, classifier_epochs=5)
FULL = dict(epochs=10, train_images=None, test_images=None, num_samples=10_000, classifier_epochs=None)
SEED = 0
K = 3


def load_data(train_images: int | None, test_images: int | None):
    """Fashion-MNIST as vaekit's default image path reads it: grey values in [0, 1], labels, its own test split."""
    data = vaekit.load_dataset("fashion-mnist")
    if train_images:
        data.x_train, data.y_train = data.x_train[:train_images], data.y_train[:train_images]
    if test_images:
        data.x_test, data.y_test = data.x_test[:test_images], data.y_test[:test_images]
    return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return list(value) if isinstance(value, tuple) else value


# --- training ---------------------------------------------------------------------------------------------

def vaekit_options(model: str, settings: dict[str, Any]) -> dict[str, Any]:
    spec = MODELS[model]
    options = dict(arch=spec["arch"], hidden=spec["hidden"], latent_dim=ARCH["latent_dim"],
                   activation=ARCH["activation"], likelihood="bernoulli", epochs=settings["epochs"],
                   batch_size=settings["batch_size"], lr=settings["lr"], lr_schedule="constant",
                   adam_beta2=ADAM_BETAS[1], seed=SEED, device="cpu")
    if spec.get("conditional"):
        options["conditional"] = True
    return options


def train_vaekit(model: str, data, settings: dict[str, Any], where: Path) -> dict[str, Any]:
    options = vaekit_options(model, settings)
    vae = vaekit.VAE(**options)
    run = where / "run"
    shutil.rmtree(run, ignore_errors=True)  # a half-trained model is trained again, so the time is a whole run's
    started = time.perf_counter()
    vae.fit(data, run_dir=run)
    seconds = time.perf_counter() - started
    return {"train_seconds": seconds, "options": _jsonable(options),
            "final_val_neg_elbo": vae.history_[-1].get("val_neg_elbo"),
            "parameters": sum(p.numel() for p in vae.model_.parameters())}


def _pythae_model():
    from pythae.models import VAE, VAEConfig

    from pythae_adapter import pythae_networks

    encoder, decoder = pythae_networks(ARCH["hidden"], ARCH["latent_dim"], ARCH["activation"])
    config = VAEConfig(input_dim=(1, 28, 28), latent_dim=ARCH["latent_dim"], reconstruction_loss="bce")
    return VAE(config, encoder=encoder, decoder=decoder)


def train_pythae(data, settings: dict[str, Any], where: Path) -> dict[str, Any]:
    """pythae's VAE with its own TrainingPipeline (BaseTrainer); no evaluation data, so it hands back the epoch
    of lowest training loss (``keep_best_on_train``) and never sees the test images the rows are scored on."""
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback
    from safetensors.torch import save_file

    from pythae_side_by_side import pythae_dataset

    class Losses(TrainingCallback):
        def __init__(self) -> None:
            self.losses: list[dict[str, float]] = []

        def on_log(self, training_config, logs, **kwargs):
            self.losses.append({k: float(v) for k, v in logs.items()})

    torch.manual_seed(SEED)
    model = _pythae_model()
    output_dir = where / "pythae"
    config = BaseTrainerConfig(output_dir=str(output_dir), num_epochs=settings["epochs"],
                               per_device_train_batch_size=settings["batch_size"], learning_rate=settings["lr"],
                               keep_best_on_train=True, seed=SEED, no_cuda=True)
    losses = Losses()
    pipeline = TrainingPipeline(model=model, training_config=config)
    started = time.perf_counter()
    pipeline(train_data=pythae_dataset(data.x_train, dynamic=False), callbacks=[losses])
    seconds = time.perf_counter() - started
    trained = pipeline.trainer._best_model.cpu().eval()  # what pythae saves as its final_model
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(where / "model.safetensors"))
    shutil.rmtree(output_dir, ignore_errors=True)  # pythae's pickled copies; the weights are kept as safetensors
    train_losses = [r.get("train_epoch_loss") for r in losses.losses]
    returned = 1 + int(np.argmin(train_losses)) if train_losses else None
    return {"train_seconds": seconds, "epoch_losses": losses.losses, "returned_epoch": returned,
            "parameters": sum(p.numel() for p in trained.parameters()),
            "options": {"model": "VAE", "input_dim": [1, 28, 28], "latent_dim": ARCH["latent_dim"],
                        "reconstruction_loss": "bce", "architecture": _jsonable(ARCH),
                        "trainer": "BaseTrainer (TrainingPipeline), defaults otherwise", "epochs": settings["epochs"],
                        "batch_size": settings["batch_size"], "lr": settings["lr"], "keep_best_on_train": True,
                        "seed": SEED}}


def load_pythae(where: Path):
    from safetensors.torch import load_file

    model = _pythae_model()
    model.load_state_dict(load_file(str(where / "model.safetensors")))
    return model.eval()


def trained_model(model: str, data, settings: dict[str, Any], work: Path) -> tuple[Any, dict[str, Any]]:
    """The trained model (a ``vaekit.VAE`` or a pythae ``VAE``), trained now or read from the cache."""
    where = work / "models" / model
    marker = where / "trained.json"
    if not marker.is_file():
        where.mkdir(parents=True, exist_ok=True)
        log(f"{model}: training {settings['epochs']} epoch(s) on {data.num_train:,} images")
        torch.manual_seed(SEED)
        info = (train_pythae(data, settings, where) if MODELS[model]["library"] == "pythae"
                else train_vaekit(model, data, settings, where))
        atomic_write_json(marker, info)
        log(f"{model}: trained in {info['train_seconds']:.0f} s")
    info = json.loads(marker.read_text())
    if MODELS[model]["library"] == "pythae":
        return load_pythae(where), info
    return vaekit.load(where / "run"), info


# --- sampling and scoring ---------------------------------------------------------------------------------

def pythae_samples(sampler: str, model, data, n: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """n samples (images, (n, 1, 28, 28) in [0, 1]) of the pythae model with its own sampler, and what it took."""
    from pythae.samplers import GaussianMixtureSampler, GaussianMixtureSamplerConfig, NormalSampler
    from threadpoolctl import threadpool_limits

    info: dict[str, Any] = {}
    np.random.seed(seed)  # scikit-learn's mixture (random_state None) and torch, which pythae's samplers draw from
    torch.manual_seed(seed)
    # scikit-learn's BLAS on one thread, as vaekit's fit_gmm runs it: next to PyTorch's threads on 2 cores the
    # mixture's fit on 2,000 codes took 14 s with the default thread pool and 0.6 s with one thread.
    with threadpool_limits(limits=1):
        if sampler == "normal":
            pythae_sampler = NormalSampler(model)
        else:
            pythae_sampler = GaussianMixtureSampler(model, GaussianMixtureSamplerConfig())
            started = time.perf_counter()
            pythae_sampler.fit(data.split("train"))
            info.update(sampler_fit_seconds=time.perf_counter() - started,
                        components=pythae_sampler.n_components, converged=bool(pythae_sampler.gmm.converged_),
                        em_iterations=int(pythae_sampler.gmm.n_iter_),
                        sampler_options={"n_components": pythae_sampler.n_components, "fitted_on": "pythae's "
                                         "own fit(): one posterior draw z ~ q(z|x) per training image"})
        with torch.no_grad():
            samples = pythae_sampler.sample(num_samples=n, return_gen=True).cpu().numpy()
    return samples, info


def vaekit_quality(sampler: Any, vae, data, classifier, n: int, seed: int, run_dir: Path) -> tuple[Any, dict, Any]:
    """``vaekit.evaluation.sample_quality.sample_quality`` of n samples of a vaekit model: a conditional model's
    are drawn for labels in the test split's proportions (Fashion-MNIST's test split: 1,000 per class) and scored
    for conditional accuracy there too; ``gmm`` is fitted first, as ``vaekit fit-sampler`` fits it (a
    conditional model's: one mixture per label, each on that label's training images; ``gmm_shared``: one for
    all labels; ``gmm_draw``: on one posterior draw per image, ``vaekit fit-sampler --source draw``). Returns the
    quality, what the fit took, and the sampler (its name or the fitted object)."""
    info: dict[str, Any] = {}
    conditional = vae.model_.conditional
    if sampler in ("gmm", "gmm_shared", "gmm_draw"):
        from vaekit.generation import fit_sampler, save_sampler

        train = data.split("train")
        started = time.perf_counter()
        labels = None
        if conditional:  # the images' labels as the run's class indices, as `vaekit fit-sampler` reads them
            from vaekit.data.labels import label_indices

            labels = label_indices(data.labels("train"), list(vae.classes_), data.class_names)
        fitted = fit_sampler(vae, train, kind="gmm", seed=seed, y=labels,
                             per_label=False if sampler == "gmm_shared" else None,
                             source="draw" if sampler == "gmm_draw" else "mean")
        info.update(sampler_fit_seconds=time.perf_counter() - started, components=fitted.components,
                    bic={str(k): v for k, v in fitted.bic.items()},
                    sampler_description=fitted.describe(vae.classes_ if conditional else None))
        if fitted.per_label:
            info["components_per_label"] = {str(vae.classes_[c]): k for c, k in fitted.label_components().items()}
        if sampler == "gmm":
            save_sampler(fitted, run_dir)  # beside the run, as `vaekit fit-sampler RUN` keeps it
        sampler = fitted
    quality = sample_quality(vae, data, num_samples=n, seed=seed, k=K, classifier=classifier, sampler=sampler)
    if conditional and quality.conditional_accuracy is None:
        raise RuntimeError("the conditional model's samples came back without a conditional accuracy")
    return quality, info, sampler


def grid_images(sampler: Any, model, seed: int) -> np.ndarray:
    """What a vaekit row's PNG shows: 64 samples (8 x 8), or for a conditional row 8 per class, a row per class
    (a pythae row's shows 64 of its measured samples chosen at random: a new draw would cost a second fit)."""
    if model.model_.conditional:
        classes = len(model.classes_)
        return np.asarray(model.sample(8 * classes, y=np.repeat(np.arange(classes), 8), seed=seed, sampler=sampler))
    return np.asarray(model.sample(64, sampler=sampler, seed=seed))


def run_row(row: str, description: str, model_name: str, sampler: str, data, classifier, settings: dict[str, Any],
            work: Path, images: Path) -> dict[str, Any]:
    done = work / "rows" / f"{row}.json"
    if done.is_file():
        cached = json.loads(done.read_text())
        log(f"{row}: cached (FD {cached['fd']:.2f})")
        return cached
    model, trained = trained_model(model_name, data, settings, work)
    library, n = MODELS[model_name]["library"], settings["num_samples"]
    log(f"{row}: {n:,} samples ({library}, {sampler})")
    started = time.perf_counter()
    if library == "pythae":
        samples, info = pythae_samples(sampler, model, data, n, SEED)
        quality = compare_samples(samples, data, classifier, k=K, seed=SEED, sampler=sampler)
        # 64 of them chosen at random: scikit-learn's GaussianMixture.sample returns its draws grouped by component,
        # so the first 64 would show one or two components only
        grid = samples[np.sort(np.random.default_rng(SEED + 1).choice(len(samples), 64, replace=False))]
    else:
        quality, info, used = vaekit_quality(sampler, model, data, classifier, n, SEED,
                                             work / "models" / model_name / "run")
    result: dict[str, Any] = {"name": row, "description": description, "model": model_name,
                              "library": library, **quality.to_dict(), "sampler": sampler, **info,
                              "sample_and_score_seconds": time.perf_counter() - started,
                              "train_seconds": trained["train_seconds"], "trained": trained}
    if MODELS[model_name].get("conditional"):
        result["classes"] = [str(c) for c in model.classes_]
    path = images / f"generation_{row}.png"
    if library != "pythae":  # a new draw (seed 1) from the sampler fitted above
        grid = grid_images(used, model, SEED + 1)
    save_image_grid(grid, path, ncols=8)  # the grid writer of `vaekit sample -o X.png`
    result["grid"] = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    atomic_write_json(done, result)
    accuracy = (f", conditional accuracy {result['conditional_accuracy']:.3f}"
                if result.get("conditional_accuracy") is not None else "")
    log(f"{row}: FD {quality.fd:.2f}, precision {quality.precision:.3f}, recall {quality.recall:.3f}{accuracy}")
    return result


# --- report -----------------------------------------------------------------------------------------------

def markdown_table(results: dict[str, dict[str, Any]], skipped: dict[str, str], settings: dict[str, Any]) -> str:
    lines = ["| row | FD | precision | recall | conditional accuracy | training time (s) | sampler fit (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    floor = None
    for row, description, _, _ in ROWS:
        r = results.get(row)
        if r is None:
            lines.append(f"| {description} | {skipped.get(row, 'not run')} | | | | | |")
            continue
        floor = floor or r
        accuracy = f"{r['conditional_accuracy']:.3f}" if r.get("conditional_accuracy") is not None else ""
        fit = f"{r['sampler_fit_seconds']:.1f}" if "sampler_fit_seconds" in r else ""
        lines.append(f"| {description} | {r['fd']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | {accuracy} | "
                     f"{r['train_seconds']:.0f} | {fit} |")
    if floor is not None:
        lines.append(f"| {floor['num_floor']:,} training images (the floor) | {floor['floor_fd']:.2f} | "
                     f"{floor['floor_precision']:.3f} | {floor['floor_recall']:.3f} | | | |")
        note = (f"\n\n{settings['num_samples']:,} samples per row (decoded means) against the {floor['num_test']:,} "
                f"test images, in the features of a classifier trained on the training labels (test accuracy "
                f"{floor['classifier_test_accuracy']:.3f}); precision and recall with k = {K}; {settings['epochs']} "
                f"epochs, batch {settings['batch_size']}, Adam {settings['lr']:g} constant for every model; training "
                "time: wall clock of the whole fit (a gmm row shares its model's)\n")
    else:
        note = "\n"
    return "\n".join(lines) + note


def per_class_accuracy(classifier, data) -> dict[str, float]:
    """The classifier's accuracy on each class's real test images: the ceiling a class's conditional accuracy is
    read against (a class it confuses on real images it also confuses on samples)."""
    truth = np.asarray(data.y_test)
    predicted = np.unique(np.asarray(data.y_train))[classifier.predict(data.split("test").numpy())]
    names = data.class_names or [str(c) for c in np.unique(truth)]
    return {str(names[i]): float(np.mean(predicted[truth == c] == c)) for i, c in enumerate(np.unique(truth))}


def rows_seconds(results: dict[str, dict[str, Any]], classifier) -> float:
    """What the rows cost from scratch, also when they come from the cache (``seconds`` is this invocation's): the
    classifier's training, each model's training once, and each row's sampler fit, sampling and scoring."""
    models = {r["model"]: r["train_seconds"] for r in results.values()}
    return (classifier.train_seconds + sum(models.values())
            + sum(r["sample_and_score_seconds"] for r in results.values()))


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="end-to-end check: 2,000 training and 500 test images, 1 epoch, 500 samples per row")
    parser.add_argument("--epochs", type=int, help=f"training epochs of every model (default {FULL['epochs']})")
    parser.add_argument("--num-samples", type=int,
                        help=f"samples per row (default {FULL['num_samples']:,}; --quick {QUICK['num_samples']})")
    parser.add_argument("--only", action="append", choices=[r for r, *_ in ROWS], help="run only this row (repeat)")
    parser.add_argument("--json", type=Path, help=f"results file (default {RESULTS}; --quick: none unless given)")
    parser.add_argument("--work-dir", type=Path, default=RUNS,
                        help=f"cache of trained models and finished rows (default {RUNS}/<quick|full>)")
    parser.add_argument("--images-dir", type=Path,
                        help=f"where the grids go (default {IMAGES.relative_to(ROOT)}; --quick: the work directory)")
    args = parser.parse_args(argv)
    try:
        import pythae  # noqa: F401
        import pythae.pipelines  # noqa: F401  (imported before their loggers are quietened: they set INFO on import)
        import pythae.samplers  # noqa: F401
    except ImportError:
        print("pythae is not installed: pip install --no-deps pythae (or pip install -e '.[bench]')", file=sys.stderr)
        return 2
    for name in ("pythae", "pythae.trainers.base_trainer.base_trainer", "pythae.pipelines.training",
                 "pythae.samplers.gaussian_mixture.gaussian_mixture_sampler", "pythae.models.base.base_model"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from pythae_side_by_side import TRAIN

    settings: dict[str, Any] = dict(QUICK if args.quick else FULL, **TRAIN)
    for key in ("epochs", "num_samples"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    work = settled_work_dir(args.work_dir, args.quick, _jsonable({**settings, "arch": ARCH, "conv_hidden": CONV_HIDDEN,
                                                                  "seed": SEED, "k": K}))
    if work is None:
        return 2
    images = args.images_dir or (work / "images" if args.quick else IMAGES)
    images.mkdir(parents=True, exist_ok=True)
    started, load_before = time.time(), os.getloadavg()
    data = load_data(settings["train_images"], settings["test_images"])
    classifier = feature_classifier(data, ClassifierSettings(epochs=settings["classifier_epochs"]), log=log)
    results: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    failed = False
    for row, description, model_name, sampler in ROWS:
        if args.only and row not in args.only:
            cached = work / "rows" / f"{row}.json"
            if cached.is_file():
                results[row] = json.loads(cached.read_text())
            continue
        try:
            results[row] = run_row(row, description, model_name, sampler, data, classifier, settings, work, images)
        except Exception as err:  # noqa: BLE001 - one row's failure stops no other; the run then exits 1
            failed = True
            skipped[row] = f"failed: {type(err).__name__}"
            log(f"{row}: FAILED ({type(err).__name__}: {err}); the other rows go on; not cached, rerun to retry")
    table = markdown_table(results, skipped, settings)
    print(table)
    json_path = args.json or (None if args.quick else RESULTS)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(json_path, {
            "benchmark": "generation", "mode": "quick" if args.quick else "full", "machine": machine(),
            "load_average_at_start": list(load_before), "load_average_at_end": list(os.getloadavg()),
            "pythae": getattr(pythae, "__version__", None) or _version("pythae"),
            "settings": {**_jsonable(settings), "seed": SEED, "k": K,
                         "data": "fashion-mnist, grey values in [0, 1] (no binarization), Bernoulli likelihood "
                                 "(vaekit: likelihood='bernoulli'; pythae: reconstruction_loss='bce')",
                         "architecture": _jsonable(ARCH), "conv_hidden": list(CONV_HIDDEN),
                         "training": {**TRAIN, "optimizer": f"Adam, betas {ADAM_BETAS}, constant rate"},
                         "samples": "the mean of p(x|z) for every row",
                         "classifier": {"test_accuracy": classifier.test_accuracy,
                                        "test_accuracy_per_class": per_class_accuracy(classifier, data),
                                        "key": classifier.key,
                                        "settings": _jsonable(classifier.settings.__dict__),
                                        "train_seconds": classifier.train_seconds}},
            "results": results, "skipped": skipped, "table": table, "seconds": time.time() - started,
            "seconds_of_all_rows": rows_seconds(results, classifier)})
        log(f"wrote {json_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
