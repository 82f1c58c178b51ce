"""Speed: vaekit against a plain PyTorch reference loop, side by side in one run, on Fashion-MNIST.

The reference is the pytorch/examples VAE written the canonical way (MLP 784-400-20, sigmoid decoder
with ``F.binary_cross_entropy``, Adam 1e-3, batch 128, a ``DataLoader`` over a ``TensorDataset``).
vaekit trains the same architecture with its default settings (``vaekit.VAE(latent_dim=20,
hidden=(400,), arch="mlp")``). Both sides train on the same dynamically binarized data and are
scored by the same function (``vaekit.evaluation.elbo`` on the fixed binarized test set; the
reference's weights are copied into a ``VAEModel``, which computes the same function).

Every measurement runs in its own subprocess (so peak memory is per side), the two sides
alternate, and the table gives medians over the repeats:

- training examples/second (all training steps of the run, validation excluded on both sides);
- time to quality: training seconds until the test -ELBO first reaches the target, which is the
  median test -ELBO of the reference runs after 10 epochs (linear interpolation between epochs);
- peak resident memory (RSS) of the training process;
- importance-weighted log-likelihood (``vaekit.evaluation.log_likelihood`` against the obvious
  per-image implementation), images/second at K=1000 and K=5000, the full test set at K=5000, and
  the agreement of the two estimates on the reference's images;
- sampling (decode z ~ N(0, I)) and encoding throughput, through ``vaekit.VAE`` against the
  reference model called directly;
- useful model GFLOP/s (matrix multiplies of the network only) next to this machine's measured
  matrix-multiply peaks in float32 and bfloat16;
- an ablation: vaekit's trainer from the foundation's settings to the defaults, one optimisation at a
  time, with the examples/second and the time to the target each one bought and the test -ELBO;
- the convolutional model ``vaekit train fashion-mnist`` picks by default (part ``conv``): vaekit's trainer at
  its defaults against a plain loop over the very same modules (``conv_reference``: the encoder, its two heads
  and the decoder of a ``VAEModel`` built with ``arch="conv"``, trained by hand with Adam 1e-3, batch 128, a
  ``DataLoader`` and sigmoid + binary cross-entropy), the same epochs, examples/s and test -ELBO.

    python benchmarks/speed.py --quick                       # smoke run (about 3 minutes on 2 cores)
    python benchmarks/speed.py --json speed.json             # everything in one run (about an hour on 2 cores)
    python benchmarks/speed.py --parts train,use,peaks --json a.json   # or in pieces of under 30 minutes
    python benchmarks/speed.py --parts ablation --json b.json
    python benchmarks/speed.py --parts iwae --json c.json
    python benchmarks/speed.py --parts process --json benchmarks/results/speed_process.json   # about 35 minutes
    python benchmarks/speed.py --merge a.json b.json c.json  # one table from the pieces
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

INPUT, HIDDEN, LATENT = 784, 400, 20
PARTS = ("train", "ablation", "iwae", "use", "peaks", "conv", "process")

# Useful arithmetic of the network (matrix multiplies only, 2 FLOP per multiply-add).
LAYERS = [(INPUT, HIDDEN), (HIDDEN, LATENT), (HIDDEN, LATENT), (LATENT, HIDDEN), (HIDDEN, INPUT)]
FORWARD_MACS = sum(n_in * n_out for n_in, n_out in LAYERS)
# Backward: a weight gradient for every layer, an input gradient for every layer but the first.
TRAIN_FLOP_PER_EXAMPLE = 2 * (3 * FORWARD_MACS - INPUT * HIDDEN)
DECODER_FLOP_PER_SAMPLE = 2 * (LATENT * HIDDEN + HIDDEN * INPUT)
ENCODER_FLOP_PER_EXAMPLE = 2 * (INPUT * HIDDEN + 2 * HIDDEN * LATENT)


# --- the reference: pytorch/examples vae/main.py -------------------------------------------------
class ReferenceVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(INPUT, HIDDEN)
        self.fc21 = nn.Linear(HIDDEN, LATENT)
        self.fc22 = nn.Linear(HIDDEN, LATENT)
        self.fc3 = nn.Linear(LATENT, HIDDEN)
        self.fc4 = nn.Linear(HIDDEN, INPUT)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z: Tensor) -> Tensor:
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x.view(-1, INPUT))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def reference_loss(recon_x: Tensor, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    bce = F.binary_cross_entropy(recon_x, x.view(-1, INPUT), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


@torch.no_grad()
def reference_log_likelihood(model: ReferenceVAE, x: Tensor, num_samples: int) -> Tensor:
    """The obvious importance-weighted estimate: one image at a time, K posterior draws, distributions' log_prob."""
    out = []
    for image in x.view(-1, INPUT):
        mu, logvar = model.encode(image[None])
        std = torch.exp(0.5 * logvar)
        z = mu + std * torch.randn(num_samples, LATENT)
        probs = model.decode(z)
        log_px_z = torch.distributions.Bernoulli(probs=probs).log_prob(image).sum(-1)
        log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_qz = torch.distributions.Normal(mu, std).log_prob(z).sum(-1)
        out.append(torch.logsumexp(log_px_z + log_pz - log_qz, dim=0) - math.log(num_samples))
    return torch.stack(out)


