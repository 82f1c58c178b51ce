"""vaekit and pythae side by side: the same MLP, data and epochs, scored by the same importance-sampling code.

pythae's ``VAE``, ``IWAE`` (k=5) and ``VAMP`` (500 pseudo-inputs), trained with pythae's own ``TrainingPipeline``
(``BaseTrainer`` with its defaults but for epochs, batch size 128 and learning rate 1e-3), beside vaekit's
ELBO, IWAE k=5, VampPrior and IWAE-with-VampPrior rows as ``benchmarks/likelihood.py`` defines them (its
one-layer MLP, 784-200-200-50 tanh, Adam 1e-3 constant, beta2 0.999, batch 128), on dynamically binarized
Fashion-MNIST. Three more rows train with each library's own schedule instead: vaekit's IWAE and IWAE with the
VampPrior at vaekit's training defaults (batch 256, Adam 6e-3 with beta2 0.99, per-step cosine with a 5% warm-up),
and, as the control, pythae's IWAE given the same batch, rate and betas with a per-epoch cosine schedule. The last
row is vaekit's hierarchical model, which pythae has no counterpart of: three top-down stochastic layers over a
residual convolutional network (benchmarks/likelihood.py's fm-ladder-resconv), with vaekit's defaults.
Every model is copied into a ``VAEModel`` (``pythae_adapter``) and scored by ``vaekit.evaluation.likelihood.
evaluate`` with K importance samples on the same images of the fixed binarized test draw. Prints a table,
writes benchmarks/results/pythae_side_by_side.json; each finished row is cached under runs/bench-pythae/
(trained weights, then the evaluation), so running the same command again resumes.

    python benchmarks/pythae_side_by_side.py --quick     # 2,000 training, 200 test images, 1 epoch, K=50
    python benchmarks/pythae_side_by_side.py             # 10 epochs, K=5000 on 1,000 test images
    python benchmarks/pythae_side_by_side.py --epochs 100 --test-images 10000   # likelihood.py's budget: hours

The VampPrior rows warm the KL weight up linearly over a tenth of the epochs (likelihood.py: 10 of 100;
pythae's ``linear_scheduling_steps`` is in epochs, vaekit's ``warmup_epochs`` ramps per step over as many).
pythae's trainer hands back the epoch with the lowest loss on its evaluation data (its default); it is given
the same fixed test draw that vaekit's trainer reports its validation loss on, and the JSON records which
epoch that was.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, machine  # noqa: E402
from likelihood import LADDER_RESCONV  # noqa: E402

import vaekit  # noqa: E402
from vaekit.config import OUTPUT_INITS  # noqa: E402
from vaekit.evaluation.likelihood import evaluate  # noqa: E402
from vaekit.fileio import atomic_write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "pythae_side_by_side.json"
RUNS = Path("runs") / "bench-pythae"
# benchmarks/likelihood.py's one-layer rows (BURDA_1L) and their training options.
ARCH = dict(hidden=(200, 200), latent_dim=50, activation="tanh")
TRAIN = dict(batch_size=128, lr=1e-3)
VAMP_COMPONENTS = 500
IWAE_SAMPLES = 5
ROWS = [
    ("vaekit-elbo", "vaekit VAE, ELBO"),
    ("pythae-vae", "pythae VAE"),
    ("vaekit-iwae", "vaekit VAE, IWAE k=5"),
    ("pythae-iwae", "pythae IWAE, k=5"),
    ("vaekit-vamp", "vaekit VAE, ELBO, VampPrior"),
    ("pythae-vamp", "pythae VAMP"),
    # pythae has no model that joins the two; vaekit's are options of one model.
    ("vaekit-iwae-vamp", "vaekit VAE, IWAE k=5, VampPrior"),
    # Each library with its own trainer's schedule: vaekit's defaults (what `vaekit train` and VAE() use), and as
    # the control, pythae's trainer given the nearest schedule its options allow.
    ("vaekit-iwae-defaults", "vaekit VAE, IWAE k=5, vaekit's default schedule"),
    ("vaekit-iwae-vamp-defaults", "vaekit VAE, IWAE k=5, VampPrior, vaekit's default schedule"),
    ("pythae-iwae-schedule", "pythae IWAE, k=5, vaekit's schedule (per-epoch cosine)"),
    # vaekit's hierarchical model, which pythae does not have: its own network, the same data and epochs.
    ("vaekit-ladder-resconv", "vaekit ladder: 3 top-down layers (32, 16, 8) over a residual conv network, ELBO, "
                              "no free bits, vaekit's default schedule"),
    ("vaekit-ladder-resconv-fb", "vaekit ladder as above, free bits 0.1 nats per unit"),
]
# The ladder row's network is benchmarks/likelihood.py's fm-ladder-resconv (LADDER_RESCONV, imported above): conv
# channels 32 and 64, 2 residual cells per resolution, stochastic layers of 32, 16 and 8 units inferred top-down, ReLU.
LADDER_FREE_BITS = 0.1
# vaekit's training defaults (vaekit.config: batch 256, Adam 6e-3 with beta2 0.99, cosine with a 5% warm-up, per
# step). pythae's BaseTrainer steps its scheduler once an epoch and has no warm-up, so its control gets the same
# batch, rate and betas with torch's CosineAnnealingLR over the epochs.
DEFAULT_RECIPE_ROWS = ("vaekit-iwae-defaults", "vaekit-iwae-vamp-defaults", "pythae-iwae-schedule",
                       "vaekit-ladder-resconv", "vaekit-ladder-resconv-fb")
VAEKIT_SCHEDULE = dict(batch_size=256, lr=6e-3, betas=(0.9, 0.99))
# Quick mode also cuts the test split itself (what both trainers validate on) and the VampPrior to 50 components.
QUICK = dict(epochs=1, importance_samples=50, test_images=200, train_images=2000, vamp_components=50)
FULL = dict(epochs=10, importance_samples=5000, test_images=1000, train_images=None, vamp_components=VAMP_COMPONENTS)


def load_data(train_images: int | None, test_images: int | None):
    data = vaekit.load_dataset("fashion-mnist", binarize="dynamic")
    if train_images:
        data.x_train = data.x_train[:train_images]
        data.y_train = data.y_train[:train_images] if data.y_train is not None else None
    if test_images:
        data.x_test = data.x_test[:test_images]
        data.y_test = data.y_test[:test_images] if data.y_test is not None else None
    return data


def warmup_epochs(epochs: int) -> int:
    return max(1, round(epochs / 10))


def train_vaekit(row: str, data, epochs: int, components: int,
                 output_init: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    recipe = {} if row in DEFAULT_RECIPE_ROWS else dict(**TRAIN, lr_schedule="constant", adam_beta2=0.999)
    ladder = row.startswith("vaekit-ladder")
    network = LADDER_RESCONV if ladder else dict(arch="mlp", **ARCH)
    options = dict(**network, **recipe, seed=0, device="cpu",
                   epochs=epochs, **({"output_init": output_init} if output_init else {}))
    if ladder:
        options.update(warmup_epochs=warmup_epochs(epochs))
    if row == "vaekit-ladder-resconv-fb":  # against the collapse of the upper layers (Kingma et al. 2016)
        options.update(free_bits=LADDER_FREE_BITS)
    elif ladder:  # without them (vaekit's default for a ladder is now 0.1: this row measures what that buys)
        options.update(free_bits=0.0)
    if row.startswith(("vaekit-iwae",)):
        options.update(objective="iwae", objective_samples=IWAE_SAMPLES)
    if row.startswith(("vaekit-vamp", "vaekit-iwae-vamp")):
        options.update(prior="vamp", vamp_components=components, warmup_epochs=warmup_epochs(epochs))
    started = time.perf_counter()
    vae = vaekit.VAE(**options).fit(data)
    seconds = time.perf_counter() - started
    train = vae.config_.train
    resolved = dict(batch_size=train.batch_size, lr=train.lr, lr_schedule=train.lr_schedule,
                    adam_beta2=train.adam_beta2)
    return vae.model_, {"train_seconds": seconds, "options": {k: list(v) if isinstance(v, tuple) else v
                                                              for k, v in {**resolved, **options}.items()},
                        "final_val_neg_elbo": vae.history_[-1]["val_neg_elbo"]}


def pythae_dataset(x: torch.Tensor, dynamic: bool):
    """pythae's dataset class, binarizing every image afresh each time it is read (dynamic binarization)."""
    from pythae.data.datasets import BaseDataset, DatasetOutput

    class DynamicBinarized(BaseDataset):
        def __getitem__(self, index):
            return DatasetOutput(data=torch.bernoulli(self.data[index]))

    return DynamicBinarized(x, torch.zeros(len(x))) if dynamic else BaseDataset(x, torch.zeros(len(x)))


