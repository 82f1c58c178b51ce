"""The GPU check: every CUDA path of vaekit against the CPU, and its speed against a plain PyTorch loop.

No GPU has been lent to this project's sessions yet, so this script is written to run unattended on one
(under 8 minutes on one GPU), through the ``device`` tool when a session's ``status`` says one is lent:

    PYTHONPATH=src python3 benchmarks/gpu_check.py --data-dir gpu-data --json $OUT/gpu_check.json
    python benchmarks/gpu_check.py --device cpu --quick          # the same checks CPU against CPU (tests)

``gpu-data/`` (git-ignored) holds Fashion-MNIST's four IDX files, copied from the Debian package
``dataset-fashion-mnist`` by ``make gpu-data``, since a lent machine may lack the package. Without them the
script says so and uses digits upsampled to 28x28 for the parity checks and skips the speed rows.

Checks (each one's tolerance is printed with it; a failing check does not stop the others):

    parity:<model>      the same weights and the same standard-normal draws (made on the CPU) on the CPU and
                        the device: posterior means and log-variances, log p(x|z), log p(z), log q(z|x) of 8
                        draws per example and every gradient of the importance-weighted bound (no device
                        noise, so the two must agree to float32 rounding)
                        for the MLP and conv networks, Bernoulli, discretized-logistic and learned-variance
                        Gaussian likelihoods, and a three-layer top-down hierarchy
    train:<precision>   vaekit.VAE(device=...) trains fp32, bf16 (autocast) and fp16 (autocast with
                        GradScaler): finite, and the bf16/fp16 test -ELBO within 2% of fp32's
    iwae                importance-weighted -log p(x) (K = 1000) on the device and on the CPU: the noise
                        differs (per-device generators), so the means must agree within 4 standard errors
                        of the per-example differences
    nccl                ``vaekit train --nproc 1`` under torchrun with NCCL initialises and trains
                        (one GPU: two NCCL ranks cannot share it)
    serve               the explorer's /api/sample answered by a model on the device (if fastapi is there)
    speed:train         examples/s of ``vaekit.VAE`` (MLP 784-400-20, dynamically binarized Fashion-MNIST,
                        batch 128, lr 1e-3, 3 epochs) against pytorch/examples' VAE loop on the same device,
                        alternated twice, medians; and the conv default
    speed:iwae          K = 5000 -log p(x) of the 10,000 test images: vaekit against the obvious
                        one-image-at-a-time computation (timed on 200 images and scaled)
    speed:conv:*        examples/s and test -ELBO after 2 epochs of vaekit's default conv network against the
                        plain loop over its modules, each in fp32 and bf16 autocast; the same for the residual-conv
                        ladder of benchmarks/likelihood.py (vaekit only: its top-down inference is the library's)
    speed:ladder-iwae   K = 5000 -log p(x) images/s of that ladder (200 images), the cost of its likelihood row
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS: list[dict] = []


def record(name: str, ok: bool | None, detail: str, **numbers) -> None:
    ok = None if ok is None else bool(ok)  # numpy's bool is not JSON
    numbers = {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in numbers.items()}
    RESULTS.append({"check": name, "ok": ok, "detail": detail, **numbers})
    mark = {True: "ok  ", False: "FAIL", None: "skip"}[ok]
    print(f"[{mark}] {name}: {detail}", flush=True)


def guarded(name: str, function, *args) -> None:
    started = time.perf_counter()
    try:
        function(*args)
    except Exception as err:  # one broken path must not hide the others
        record(name, False, f"{type(err).__name__}: {err}", traceback=traceback.format_exc()[-3000:])
    RESULTS[-1].setdefault("seconds", round(time.perf_counter() - started, 2))


# --- data ------------------------------------------------------------------------------------------

def load_images(data_dir: str | None, quick: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """Fashion-MNIST (train, test) as float32 (n, 1, 28, 28) in [0, 1], or digits upsampled when it is absent."""
    import vaekit

    try:
        data = vaekit.load_dataset("fashion-mnist", data_dir=data_dir) if data_dir else vaekit.load_dataset("fashion-mnist")
        train, test, name = data.x_train.numpy(), data.split("test").numpy(), "fashion-mnist"
    except vaekit.VaekitError:
        data = vaekit.load_dataset("digits")
        up = lambda x: np.kron(x.numpy(), np.ones((1, 1, 3, 3), np.float32))[:, :, :28, :28]  # noqa: E731
        train, test, name = up(data.x_train), up(data.split("test")), "digits upsampled to 28x28"
    if quick:
        train, test = train[:2000], test[:500]
    return train.astype(np.float32), test.astype(np.float32), name


# --- parity ----------------------------------------------------------------------------------------

PARITY_MODELS = {
    "mlp-bernoulli": dict(arch="mlp", hidden=(400,), likelihood="bernoulli"),
    "conv-bernoulli": dict(arch="conv", hidden=(32, 64), likelihood="bernoulli"),
    "mlp-discretized-logistic": dict(arch="mlp", hidden=(400,), likelihood="discretized-logistic"),
    "conv-gaussian-learned": dict(arch="conv", hidden=(32, 64), likelihood="gaussian-learned"),
    "mlp-ladder-3": dict(arch="mlp", hidden=(256,), likelihood="bernoulli", upper_latent_dims=(10, 5),
                         inference="top-down"),
}


def _parity_terms(model, x: torch.Tensor, noise: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """log p(x|z), log p(z), log q(z|x) for given standard-normal draws (no device RNG), and the gradients of
    the importance-weighted bound's negative."""
    model.zero_grad(set_to_none=True)
    mu, logvar = model.posterior_params(x)
    z, log_pz, log_qz = model.latent_log_densities(x, len(noise[0]), noise=[n.to(x.device) for n in noise])
    log_px_z = model.decode(z).log_prob(x)
    log_w = log_px_z + log_pz - log_qz
    (-(torch.logsumexp(log_w, 0) - math.log(len(log_w))).sum()).backward()
    out = {"mu": mu, "logvar": logvar, "log_px_z": log_px_z, "log_pz": log_pz, "log_qz": log_qz}
    out.update({f"grad:{n}": p.grad for n, p in model.named_parameters() if p.grad is not None})
    return {k: v.detach().double().cpu() for k, v in out.items()}


