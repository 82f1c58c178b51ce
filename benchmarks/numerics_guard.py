"""Cost of the NaN/inf guard per training step: a plain step against the same step with the guard.

The step is the trainer's: forward, negative ELBO, backward, fused Adam, on the 784-400-20 Bernoulli MLP
with batches of 128 random binary images (the Fashion-MNIST model's shapes; the values do not matter
for the time). Variants, timed in alternating blocks in one process and reported as medians:

- ``plain``: no guard (what training cost before the guard existed);
- ``guard``: the guard as training uses it: total gradient norm and the device-side record every step,
  the host reading the record every ``check_every`` steps (1 on the CPU, 32 on accelerators);
- ``guard+sync``: the guard read by the host after every step (a per-step host sync on accelerators);
- ``guard+clip``: the guard with gradient clipping (``--clip-grad-norm``).

    python benchmarks/numerics_guard.py --json benchmarks/results/numerics_guard.json
    python benchmarks/numerics_guard.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_step(variant: str, device: torch.device, batch_size: int, steps: int):
    from vaekit.config import ModelConfig, TrainConfig
    from vaekit.models.model import VAEModel
    from vaekit.training.numerics import NumericalGuard
    from vaekit.models.objectives import make_objective
    from vaekit.training.trainer import make_optimizer

    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_shape=(784,), latent_dim=20, hidden=(400,))).to(device)
    train_config = TrainConfig(device=str(device))
    optimizer = make_optimizer(model, train_config, device)
    objective = make_objective(train_config)
    noise = torch.Generator(device=device).manual_seed(0)
    x = torch.bernoulli(torch.full((steps, batch_size, 784), 0.3, device=device), generator=noise)
    guard = None
    if variant != "plain":
        guard = NumericalGuard(model.parameters(), device=device, capture=dict, restore=lambda s: None,
                               clip_grad_norm=1.0 if variant == "guard+clip" else None,
                               check_every=1 if variant == "guard+sync" else None)

    def run() -> None:
        for i in range(steps):
            loss, _, _ = objective(model, x[i], 1.0, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if guard is not None:
                guard.after_backward(loss, i + 1)
            optimizer.step()
            if guard is not None and guard.due(i + 1):
                assert guard.fault() is None
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def measure(device: torch.device, batch_size: int, steps: int, repeats: int) -> list[dict]:
    variants = ["plain", "guard", "guard+sync", "guard+clip"]
    runs = {v: make_step(v, device, batch_size, steps) for v in variants}
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(repeats):
        for variant in variants:
            started = time.perf_counter()
            runs[variant]()
            times[variant].append((time.perf_counter() - started) / steps)
    base = statistics.median(times["plain"])
    return [{"variant": v, "ms_per_step": 1000 * statistics.median(t), "relative_to_plain": statistics.median(t) / base,
             "samples_ms": [1000 * s for s in t]} for v, t in times.items()]


def isolated_costs(device: torch.device, batch_size: int, calls: int = 200) -> dict:
    """Minimum time of one whole step and of the guard's own work alone (after_backward + reading the record).

    Minima are far less sensitive than medians to other jobs on a shared machine.
    """
    from vaekit.training.numerics import NumericalGuard

    step = make_step("plain", device, batch_size, steps=1)
    step_times, guard_times = [], []
    from vaekit.config import ModelConfig
    from vaekit.models.model import VAEModel

    model = VAEModel(ModelConfig(input_shape=(784,), latent_dim=20, hidden=(400,))).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    guard = NumericalGuard(model.parameters(), device=device, capture=dict, restore=lambda s: None)
    loss = torch.tensor(1.0, device=device)
    for i in range(calls):
        started = time.perf_counter()
        step()
        step_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        guard.after_backward(loss, i + 1)
        guard.fault()
        guard_times.append(time.perf_counter() - started)
    return {"step_min_ms": 1000 * min(step_times), "guard_min_ms": 1000 * min(guard_times),
            "guard_fraction_of_step": min(guard_times) / min(step_times)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=15, help="timed blocks per variant, alternating")
    parser.add_argument("--quick", action="store_true", help="20 steps x 5 blocks")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 20, 5
    from common import machine

    device = torch.device(args.device)
    rows = measure(device, args.batch_size, args.steps, args.repeats)
    print(f"784-400-20 Bernoulli MLP, batch {args.batch_size}, {device}, median of {args.repeats} blocks of {args.steps} steps")
    print("| variant | ms/step | vs plain |\n| --- | --- | --- |")
    for row in rows:
        print(f"| {row['variant']} | {row['ms_per_step']:.3f} | {row['relative_to_plain']:.3f} |")
    isolated = isolated_costs(device, args.batch_size)
    print(f"minimum over 200 calls: one step {isolated['step_min_ms']:.3f} ms, the guard's work alone "
          f"{isolated['guard_min_ms']:.3f} ms ({100 * isolated['guard_fraction_of_step']:.1f}% of a step)")
    if args.json:
        from vaekit.fileio import atomic_write_json

        info = machine()
        if device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(device)
        atomic_write_json(args.json, {"rows": rows, "isolated": isolated, "settings": vars(args), "machine": info,
                                      "command": "python benchmarks/numerics_guard.py " + " ".join(sys.argv[1:])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