def vaekit_model_from_reference(reference: ReferenceVAE):
    """The same network as a ``VAEModel``, so that both sides are scored by vaekit's evaluation code."""
    from vaekit.config import ModelConfig
    from vaekit.models.model import VAEModel

    model = VAEModel(ModelConfig(input_shape=(1, 28, 28), latent_dim=LATENT, hidden=(HIDDEN,), arch="mlp"))
    ours = [p for p in model.parameters()]
    theirs = [p for layer in (reference.fc1, reference.fc21, reference.fc22, reference.fc3, reference.fc4)
              for p in (layer.weight, layer.bias)]
    assert [tuple(p.shape) for p in ours] == [tuple(p.shape) for p in theirs], "architectures differ"
    with torch.no_grad():
        for mine, other in zip(ours, theirs):
            mine.copy_(other)
    return model.eval()


def reference_from_vaekit(model) -> ReferenceVAE:
    reference = ReferenceVAE()
    theirs = [p for layer in (reference.fc1, reference.fc21, reference.fc22, reference.fc3, reference.fc4)
              for p in (layer.weight, layer.bias)]
    with torch.no_grad():
        for mine, other in zip(model.parameters(), theirs):
            other.copy_(mine)
    return reference.eval()


# --- workers (each runs in its own process) ------------------------------------------------------
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def load_data():
    import vaekit

    return vaekit.load_dataset("fashion-mnist", binarize="dynamic")


def test_neg_elbo(model, x_test: Tensor, seed: int) -> float:
    """The one scoring function for both sides: vaekit's ELBO on the fixed binarized test set."""
    from vaekit.evaluation.likelihood import elbo

    return elbo(model, x_test, batch_size=1024, seed=seed).neg_elbo.mean().item()


def train_reference(spec: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(spec["seed"])
    data = load_data()
    x_test = data.split("test")
    model = ReferenceVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(data.x_train), batch_size=128, shuffle=True)
    curve, seconds, examples = [], 0.0, 0
    for epoch in range(spec["epochs"]):
        model.train()
        started = time.perf_counter()
        train_loss = 0.0
        for (x,) in loader:
            x = torch.bernoulli(x)  # dynamic binarization, as on the vaekit side
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(x)
            loss = reference_loss(recon_batch, x, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
            examples += len(x)
        seconds += time.perf_counter() - started
        curve.append({"epoch": epoch + 1, "seconds": seconds,
                      "test_neg_elbo": test_neg_elbo(vaekit_model_from_reference(model), x_test, spec["seed"])})
    return {"curve": curve, "seconds": seconds, "examples": examples, "test_neg_elbo": curve[-1]["test_neg_elbo"],
            "peak_rss_mb": peak_rss_mb(), "settings": "Adam 1e-3, batch 128, DataLoader(TensorDataset)"}


# The ablation ladder: from the foundation's trainer to vaekit's defaults, one optimisation at a time.
# "undo" switches an implementation back to the foundation's (see ``undo_optimisations``).
FOUNDATION = {"batch_size": 128, "lr": 1e-3, "lr_schedule": "constant", "adam_beta2": 0.999}
LADDER = [
    ("foundation trainer (Adam 1e-3 constant, batch 128)", FOUNDATION, ["binarization", "loss"]),
    ("+ binarization by torch.rand().lt_", FOUNDATION, ["loss"]),
    ("+ fused Bernoulli loss (BCE with logits)", FOUNDATION, []),
    ("+ cosine schedule with warm-up, lr 4.2e-3", {"batch_size": 128, "lr_schedule": "cosine", "adam_beta2": 0.999},
     []),
    ("+ Adam beta2 0.99", {"batch_size": 128}, []),
    ("+ batch 256, lr 6e-3 (the defaults)", {}, []),
]


def undo_optimisations(names: list[str]) -> None:
    """Put back the foundation's implementation of the named optimisations (for the ablation only)."""
    import vaekit.training.trainer
    from vaekit.models.likelihoods import BernoulliLikelihood, Likelihood

    if "binarization" in names:
        vaekit.training.trainer.binarize = lambda x, threshold=None, generator=None: torch.bernoulli(x, generator=generator)
    if "loss" in names:
        BernoulliLikelihood.negative_log_prob = Likelihood.negative_log_prob  # -Independent(Bernoulli).log_prob


def train_vaekit(spec: dict[str, Any]) -> dict[str, Any]:
    import vaekit

    undo_optimisations(spec.get("undo", []))
    data = load_data()
    options = dict(latent_dim=LATENT, hidden=(HIDDEN,), arch="mlp", seed=spec["seed"], device="cpu",
                   **spec.get("options", {}))
    if spec.get("epochs"):
        options["epochs"] = spec["epochs"]
    vae = vaekit.VAE(**options).fit(data)
    history = vae.history_
    curve, seconds = [], 0.0
    for record in history:
        seconds += record["seconds"]
        curve.append({"epoch": record["epoch"], "seconds": seconds, "test_neg_elbo": record["val_neg_elbo"]})
    examples = len(data.x_train) * len(history)
    final = test_neg_elbo(vae.model_, data.split("test"), spec["seed"])
    result = {"curve": curve, "seconds": seconds, "examples": examples, "test_neg_elbo": final,
              "peak_rss_mb": peak_rss_mb(),
              "settings": f"batch {vae.config_.train.batch_size}, lr {vae.config_.train.lr:g}, "
                          f"{vae.config_.train.epochs} epochs"}
    if spec.get("save"):
        vae.save(spec["save"])
    return result


def iwae(spec: dict[str, Any]) -> dict[str, Any]:
    import vaekit
    from vaekit.evaluation.likelihood import log_likelihood

    torch.manual_seed(spec["seed"])
    vae = vaekit.load(spec["run"])
    x = load_data().split("test")[:spec["examples"]]
    started = time.perf_counter()
    if spec["side"] == "vaekit":
        estimate = log_likelihood(vae.model_, x, num_importance_samples=spec["k"], seed=spec["seed"])
    else:
        estimate = reference_log_likelihood(reference_from_vaekit(vae.model_), x, spec["k"])
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "examples": len(x), "estimates": estimate.double().tolist(),
            "peak_rss_mb": peak_rss_mb()}