def check_parity(name: str, options: dict, x_unit: np.ndarray, device: torch.device) -> None:
    from vaekit.config import ModelConfig
    from vaekit.models.model import VAEModel

    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_shape=(1, 28, 28), latent_dim=20, **options))
    x = torch.as_tensor(x_unit[:256])
    if options["likelihood"] == "bernoulli":
        x = (x > 0.5).float()
    elif options["likelihood"] == "discretized-logistic":
        x = torch.round(x * 255) / 255
    generator = torch.Generator().manual_seed(0)
    noise = [torch.randn(8, len(x), d, generator=generator) for d in model.latent_dims]  # 8 draws per example
    cpu = _parity_terms(model, x, noise)
    dev = _parity_terms(model.to(device), x.to(device), noise)
    worst, where = 0.0, ""
    for key, value in cpu.items():
        scale = value.abs().max().item() + 1e-6
        error = (dev[key] - value).abs().max().item() / scale  # relative to the largest entry
        if error > worst:
            worst, where = error, key
    tolerance = 2e-3  # float32 on another device: cuBLAS/cuDNN order their sums differently, TF32 is off
    record(f"parity:{name}", worst <= tolerance, f"largest difference {worst:.2e} of the largest value "
           f"({where}); tolerance {tolerance:g}", worst_relative_difference=worst)


# --- training in three precisions ------------------------------------------------------------------

def check_training(train: np.ndarray, test: np.ndarray, device: torch.device, epochs: int) -> None:
    import vaekit
    from vaekit.evaluation.likelihood import elbo

    x_test = torch.as_tensor((test > 0.5).astype(np.float32))
    results = {}
    for precision in ("fp32", "bf16", "fp16"):
        name = f"train:{precision}"
        if device.type == "cpu" and precision == "fp16":
            record(name, None, "fp16 autocast is a CUDA path")
            continue
        try:
            started = time.perf_counter()
            vae = vaekit.VAE(latent_dim=20, hidden=(400,), arch="mlp", binarize="dynamic", epochs=epochs,
                             batch_size=128, lr=1e-3, seed=0, device=str(device), precision=precision).fit(train)
            seconds = time.perf_counter() - started
            value = elbo(vae.model_, x_test.to(device), seed=0).neg_elbo.mean().item()
            results[precision] = value
            ok = math.isfinite(value)
            detail = f"test -ELBO {value:.2f} nats after {epochs} epochs, {seconds:.1f} s"
            if precision != "fp32" and "fp32" in results:
                gap = abs(value - results["fp32"]) / abs(results["fp32"])
                ok = ok and gap <= 0.02
                detail += f"; {100 * gap:.2f}% from fp32 (tolerance 2%)"
            record(name, ok, detail, test_neg_elbo=value, seconds=round(seconds, 2))
        except Exception as err:
            record(name, False, f"{type(err).__name__}: {err}", traceback=traceback.format_exc()[-3000:])