def train_pythae(row: str, data, epochs: int, components: int, work: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    from pythae.models import IWAE, VAE, VAMP, IWAEConfig, VAEConfig, VAMPConfig
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    from pythae_adapter import pythae_networks, vaekit_model_from_pythae

    encoder, decoder = pythae_networks(ARCH["hidden"], ARCH["latent_dim"], ARCH["activation"])
    common = dict(input_dim=(1, 28, 28), latent_dim=ARCH["latent_dim"], reconstruction_loss="bce")
    if row == "pythae-vae":
        model = VAE(VAEConfig(**common), encoder=encoder, decoder=decoder)
    elif row.startswith("pythae-iwae"):
        model = IWAE(IWAEConfig(**common, number_samples=IWAE_SAMPLES), encoder=encoder, decoder=decoder)
    else:
        model = VAMP(VAMPConfig(**common, number_components=components,
                                linear_scheduling_steps=warmup_epochs(epochs)), encoder=encoder, decoder=decoder)
    output_dir = work / "pythae"
    if row in DEFAULT_RECIPE_ROWS:
        recipe = dict(per_device_train_batch_size=VAEKIT_SCHEDULE["batch_size"], learning_rate=VAEKIT_SCHEDULE["lr"],
                      optimizer_cls="Adam", optimizer_params={"betas": VAEKIT_SCHEDULE["betas"]},
                      scheduler_cls="CosineAnnealingLR", scheduler_params={"T_max": epochs})
    else:
        recipe = dict(per_device_train_batch_size=TRAIN["batch_size"], learning_rate=TRAIN["lr"])
    config = BaseTrainerConfig(output_dir=str(output_dir), num_epochs=epochs, no_cuda=True, **recipe)

    class EvalLosses(TrainingCallback):
        def __init__(self) -> None:
            self.losses: list[dict[str, float]] = []

        def on_log(self, training_config, logs, **kwargs):
            self.losses.append({k: float(v) for k, v in logs.items()})

    losses = EvalLosses()
    pipeline = TrainingPipeline(model=model, training_config=config)
    started = time.perf_counter()
    pipeline(train_data=pythae_dataset(data.x_train, True), eval_data=pythae_dataset(data.split("test"), False),
             callbacks=[losses])
    seconds = time.perf_counter() - started
    trained = pipeline.trainer._best_model  # what pythae saves as final_model: its lowest eval loss
    eval_losses = [r.get("eval_epoch_loss") for r in losses.losses]
    best_epoch = 1 + min(range(len(eval_losses)), key=lambda i: eval_losses[i]) if eval_losses else None
    from pythae_adapter import compare_densities

    ours = vaekit_model_from_pythae(trained.cpu(), ARCH["activation"])
    check = compare_densities(trained, ours, data.split("test")[:128])
    check32 = compare_densities(trained, ours, data.split("test")[:128], dtype=torch.float32)
    shutil.rmtree(output_dir, ignore_errors=True)  # pythae's pickled copy; the weights are kept as safetensors
    return ours, {"train_seconds": seconds, "epoch_losses": losses.losses, "returned_epoch": best_epoch,
                  "options": {**common, "input_dim": [1, 28, 28], "model": type(model).__name__,
                              "trainer": "BaseTrainer (TrainingPipeline), defaults otherwise", "epochs": epochs,
                              **{k: list(v) if isinstance(v, tuple) else v for k, v in recipe.items()},
                              **({"number_samples": IWAE_SAMPLES} if row.startswith("pythae-iwae") else {}),
                              **({"number_components": components, "linear_scheduling_steps":
                                  warmup_epochs(epochs)} if row == "pythae-vamp" else {})},
                  "adapter_max_abs_diff_float64": check, "adapter_max_abs_diff_float32": check32}


def save_trained(path: Path, model, info: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.__dict__.items()}
    atomic_write_json(path / "trained.json", {"model_config": config, **info})


def load_trained(path: Path):
    from safetensors.torch import load_file

    from vaekit.config import ModelConfig
    from vaekit.models.model import VAEModel

    info = json.loads((path / "trained.json").read_text())
    fields = {k: tuple(v) if isinstance(v, list) and k != "table_columns" else v
              for k, v in info["model_config"].items()}
    model = VAEModel(ModelConfig(**fields))
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return model.eval(), info


def run_row(row: str, description: str, settings: dict[str, Any], work: Path, x_test: torch.Tensor,
            data) -> dict[str, Any]:
    fingerprint = hashlib.sha256(json.dumps({**settings, "row": row, "arch": ARCH}, sort_keys=True,
                                            default=list).encode()).hexdigest()[:16]
    done = work / "result.json"
    if done.is_file():
        cached = json.loads(done.read_text())
        if cached.get("fingerprint") == fingerprint:
            log(f"{row}: cached (-log p(x) {cached['nll']:.2f})")
            return cached
    if not ((work / "trained.json").is_file() and
            json.loads((work / "trained.json").read_text()).get("fingerprint") == fingerprint):
        log(f"{row}: training {settings['epochs']} epochs")
        torch.manual_seed(0)
        if row.startswith("vaekit"):
            model, info = train_vaekit(row, data, settings["epochs"], settings["vamp_components"],
                                       settings.get("output_init"))
        else:
            model, info = train_pythae(row, data, settings["epochs"], settings["vamp_components"], work)
        save_trained(work, model, {**info, "fingerprint": fingerprint})
        log(f"{row}: trained in {info['train_seconds']:.0f} s")
    model, info = load_trained(work)
    log(f"{row}: evaluating {len(x_test)} test images with K={settings['importance_samples']}")
    result = evaluate(model, x_test, num_importance_samples=settings["importance_samples"], seed=0)
    row_result = {"name": row, "description": description, "fingerprint": fingerprint,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  **{k: v for k, v in info.items() if k not in ("model_config", "fingerprint")},
                  **{k: v for k, v in result.to_dict().items() if k != "posterior_mean_variance"},
                  "eval_seconds": result.seconds}
    atomic_write_json(done, row_result)
    log(f"{row}: -log p(x) {result.nll:.2f} ± {result.nll_stderr:.2f}, -ELBO {result.neg_elbo:.2f}, "
        f"evaluated in {result.seconds:.0f} s")
    return row_result


def markdown_table(results: dict[str, dict[str, Any]], settings: dict[str, Any]) -> str:
    k = settings["importance_samples"]
    lines = [f"| row | test -log p(x) (K={k}) | test -ELBO | KL | active units | training time | epochs |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, description in ROWS:
        r = results.get(name)
        if r is None:
            lines.append(f"| {description} | (not run) | | | | | |")
            continue
        seconds = r["train_seconds"]
        layers = r.get("active_units_per_layer") or []
        per_layer = f" ({'+'.join(map(str, layers))})" if len(layers) > 1 else ""
        duration = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
        lines.append(f"| {description} | {r['nll']:.2f} ± {r['nll_stderr']:.2f} | {r['neg_elbo']:.2f} ± "
                     f"{r['neg_elbo_stderr']:.2f} | {r['kl']:.2f} | {r['active_units']} of {len(r['kl_per_dim'])}{per_layer} | "
                     f"{duration} | {settings['epochs']} |")
    return "\n".join(lines) + (f"\n\nnats per example, mean ± standard error over {settings['test_images']} images of "
                               "the fixed binarized Fashion-MNIST test draw, all rows scored by vaekit's "
                               "importance sampling; training time: wall clock of the whole fit (validation "
                               "included)\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny end-to-end check: 2,000 training and 200 "
                                                             "test images, 1 epoch, K=50, VampPrior of 50")
    parser.add_argument("--epochs", type=int, help=f"training epochs of every row (default {FULL['epochs']})")
    parser.add_argument("--importance-samples", "-K", type=int,
                        help=f"K of the importance-weighted estimate (default {FULL['importance_samples']})")
    parser.add_argument("--test-images", type=int, help="the first N images of the fixed binarized test draw "
                                                         f"(default {FULL['test_images']}; 10000 is all)")
    parser.add_argument("--only", action="append", choices=[r for r, _ in ROWS], help="run only this row (repeat)")
    parser.add_argument("--json", type=Path, help=f"results file (default {RESULTS}; --quick: none unless given)")
    parser.add_argument("--runs", type=Path, default=RUNS, help=f"cache of finished rows (default {RUNS})")
    parser.add_argument("--output-init", choices=OUTPUT_INITS,
                        help="vaekit's rows: where the decoder's output bias starts (default: not given, vaekit's "
                             "default, auto); part of each row's cache key")
    args = parser.parse_args(argv)
    try:
        import pythae  # noqa: F401
    except ImportError:
        print("pythae is not installed: pip install pythae (the bench extra)", file=sys.stderr)
        return 2
    for name in ("pythae", "pythae.trainers.base_trainer.base_trainer", "pythae.pipelines.training"):
        logging.getLogger(name).setLevel(logging.WARNING)
    settings = dict(QUICK if args.quick else FULL)
    for key in ("epochs", "importance_samples", "test_images"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings["warmup_epochs_vamp"] = warmup_epochs(settings["epochs"])
    if args.output_init:
        settings["output_init"] = args.output_init
    mode = "quick" if args.quick else "full"
    data = load_data(settings["train_images"], settings["test_images"] if args.quick else None)
    x_test = data.split("test")[:settings["test_images"]]
    torch_threads = torch.get_num_threads()
    results: dict[str, dict[str, Any]] = {}
    started = time.time()
    for row, description in ROWS:
        if args.only and row not in args.only:
            continue
        torch.set_num_threads(torch_threads)
        results[row] = run_row(row, description, settings, args.runs / mode / row, x_test, data)
    json_path = args.json or (None if args.quick else RESULTS)
    kept = keep_earlier_rows(json_path, results, settings) if args.only else []
    results = {name: results[name] for name, _ in ROWS if name in results}  # the table's order
    if kept:
        log(f"rows not run now, kept from {json_path} (the same settings): {', '.join(kept)}")
    table = markdown_table(results, settings)
    print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(json_path, {
            "benchmark": "pythae_side_by_side", "mode": mode, "machine": machine(),
            "pythae": getattr(pythae, "__version__", None) or _version("pythae"),
            "settings": {**settings, "data": "fashion-mnist, dynamic binarization (pythae: a fresh Bernoulli draw "
                                              "per image read)",
                         "architecture": {k: list(v) if isinstance(v, tuple) else v for k, v in ARCH.items()},
                         "training": {**TRAIN, "optimizer": "Adam, betas (0.9, 0.999), constant rate"}},
            "results": results, "table": table, "seconds": time.time() - started})
        log(f"wrote {json_path}")
    return 0


SETTINGS_KEYS = ("epochs", "importance_samples", "test_images", "train_images", "vamp_components", "output_init")


def keep_earlier_rows(json_path: Path | None, results: dict[str, dict[str, Any]],
                      settings: dict[str, Any]) -> list[str]:
    """With ``--only``, the rows not run now are taken from the results file when it was written with the same
    settings, so that a row added or rerun alone still gives the whole table; returns the names taken."""
    if json_path is None or not json_path.is_file():
        return []
    earlier = json.loads(json_path.read_text())
    if any(earlier.get("settings", {}).get(k) != settings.get(k) for k in SETTINGS_KEYS):
        return []
    kept = [name for name in earlier.get("results", {}) if name not in results]
    for name in kept:
        results[name] = earlier["results"][name]
    return kept


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