def use(spec: dict[str, Any]) -> dict[str, Any]:
    """Sampling (decode z ~ N(0, I)) and encoding (posterior means) of ``examples`` images."""
    import vaekit

    vae = vaekit.load(spec["run"])
    n = spec["examples"]
    x = load_data().split("test")
    x = x.repeat(math.ceil(n / len(x)), 1, 1, 1)[:n]
    timings = {}
    if spec["side"] == "vaekit":
        vae.sample(64, seed=0), vae.transform(x[:64])  # warm-up
        started = time.perf_counter()
        vae.sample(n, seed=spec["seed"])
        timings["sample_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        vae.transform(x)
        timings["encode_seconds"] = time.perf_counter() - started
    else:
        model = reference_from_vaekit(vae.model_)
        with torch.no_grad():
            model.decode(torch.randn(64, LATENT))  # warm-up
            started = time.perf_counter()
            model.decode(torch.randn(n, LATENT)).cpu()  # as pytorch/examples draws its samples
            timings["sample_seconds"] = time.perf_counter() - started
            started = time.perf_counter()
            loader = DataLoader(TensorDataset(x), batch_size=128)  # as the pytorch/examples test loop
            means = [model.encode(batch.view(-1, INPUT))[0] for (batch,) in loader]
            torch.cat(means).numpy()
            timings["encode_seconds"] = time.perf_counter() - started
    return {"examples": n, **timings}


def matmul_peaks(spec: dict[str, Any]) -> dict[str, Any]:
    """GFLOP/s of torch.mm on square matrices, float32 and bfloat16 (best of the calls in a time budget).

    bfloat16 uses smaller matrices: without native bf16 instructions (AVX2 machines) it is ~100x slower.
    """
    out = {"sizes": {"float32": spec["size"], "bfloat16": spec["size"] // 4}}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        size = out["sizes"][name]
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        torch.mm(a, b)
        best, spent = math.inf, 0.0
        while spent < spec["seconds"] or best == math.inf:
            started = time.perf_counter()
            torch.mm(a, b)
            elapsed = time.perf_counter() - started
            best, spent = min(best, elapsed), spent + elapsed
        out[name] = 2 * size ** 3 / best / 1e9
    return out


CONV = dict(arch="conv", hidden=(32, 64), latent_dim=LATENT)  # what `vaekit train fashion-mnist` builds


def conv_model(seed: int):
    """vaekit's default convolutional VAE for Fashion-MNIST, as a ``VAEModel`` (the modules both sides train)."""
    from vaekit.config import ModelConfig
    from vaekit.models.model import VAEModel

    torch.manual_seed(seed)
    return VAEModel(ModelConfig(input_shape=(1, 28, 28), likelihood="bernoulli", **CONV))


def train_conv_reference(spec: dict[str, Any]) -> dict[str, Any]:
    """The plain loop a user would write around the same modules: no soft clamps, no fused kernels."""
    torch.manual_seed(spec["seed"])
    data = load_data()
    model = conv_model(spec["seed"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(data.x_train), batch_size=128, shuffle=True)
    seconds, examples = 0.0, 0
    for _ in range(spec["epochs"]):
        model.train()
        started = time.perf_counter()
        for (x,) in loader:
            x = torch.bernoulli(x)
            optimizer.zero_grad()
            h = model.encoder(x)
            mu, logvar = model.mean_head(h), model.logvar_head(h)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            recon = torch.sigmoid(model.decoder(z)).reshape_as(x)
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = (F.binary_cross_entropy(recon, x, reduction="sum") + kl) / len(x)
            loss.backward()
            optimizer.step()
            examples += len(x)
        seconds += time.perf_counter() - started
    model.eval()
    return {"seconds": seconds, "examples": examples, "epochs": spec["epochs"], "peak_rss_mb": peak_rss_mb(),
            "test_neg_elbo": test_neg_elbo(model, data.split("test"), spec["seed"]),
            "settings": "Adam 1e-3, batch 128, DataLoader(TensorDataset), sigmoid + BCE"}


def train_conv_vaekit(spec: dict[str, Any]) -> dict[str, Any]:
    import vaekit

    data = load_data()
    vae = vaekit.VAE(**CONV, epochs=spec["epochs"], seed=spec["seed"], device="cpu").fit(data)
    seconds = sum(record["seconds"] for record in vae.history_)
    return {"seconds": seconds, "examples": len(data.x_train) * len(vae.history_), "epochs": len(vae.history_),
            "peak_rss_mb": peak_rss_mb(), "test_neg_elbo": test_neg_elbo(vae.model_, data.split("test"), spec["seed"]),
            "settings": f"vaekit defaults: batch {vae.config_.train.batch_size}, lr {vae.config_.train.lr:g}"}


WORKERS = {"train-reference": train_reference, "train-vaekit": train_vaekit, "iwae": iwae, "use": use,
           "peaks": matmul_peaks, "train-conv-reference": train_conv_reference, "train-conv-vaekit": train_conv_vaekit}


# vaekit's allocator settings (vaekit/allocator.py) as the environment variables any PyTorch program can start with:
# the plain loop's "+ malloc settings" side runs with them, to show what of vaekit's speed is that setting alone.
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(512 << 20)}


def run_worker(kind: str, spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh Python process (``env``: extra environment variables) and return its JSON."""
    import os

    out = subprocess.run([sys.executable, __file__, "--worker", kind, json.dumps(spec)],
                         capture_output=True, text=True, check=False,
                         env=None if env is None else {**os.environ, **env})
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"worker {kind} failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- orchestration -------------------------------------------------------------------------------
def seconds_to_reach(curve: list[dict[str, float]], target: float) -> float | None:
    """Training seconds at which the test -ELBO first reaches ``target``, interpolating between evaluations."""
    previous_seconds, previous_value = 0.0, math.inf
    for point in curve:
        if point["test_neg_elbo"] <= target:
            if math.isinf(previous_value):
                return point["seconds"]
            fraction = (previous_value - target) / (previous_value - point["test_neg_elbo"])
            return previous_seconds + fraction * (point["seconds"] - previous_seconds)
        previous_seconds, previous_value = point["seconds"], point["test_neg_elbo"]
    return None


def median(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    if len(finite) < len(values):  # a run that never reached the target counts as infinitely slow
        finite += [math.inf] * (len(values) - len(finite))
    return statistics.median(finite) if finite else None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_training(args, workdir: Path) -> dict[str, Any]:
    """Both sides' training runs, alternating; with ``args.budget_epochs`` also vaekit runs with that shorter
    epoch budget (its cosine schedule ends sooner), the recipe for reaching the target quality fastest."""
    sides_run = ["reference", "vaekit"] + (["vaekit-budget"] if args.budget_epochs else [])
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides_run}
    epochs = {"reference": args.reference_epochs, "vaekit": args.vaekit_epochs, "vaekit-budget": args.budget_epochs}
    for repeat in range(args.repeats):
        order = sides_run if repeat % 2 == 0 else sides_run[::-1]
        for side in order:
            spec = {"seed": repeat, "epochs": epochs[side]}
            if side == "vaekit" and repeat == 0 and not (workdir / "vaekit-run").exists():
                spec["save"] = str(workdir / "vaekit-run")
            result = run_worker("train-reference" if side == "reference" else "train-vaekit", spec)
            runs[side].append(result)
            log(f"train {side} #{repeat + 1}: {result['examples'] / result['seconds']:,.0f} examples/s, "
                f"test -ELBO {result['test_neg_elbo']:.2f}, peak RSS {result['peak_rss_mb']:.0f} MB")
    target_epoch = min(args.target_epoch, args.reference_epochs)
    target = statistics.median(next(p["test_neg_elbo"] for p in r["curve"] if p["epoch"] == target_epoch)
                               for r in runs["reference"])
    sides = {}
    for side, results in runs.items():
        sides[side] = {
            "examples_per_second": statistics.median(r["examples"] / r["seconds"] for r in results),
            "seconds_to_target": median([seconds_to_reach(r["curve"], target) for r in results]),
            "test_neg_elbo": statistics.median(r["test_neg_elbo"] for r in results),
            "epochs": len(results[0]["curve"]),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
            "settings": results[0]["settings"],
            "runs": results,
        }
        sides[side]["model_gflops"] = sides[side]["examples_per_second"] * TRAIN_FLOP_PER_EXAMPLE / 1e9

    def speedup(side: str) -> float:
        ours = sides[side]["seconds_to_target"]
        return sides["reference"]["seconds_to_target"] / ours if ours not in (None, math.inf) else 0.0

    ref, ours = sides["reference"], sides["vaekit"]
    out = {
        "target_neg_elbo": target,
        "target_epoch": target_epoch,
        "train": sides,
        "train_speedup": ours["examples_per_second"] / ref["examples_per_second"],
        # The fastest recipe: the shorter budget where one was run, else the default schedule.
        "time_to_quality_speedup": speedup("vaekit-budget" if "vaekit-budget" in sides else "vaekit"),
        "time_to_quality_speedup_default_schedule": speedup("vaekit"),
        "peak_rss_mb": {"reference": ref["peak_rss_mb"], "vaekit": ours["peak_rss_mb"]},
        "test_neg_elbo": {"reference": ref["test_neg_elbo"], "vaekit": ours["test_neg_elbo"]},
    }
    if "vaekit-budget" in sides:
        out["peak_rss_mb"]["vaekit-budget"] = sides["vaekit-budget"]["peak_rss_mb"]
        out["test_neg_elbo"]["vaekit-budget"] = sides["vaekit-budget"]["test_neg_elbo"]
    return out


def measure_conv(args) -> dict[str, Any]:
    """The default convolutional model: vaekit's trainer against the plain loop, the same epochs, alternating."""
    sides_run = ("reference", "vaekit", "reference-malloc")
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides_run}
    for repeat in range(args.repeats):
        for side in (sides_run if repeat % 2 == 0 else sides_run[::-1]):
            result = run_worker(f"train-conv-{side.removesuffix('-malloc')}", {"seed": repeat, "epochs": args.conv_epochs},
                                env=TUNED_MALLOC if side.endswith("-malloc") else None)
            runs[side].append(result)
            log(f"conv {side} #{repeat + 1}: {result['examples'] / result['seconds']:,.0f} examples/s, "
                f"test -ELBO {result['test_neg_elbo']:.2f}")
    sides = {side: {"examples_per_second": statistics.median(r["examples"] / r["seconds"] for r in results),
                    "test_neg_elbo": statistics.median(r["test_neg_elbo"] for r in results),
                    "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
                    "epochs": args.conv_epochs, "settings": results[0]["settings"], "runs": results}
             for side, results in runs.items()}
    return {"conv": sides, "conv_speedup": sides["vaekit"]["examples_per_second"]
            / sides["reference"]["examples_per_second"],
            "conv_speedup_against_tuned_malloc": sides["vaekit"]["examples_per_second"]
            / sides["reference-malloc"]["examples_per_second"], "conv_architecture": {k: list(v) if isinstance(v, tuple)
                                                                              else v for k, v in CONV.items()}}


PROCESS_SIDES = ("vaekit", "vaekit --no-detector", "plain loop")


def process_command(side: str, arch: str, epochs: int, out: Path) -> list[str]:
    if side == "plain loop":
        return [sys.executable, str(Path(__file__).with_name("plain_loop.py")), "--arch", arch, "--epochs", str(epochs),
                "--out", str(out)]
    command = [sys.executable, "-m", "vaekit", "train", "fashion-mnist", "--epochs", str(epochs), "--out", str(out),
               "--no-progress"]
    if arch == "mlp":  # the pytorch/examples network; conv is what vaekit train picks for these images
        command += ["--arch", "mlp", "--hidden", str(HIDDEN), "--latent-dim", str(LATENT)]
    return command + (["--no-detector"] if side.endswith("--no-detector") else [])


def timed_process(command: list[str]) -> dict[str, Any]:
    """One whole process: wall seconds from start to exit, the child's own CPU seconds and peak RSS, its output."""
    import os

    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}):\n{output[-2000:]}")
    detector = [float(line.rsplit(", ", 1)[1].split(" s)")[0]) for line in output.splitlines()
                if "fitted the typicality model" in line]
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "detector_seconds": detector[0] if detector else None, "last_lines": output.splitlines()[-3:]}