# --- importance sampling on the device against the CPU ---------------------------------------------

def check_iwae(train: np.ndarray, test: np.ndarray, device: torch.device, quick: bool) -> None:
    import vaekit
    from vaekit.evaluation.likelihood import log_likelihood

    vae = vaekit.VAE(latent_dim=20, hidden=(400,), arch="mlp", binarize="dynamic", epochs=1, batch_size=128,
                     seed=0, device="cpu").fit(train[:10000])
    x = torch.as_tensor((test[: 200 if quick else 1000] > 0.5).astype(np.float32))
    k = 200 if quick else 1000
    cpu = log_likelihood(vae.model_, x, num_importance_samples=k, seed=0).double()
    model = vae.model_.to(device)
    dev = log_likelihood(model, x.to(device), num_importance_samples=k, seed=1).double()
    vae.model_.cpu()
    diff = (dev - cpu).numpy()
    stderr = diff.std(ddof=1) / math.sqrt(len(diff))
    ok = abs(diff.mean()) <= 4 * stderr + 1e-3
    record("iwae", ok, f"-log p(x) CPU {-cpu.mean():.3f}, device {-dev.mean():.3f} nats (K = {k}, {len(x)} images); "
           f"difference {diff.mean():+.3f} +- {stderr:.3f}, tolerance 4 standard errors", cpu_nll=-cpu.mean().item(),
           device_nll=-dev.mean().item())


# --- NCCL and serving -------------------------------------------------------------------------------

def check_nccl(device: torch.device) -> None:
    if device.type != "cuda":
        record("nccl", None, "NCCL needs CUDA")
        return
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-port", "29533",
                   "-m", "vaekit", "train", "digits", "--out", str(Path(tmp) / "run"), "--epochs", "1",
                   "--device", "cuda", "--no-progress", "--latent-dim", "4", "--hidden", "64"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ})
        ok = result.returncode == 0 and (Path(tmp) / "run" / "model.safetensors").is_file()
        record("nccl", ok, f"torchrun --nproc-per-node 1 --device cuda: exit {result.returncode}"
               + ("" if ok else f"; {result.stderr[-800:]}"))


def check_serve(train: np.ndarray, device: torch.device) -> None:
    try:
        from fastapi.testclient import TestClient
    except ImportError:
        record("serve", None, "fastapi is not installed here (pip install '.[serve]')")
        return
    import vaekit
    from vaekit.serve.app import create_app
    from vaekit.serve.explorer import Explorer

    vae = vaekit.VAE(latent_dim=8, hidden=(64,), arch="mlp", epochs=1, seed=0, device=str(device)).fit(train[:2000])
    with tempfile.TemporaryDirectory() as tmp:
        vae.save(tmp)
        explorer = Explorer.from_run(tmp, vae=vaekit.load(tmp, device=str(device)))
        client = TestClient(create_app(explorer), base_url="http://127.0.0.1")
        answer = client.post("/api/sample", json={"n": 4, "seed": 0})
        record("serve", answer.status_code == 200, f"/api/sample on {device}: HTTP {answer.status_code}")


# --- speed ------------------------------------------------------------------------------------------