def measure_process(args) -> dict[str, Any]:
    """Whole ``vaekit train`` processes against the plain loop's, alternating within each case, medians."""
    work = Path(args.workdir or "runs/bench-speed-process") / ("quick" if args.quick else "full")
    cases = {}
    for arch, epochs in args.process_cases:
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in PROCESS_SIDES}
        for repeat in range(args.repeats):
            order = PROCESS_SIDES if repeat % 2 == 0 else PROCESS_SIDES[::-1]
            for side in order:
                cached = work / f"{arch}-{epochs}" / f"{side.replace(' ', '_')}-{repeat}.json"
                if not cached.is_file():
                    with tempfile.TemporaryDirectory(prefix="vaekit-process-") as tmp:
                        result = timed_process(process_command(side, arch, epochs, Path(tmp) / "run"))
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    cached.write_text(json.dumps(result))
                    log(f"process {arch} {epochs} epochs, {side} #{repeat + 1}: {result['seconds']:.1f} s")
                runs[side].append(json.loads(cached.read_text()))
        sides = {side: {"seconds": statistics.median(r["seconds"] for r in results),
                        "cpu_seconds": statistics.median(r["cpu_seconds"] for r in results),
                        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
                        "detector_seconds": median([r["detector_seconds"] for r in results])
                        if side == "vaekit" else None, "runs": results}
                 for side, results in runs.items()}
        plain = sides["plain loop"]["seconds"]
        cases[f"{arch}-{epochs}"] = {"arch": arch, "epochs": epochs, "sides": sides,
                                     "speedup": plain / sides["vaekit"]["seconds"],
                                     "speedup_no_detector": plain / sides["vaekit --no-detector"]["seconds"],
                                     "commands": {side: " ".join(process_command(side, arch, epochs, Path("RUN"))[1:])
                                                  for side in PROCESS_SIDES}}
    return {"process": cases}


def measure_ablation(args) -> dict[str, Any]:
    """Each rung of ``LADDER`` trained ``repeats`` times (rungs alternate in order and reverse order)."""
    runs: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(LADDER))}
    for repeat in range(args.ablation_repeats):
        order = range(len(LADDER)) if repeat % 2 == 0 else reversed(range(len(LADDER)))
        for i in order:
            name, options, undo = LADDER[i]
            result = run_worker("train-vaekit", {"seed": repeat, "epochs": args.ablation_epochs, "options": options,
                                                 "undo": undo})
            runs[i].append(result)
            log(f"ablation {name} #{repeat + 1}: {result['examples'] / result['seconds']:,.0f} examples/s, "
                f"test -ELBO {result['test_neg_elbo']:.2f}")
    # The first rung's value one epoch before its end: every rung's runs reach it within the budget (the
    # first rung's own final value would sit just out of reach of half of its runs).
    target = statistics.median(r["curve"][-2 if len(r["curve"]) > 1 else -1]["test_neg_elbo"] for r in runs[0])
    rungs = []
    for i, (name, options, undo) in enumerate(LADDER):
        rungs.append({
            "name": name, "options": options, "undone": undo,
            "examples_per_second": statistics.median(r["examples"] / r["seconds"] for r in runs[i]),
            "seconds_to_target": median([seconds_to_reach(r["curve"], target) for r in runs[i]]),
            "epochs_to_target": median([epochs_to_reach(r["curve"], target) for r in runs[i]]),
            "test_neg_elbo": statistics.median(r["test_neg_elbo"] for r in runs[i]),
            "runs": [{"curve": r["curve"], "examples_per_second": r["examples"] / r["seconds"]} for r in runs[i]],
        })
    return {"ablation": {"target_neg_elbo": target, "target_epoch": args.ablation_epochs - 1,
                         "epochs": args.ablation_epochs, "rungs": rungs}}