def _plain_epochs(model: torch.nn.Module, loss_of, train: torch.Tensor, device: torch.device, epochs: int,
                  dtype: torch.dtype | None = None) -> float:
    """Examples/s of the plain loop a user writes: the images on the device, a permutation per epoch, batches of
    128 binarized afresh, Adam 1e-3, ``loss_of(model, x)`` under autocast to ``dtype`` where one is given."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = train.to(device)
    _sync(device)
    started = time.perf_counter()
    for _ in range(epochs):
        for batch in torch.randperm(len(data), device=device).split(128):
            x = torch.bernoulli(data[batch])
            optimizer.zero_grad()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_of(model, x)
            loss.backward()
            optimizer.step()
    _sync(device)
    return len(data) * epochs / (time.perf_counter() - started)


def _reference_epochs(train: torch.Tensor, device: torch.device, epochs: int) -> float:
    from speed import ReferenceVAE, reference_loss

    def loss_of(model, x):
        recon, mu, logvar = model(x)
        return reference_loss(recon, x, mu, logvar)

    torch.manual_seed(0)
    return _plain_epochs(ReferenceVAE().to(device), loss_of, train, device, epochs)


def _vaekit_epochs(train: np.ndarray, device: torch.device, epochs: int, arch: str) -> float:
    import vaekit

    hidden = (400,) if arch == "mlp" else (32, 64)
    vae = vaekit.VAE(latent_dim=20, hidden=hidden, arch=arch, binarize="dynamic", epochs=epochs, batch_size=128,
                     lr=1e-3, seed=0, device=str(device)).fit(train)
    return statistics.median(r["examples_per_second"] for r in vae.history_)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def check_speed(train: np.ndarray, test: np.ndarray, device: torch.device, quick: bool) -> None:
    epochs = 1 if quick else 3
    flat = torch.as_tensor(train.reshape(len(train), -1))
    rates = {"vaekit mlp": [], "reference loop": []}
    for _ in range(1 if quick else 2):  # alternated
        rates["vaekit mlp"].append(_vaekit_epochs(train, device, epochs, "mlp"))
        rates["reference loop"].append(_reference_epochs(flat, device, epochs))
    conv = _vaekit_epochs(train, device, epochs, "conv")
    mlp, ref = statistics.median(rates["vaekit mlp"]), statistics.median(rates["reference loop"])
    record("speed:train", True, f"examples/s: vaekit MLP {mlp:,.0f}, the plain loop {ref:,.0f} ({mlp / ref:.2f}x); "
           f"vaekit conv {conv:,.0f}", vaekit_mlp=mlp, reference=ref, vaekit_conv=conv, epochs=epochs)
    iwae_speed(train, test, device, quick)


def iwae_speed(train: np.ndarray, test: np.ndarray, device: torch.device, quick: bool) -> None:
    import vaekit
    from speed import reference_from_vaekit
    from vaekit.evaluation.likelihood import log_likelihood

    vae = vaekit.VAE(latent_dim=20, hidden=(400,), arch="mlp", binarize="dynamic", epochs=1, batch_size=128,
                     seed=0, device=str(device)).fit(train[:10000])
    x = torch.as_tensor((test > 0.5).astype(np.float32)).to(device)
    k = 500 if quick else 5000
    log_likelihood(vae.model_, x[:64], num_importance_samples=k, seed=0)  # warm-up (kernels, compile)
    _sync(device)
    started = time.perf_counter()
    nll = -log_likelihood(vae.model_, x, num_importance_samples=k, seed=0).mean().item()
    _sync(device)
    seconds = time.perf_counter() - started
    reference = reference_from_vaekit(vae.model_.cpu()).to(device)
    probe = x[:50 if quick else 200].reshape(-1, 784)
    started = time.perf_counter()
    with torch.no_grad():
        for image in probe:
            mu, logvar = reference.encode(image[None])
            std = torch.exp(0.5 * logvar)
            z = mu + std * torch.randn(k, mu.shape[-1], device=device)
            probs = reference.decode(z)
            log_w = (torch.distributions.Bernoulli(probs=probs).log_prob(image).sum(-1)
                     + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
                     - torch.distributions.Normal(mu, std).log_prob(z).sum(-1))
            torch.logsumexp(log_w, 0)
    _sync(device)
    reference_seconds = (time.perf_counter() - started) * len(x) / len(probe)
    record("speed:iwae", True, f"K = {k}, {len(x):,} images: vaekit {seconds:.1f} s (-log p(x) {nll:.2f}), "
           f"the obvious computation about {reference_seconds:.1f} s ({reference_seconds / seconds:.1f}x)",
           vaekit_seconds=seconds, reference_seconds=reference_seconds, k=k)


def _plain_conv_epochs(train: torch.Tensor, device: torch.device, epochs: int, precision: str) -> tuple[float, object]:
    """The plain loop over the modules of vaekit's default conv model (benchmarks/speed.py's ``conv_model``):
    sigmoid + binary cross-entropy, the float32 loss of the autocast forward in bf16."""
    import torch.nn.functional as F
    from speed import conv_model

    def loss_of(model, x):
        h = model.encoder(x)
        mu, logvar = model.mean_head(h), model.logvar_head(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        logits = model.decoder(z).reshape_as(x)
        return (F.binary_cross_entropy_with_logits(logits.float(), x, reduction="sum")
                - 0.5 * torch.sum(1 + logvar.float() - mu.float().pow(2) - logvar.float().exp())) / len(x)

    model = conv_model(0).to(device)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    return _plain_epochs(model, loss_of, train, device, epochs, dtype), model.eval()


def check_conv_speed(train: np.ndarray, test: np.ndarray, device: torch.device, quick: bool, deadline: float) -> None:
    """Examples/s and test -ELBO after the same epochs: vaekit's conv default and residual-conv ladder in fp32 and
    bf16, against the plain loop over the conv model's modules in fp32 and bf16. On a GPU the library keeps its own
    settings (TF32 as PyTorch leaves it), so the switches the parity checks turned off are turned back on."""
    import vaekit
    from likelihood import LADDER_RESCONV
    from speed import CONV
    from vaekit.evaluation.likelihood import elbo

    epochs = 1 if quick else 2
    x_test = torch.as_tensor((test > 0.5).astype(np.float32)).to(device)
    flat = torch.as_tensor(train)
    for name, net in (("conv", CONV), ("ladder", LADDER_RESCONV)):
        for precision in ("fp32", "bf16"):
            for side in (("plain loop", "vaekit") if name == "conv" else ("vaekit",)):
                label = f"speed:{name}:{precision}:{side.replace(' ', '-')}"
                if time.perf_counter() > deadline:
                    record(label, None, "skipped: the script's --budget-seconds ran out")
                    continue
                try:
                    if side == "vaekit":
                        vae = vaekit.VAE(**net, binarize="dynamic", epochs=epochs, seed=0, device=str(device),
                                         precision=precision).fit(train)
                        rate = statistics.median(r["examples_per_second"] for r in vae.history_)
                        model, settings = vae.model_, f"vaekit defaults (batch {vae.config_.train.batch_size})"
                    else:
                        rate, model = _plain_conv_epochs(flat, device, epochs, precision)
                        settings = "batch 128, Adam 1e-3"
                    value = elbo(model, x_test, seed=0).neg_elbo.mean().item()
                    record(label, math.isfinite(value), f"{rate:,.0f} examples/s, test -ELBO {value:.2f} after "
                           f"{epochs} epochs ({settings})", examples_per_second=rate, test_neg_elbo=value,
                           epochs=epochs)
                except Exception as err:
                    record(label, False, f"{type(err).__name__}: {err}", traceback=traceback.format_exc()[-3000:])
    label = "speed:ladder-iwae"
    if time.perf_counter() > deadline:
        record(label, None, "skipped: the script's --budget-seconds ran out")
        return
    from vaekit.config import ModelConfig
    from vaekit.evaluation.likelihood import log_likelihood
    from vaekit.models.model import VAEModel

    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_shape=(1, 28, 28), likelihood="bernoulli", **LADDER_RESCONV)).to(device).eval()
    k, n = (200, 20) if quick else (5000, 200)
    log_likelihood(model, x_test[:8], num_importance_samples=k, seed=0)  # warm-up
    _sync(device)
    started = time.perf_counter()
    log_likelihood(model, x_test[:n], num_importance_samples=k, seed=0)
    _sync(device)
    rate = n / (time.perf_counter() - started)
    record(label, True, f"K = {k}: {rate:,.1f} images/s, so the 10,000 test images take about {10000 / rate:,.0f} s",
           images_per_second=rate, k=k)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    parser.add_argument("--data-dir", help="a folder with Fashion-MNIST's four IDX files (default: the Debian package)")
    parser.add_argument("--quick", action="store_true", help="small data, few epochs: checks the script in a minute")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--budget-seconds", type=float, default=420.0,
                        help="start no conv/ladder speed row after this many seconds (default 420)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available here; run with --device cpu for a dry run", file=sys.stderr)
        return 2
    tf32_matmul, tf32_cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # parity in float32; the speed rows keep the library's settings
    torch.backends.cudnn.allow_tf32 = False
    train, test, data_name = load_images(args.data_dir, args.quick)
    environment = {"torch": torch.__version__, "python": sys.version.split()[0], "device": str(device),
                   "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                   "data": data_name, "quick": args.quick}
    print(json.dumps(environment), flush=True)
    for name, options in PARITY_MODELS.items():
        guarded(f"parity:{name}", check_parity, name, options, test, device)
    check_training(train, test, device, 1 if args.quick else 2)
    guarded("iwae", check_iwae, train, test, device, args.quick)
    guarded("nccl", check_nccl, device)
    guarded("serve", check_serve, train, device)
    if not args.skip_speed:
        if data_name != "fashion-mnist":
            record("speed", None, "Fashion-MNIST is not here (make gpu-data); the speed rows need it")
        else:
            guarded("speed:train", check_speed, train, test, device, args.quick)
            torch.backends.cuda.matmul.allow_tf32 = tf32_matmul  # the library's settings for its own speed
            torch.backends.cudnn.allow_tf32 = tf32_cudnn
            guarded("speed:conv", check_conv_speed, train, test, device, args.quick, started + args.budget_seconds)
    failed = [r["check"] for r in RESULTS if r["ok"] is False]
    summary = {"environment": environment, "results": RESULTS, "failed": failed,
               "seconds": round(time.perf_counter() - started, 1)}
    print(f"{len(RESULTS)} checks, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
          f"{summary['seconds']} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