def epochs_to_reach(curve: list[dict[str, float]], target: float) -> float | None:
    """Like ``seconds_to_reach``, in epochs."""
    return seconds_to_reach([{**p, "seconds": float(p["epoch"])} for p in curve], target)


def ensure_model(workdir: Path, args) -> str:
    run = workdir / "vaekit-run"
    if not run.exists():
        log("training a vaekit model (default settings) for the evaluation parts")
        run_worker("train-vaekit", {"seed": 0, "epochs": args.vaekit_epochs, "save": str(run)})
    return str(run)


def measure_iwae(args, run: str) -> dict[str, Any]:
    """Images/second of both sides on the first test images (alternating), and vaekit on the whole test set."""
    out: dict[str, Any] = {}
    for k in (1000, 5000):
        reference_examples = max(10, args.iwae_reference_examples * 1000 // k)
        vaekit_examples = max(10, args.iwae_examples * 1000 // k)
        timings: dict[str, list[float]] = {"reference": [], "vaekit": []}
        estimates: dict[str, list[float]] = {}
        for repeat in range(args.repeats):
            for side in (("reference", "vaekit") if repeat % 2 == 0 else ("vaekit", "reference")):
                n = reference_examples if side == "reference" else vaekit_examples
                result = run_worker("iwae", {"side": side, "k": k, "examples": n, "run": run, "seed": repeat})
                timings[side].append(result["examples"] / result["seconds"])
                estimates.setdefault(side, result["estimates"])
                log(f"iwae K={k} {side} #{repeat + 1}: {timings[side][-1]:,.1f} images/s over {n} images")
        shared = min(len(estimates["reference"]), len(estimates["vaekit"]))
        differences = [a - b for a, b in zip(estimates["vaekit"][:shared], estimates["reference"][:shared])]
        ours = statistics.median(timings["vaekit"])
        out[f"k{k}"] = {
            "reference_images_per_second": statistics.median(timings["reference"]),
            "vaekit_images_per_second": ours,
            "speedup": ours / statistics.median(timings["reference"]),
            "compared_images": shared,
            "difference_on_shared": statistics.fmean(differences),
            "difference_standard_error": statistics.stdev(differences) / math.sqrt(shared) if shared > 1 else math.nan,
            "reference_log_likelihood_on_shared": statistics.fmean(estimates["reference"][:shared]),
            "decoder_gflops": ours * k * DECODER_FLOP_PER_SAMPLE / 1e9,
        }
    full = {"measured": False, "images": 10_000, "seconds": 10_000 / out["k5000"]["vaekit_images_per_second"]}
    if args.iwae_full:
        result = run_worker("iwae", {"side": "vaekit", "k": 5000, "examples": 10_000, "run": run, "seed": 0})
        estimates = result["estimates"]
        full = {"measured": True, "images": len(estimates), "seconds": result["seconds"],
                "log_likelihood": statistics.fmean(estimates),
                "standard_error": statistics.stdev(estimates) / math.sqrt(len(estimates)),
                "peak_rss_mb": result["peak_rss_mb"]}
        log(f"iwae K=5000 vaekit, all {len(estimates)} test images: {result['seconds']:.0f} s, "
            f"log p(x) {full['log_likelihood']:.2f} nats")
    out["k5000_full_test_set"] = full
    return {"iwae": out, "iwae_k5000_seconds": full["seconds"]}


def measure_use(args, run: str) -> dict[str, Any]:
    rates: dict[str, dict[str, list[float]]] = {s: {"sample": [], "encode": []} for s in ("reference", "vaekit")}
    for repeat in range(args.repeats):
        for side in (("reference", "vaekit") if repeat % 2 == 0 else ("vaekit", "reference")):
            result = run_worker("use", {"side": side, "examples": args.use_examples, "run": run, "seed": repeat})
            for what in ("sample", "encode"):
                rates[side][what].append(result["examples"] / result[f"{what}_seconds"])
    out = {}
    for what in ("sample", "encode"):
        ref, ours = statistics.median(rates["reference"][what]), statistics.median(rates["vaekit"][what])
        out[what] = {"reference_per_second": ref, "vaekit_per_second": ours, "speedup": ours / ref}
    log(f"sampling {out['sample']['vaekit_per_second']:,.0f}/s, encoding {out['encode']['vaekit_per_second']:,.0f}/s")
    return {"use": out}


def machine() -> dict[str, Any]:
    """``benchmarks/common.py``'s description of the machine, with torch's CPU capability (AVX2, AVX512, ...)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import machine as describe  # benchmarks/common.py

    return {**describe(), "threads": torch.get_num_threads(), "capability": torch.backends.cpu.get_cpu_capability()}


def fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "not reached"
    return f"{value:,.{digits}f}"


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def print_table(results: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str, str]] = []
    if "train" in results:
        ref, ours = results["train"]["reference"], results["train"]["vaekit"]
        rows += [
            ("training examples/s", fmt(ref["examples_per_second"]), fmt(ours["examples_per_second"]),
             f"{results['train_speedup']:.2f}x"),
            (f"seconds to test -ELBO {results['target_neg_elbo']:.2f} (default {ours['epochs']}-epoch schedule)",
             fmt(ref["seconds_to_target"], 1), fmt(ours["seconds_to_target"], 1),
             f"{results.get('time_to_quality_speedup_default_schedule', results['time_to_quality_speedup']):.2f}x "
             "faster"),
            ("test -ELBO after the run (nats)", f"{ref['test_neg_elbo']:.2f} ({ref['epochs']} ep)",
             f"{ours['test_neg_elbo']:.2f} ({ours['epochs']} ep)",
             f"{ours['test_neg_elbo'] - ref['test_neg_elbo']:+.2f}"),
            ("peak RSS of a training run (MB)", fmt(ref["peak_rss_mb"]), fmt(ours["peak_rss_mb"]),
             f"{ours['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x"),
            ("useful model GFLOP/s (training)", fmt(ref["model_gflops"], 1), fmt(ours["model_gflops"], 1),
             f"{ours['model_gflops'] / ref['model_gflops']:.2f}x"),
        ]
        budget = results["train"].get("vaekit-budget")
        if budget:
            rows[2:2] = [
                (f"seconds to test -ELBO {results['target_neg_elbo']:.2f} ({budget['epochs']}-epoch budget)", "",
                 fmt(budget["seconds_to_target"], 1), f"{results['time_to_quality_speedup']:.2f}x faster"),
                (f"test -ELBO after the {budget['epochs']}-epoch budget (nats)", "",
                 f"{budget['test_neg_elbo']:.2f}", f"{budget['test_neg_elbo'] - ref['test_neg_elbo']:+.2f}"),
            ]
    if "conv" in results:
        ref, ours = results["conv"]["reference"], results["conv"]["vaekit"]
        rows += [
            (f"conv model: training examples/s ({ours['epochs']} epochs)", fmt(ref["examples_per_second"]),
             fmt(ours["examples_per_second"]), f"{results['conv_speedup']:.2f}x"),
            (f"conv model: test -ELBO after {ours['epochs']} epochs (nats)", f"{ref['test_neg_elbo']:.2f}",
             f"{ours['test_neg_elbo']:.2f}", f"{ours['test_neg_elbo'] - ref['test_neg_elbo']:+.2f}"),
        ]
        tuned = results["conv"].get("reference-malloc")
        if tuned:  # the plain loop started with vaekit's allocator settings in its environment
            rows.append(("conv model: the plain loop with vaekit's malloc settings, examples/s",
                         fmt(tuned["examples_per_second"]), fmt(ours["examples_per_second"]),
                         f"{ours['examples_per_second'] / tuned['examples_per_second']:.2f}x"))
    if "process" in results:
        for case in results["process"].values():
            sides = case["sides"]
            label = f"whole process, {case['arch']} {case['epochs']} epochs (s)"
            rows.append((label, fmt(sides["plain loop"]["seconds"], 1), fmt(sides["vaekit"]["seconds"], 1),
                         f"{case['speedup']:.2f}x (typicality fit {fmt(sides['vaekit']['detector_seconds'], 1)} s)"))
            rows.append((label.replace("(s)", "--no-detector (s)"), "", fmt(sides["vaekit --no-detector"]["seconds"], 1),
                         f"{case['speedup_no_detector']:.2f}x"))
    if "iwae" in results:
        iwae = results["iwae"]
        for key, label in (("k1000", "K=1000"), ("k5000", "K=5000")):
            r = iwae[key]
            rows.append((f"IWAE {label} images/s", fmt(r["reference_images_per_second"], 1),
                         fmt(r["vaekit_images_per_second"], 1), f"{r['speedup']:.2f}x"))
        full = iwae["k5000_full_test_set"]
        rows.append(("IWAE K=5000, 10,000 test images (s)", fmt(10_000 / iwae["k5000"]["reference_images_per_second"]),
                     fmt(full["seconds"]) + ("" if full["measured"] else " (est.)"),
                     "reference estimated from its rate"))
        for key, label in (("k1000", "K=1000"), ("k5000", "K=5000")):
            r = iwae[key]
            rows.append((f"log p(x) {label}, first {r['compared_images']} test images",
                         f"{r['reference_log_likelihood_on_shared']:.2f}",
                         f"{r['reference_log_likelihood_on_shared'] + r['difference_on_shared']:.2f}",
                         f"{r['difference_on_shared']:+.2f} +- {r['difference_standard_error']:.2f}"))
        if full["measured"]:
            rows.append(("log p(x) K=5000, all 10,000 test images", "",
                         f"{full['log_likelihood']:.2f} +- {full['standard_error']:.2f}", "nats per example"))
    if "use" in results:
        for what, label in (("sample", "sampling images/s"), ("encode", "encoding images/s")):
            r = results["use"][what]
            rows.append((label, fmt(r["reference_per_second"]), fmt(r["vaekit_per_second"]), f"{r['speedup']:.2f}x"))
    if "peaks" in results:
        p = results["peaks"]
        rows.append(("torch.mm peak GFLOP/s, float32 / bfloat16", "", f"{p['float32']:.1f} / {p['bfloat16']:.1f}",
                     f"{p['sizes']['float32']}^3 / {p['sizes']['bfloat16']}^3"))
        if "train" in results:
            # What 3x the reference's training rate would ask of the processor: its model arithmetic per second
            # against the float32 peak (every step also has elementwise work, random numbers and Adam).
            need = 3 * results["train"]["reference"]["examples_per_second"] * TRAIN_FLOP_PER_EXAMPLE / 1e9
            rows.append(("model GFLOP/s that 3x the reference's examples/s needs", "", f"{need:.1f}",
                         f"{need / p['float32']:.0%} of the float32 peak"))
        # The dense decoder's arithmetic for K=5000 on 10,000 images, at the float32 peak.
        floor = 5000 * 10_000 * DECODER_FLOP_PER_SAMPLE / (p["float32"] * 1e9)
        rows.append(("K=5000 on 10,000 images, dense decoder at the float32 peak (s)", "", f"{floor:.0f}",
                     "a lower bound without folding"))
    if rows:
        print(markdown_table(("", "reference", "vaekit", "vaekit vs reference"), rows))
    if "ablation" in results:
        ablation = results["ablation"]
        target_epoch = ablation.get("target_epoch", ablation["epochs"])
        print(f"\nablation: vaekit's trainer from the foundation's settings to the defaults, {ablation['epochs']} "
              f"epochs; target: the first rung's test -ELBO after epoch {target_epoch}, {ablation['target_neg_elbo']:.2f}")
        rungs, ladder_rows = ablation["rungs"], []
        for i, rung in enumerate(rungs):
            before = rungs[i - 1] if i else rung
            ladder_rows.append((
                rung["name"], fmt(rung["examples_per_second"]),
                f"{rung['examples_per_second'] / before['examples_per_second']:.2f}x",
                fmt(rung["epochs_to_target"], 1), fmt(rung["seconds_to_target"], 1),
                f"{before['seconds_to_target'] / rung['seconds_to_target']:.2f}x"
                if all(r["seconds_to_target"] not in (None, math.inf) for r in (before, rung)) else "",
                f"{rung['test_neg_elbo']:.2f}"))
        print(markdown_table(("", "examples/s", "ratio", "epochs to target", "s to target", "ratio",
                              "final test -ELBO"), ladder_rows))
    m = results.get("machine", {})
    print(f"\nmachine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')} ({m.get('capability')}), "
          f"{m.get('threads')} threads")
    if "train" in results:
        print(f"reference: {results['train']['reference']['settings']}; "
              f"vaekit: {results['train']['vaekit']['settings']}")
    print(f"settings: {json.dumps(results.get('settings', {}))}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (a few minutes)")
    parser.add_argument("--json", metavar="PATH", help="write the figures to PATH")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--repeats", type=int, help="alternating repeats per measurement (default 3; quick 1)")
    parser.add_argument("--no-iwae-full", action="store_true",
                        help="skip the K=5000 run over all 10,000 test images (its time is then estimated)")
    parser.add_argument("--workdir", metavar="DIR",
                        help="keep the trained vaekit model here, so that parts run separately share it")
    parser.add_argument("--budget-epochs", type=int, default=6, metavar="N",
                        help="also train vaekit with an N-epoch budget (its cosine schedule over N epochs) for the "
                             "time to quality; 0: only the default schedule (default 6; not in --quick)")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="print one table from earlier --json files")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind, spec = args.worker
        print(json.dumps(WORKERS[kind](json.loads(spec))))
        return 0
    if args.merge:
        results: dict[str, Any] = {}
        for path in args.merge:
            part = json.loads(Path(path).read_text())
            settings = {**results.get("settings", {}), **part.get("settings", {})}
            results.update(part)
            results["settings"] = settings
        print_table(results)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        return 0

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.target_epoch = 2 if args.quick else 10
    args.reference_epochs = 3 if args.quick else 12  # past the target epoch, so that every run's crossing is seen
    args.vaekit_epochs = 2 if args.quick else None  # None: vaekit's default
    args.budget_epochs = None if args.quick else args.budget_epochs
    args.ablation_repeats = 1 if args.quick else 2
    args.ablation_epochs = 2 if args.quick else 10
    args.iwae_examples = 100 if args.quick else 1000  # at K=1000; K=5000 uses a fifth
    args.iwae_reference_examples = 50 if args.quick else 500
    args.iwae_full = not args.quick and not args.no_iwae_full
    args.use_examples = 10_000 if args.quick else 60_000
    args.conv_epochs = 1 if args.quick else 3
    args.process_cases = [("mlp", 1), ("conv", 1)] if args.quick else [("mlp", 3), ("mlp", 10), ("conv", 3), ("conv", 10)]
    settings = {key: getattr(args, key) for key in (
        "quick", "repeats", "target_epoch", "reference_epochs", "vaekit_epochs", "budget_epochs", "ablation_repeats",
        "ablation_epochs", "iwae_examples", "iwae_reference_examples", "iwae_full", "use_examples", "conv_epochs",
        "process_cases")}
    results = {"machine": machine(), "settings": settings}
    started = time.perf_counter()
    with (contextlib.nullcontext(args.workdir) if args.workdir else tempfile.TemporaryDirectory(prefix="vaekit-speed-")
          ) as tmp:
        workdir = Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if "train" in parts:
            results.update(measure_training(args, workdir))
        if "ablation" in parts:
            results.update(measure_ablation(args))
        if "iwae" in parts:
            results.update(measure_iwae(args, ensure_model(workdir, args)))
        if "use" in parts:
            results.update(measure_use(args, ensure_model(workdir, args)))
        if "conv" in parts:
            results.update(measure_conv(args))
        if "process" in parts:
            results.update(measure_process(args))
        if "peaks" in parts:
            results["peaks"] = run_worker("peaks", {"size": 2048, "seconds": 1.0 if args.quick else 3.0})
    results["benchmark_seconds"] = time.perf_counter() - started
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
