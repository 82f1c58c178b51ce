"""Speed of the importance-weighted log-likelihood under the discretized-logistic likelihood: the
distribution's ``log_prob`` (the path before ``decoder_kernels.discretized_logistic_log_prob``) against
the fused formula, eager and compiled, timed side by side in one process.

    python benchmarks/eval_speed_dlogistic.py                    # 32 test images, K=5000, 1 thread, 5 rounds
    python benchmarks/eval_speed_dlogistic.py --examples 8 --repeats 3 --train-epochs 0   # random weights

The model is the 784-200-200-50 MLP with the discretized logistic on 8-bit Fashion-MNIST, trained for
``--train-epochs`` (default 1) into runs/eval-speed-dlogistic (reused when it is there), or with random
weights and random 8-bit images when Fashion-MNIST is not installed or ``--train-epochs 0``. The paths
take turns (in a rotating order) for ``--repeats`` rounds over the same images and seed; the medians
give the speed-ups. The compiled path's first call (the compilation) is timed apart. Every path must
give the same estimates up to float32 rounding; the largest difference is reported. Prints a table
and writes JSON (``--json``, default benchmarks/results/eval_speed_dlogistic.json).

The compilation's time depends on inductor's on-disk cache; ``TORCHINDUCTOR_CACHE_DIR=$(mktemp -d)``
times a cold one (and keeps compiled code from older versions of the kernel out of the way: the cache
does not key on the sizes that decided how the loop was split over threads).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import vaekit  # noqa: E402
from vaekit.training import checkpoint as ckpt  # noqa: E402
from vaekit.evaluation import likelihood as evaluate  # noqa: E402
from vaekit.api import make_run_config  # noqa: E402
from vaekit.config import ModelConfig  # noqa: E402
from vaekit.data.sources import FASHION_MNIST_DIR  # noqa: E402
from vaekit.fileio import atomic_write_json  # noqa: E402
from vaekit.models.model import VAEModel  # noqa: E402
from vaekit.training.trainer import train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@contextlib.contextmanager
def distribution_path():
    """evaluate's log p(x|z) as it was: the likelihood's distribution, ``model.decode(z).log_prob(x)``."""
    fused = evaluate._decoder_log_prob
    evaluate._decoder_log_prob = lambda model, compile: (lambda z, x: model.decode(z).log_prob(x))
    try:
        yield
    finally:
        evaluate._decoder_log_prob = fused


def build(args) -> tuple[VAEModel, torch.Tensor, str]:
    """The model, the test images and a description of both."""
    fashion = any(Path(os.environ.get("VAEKIT_FASHION_MNIST_DIR", FASHION_MNIST_DIR)).glob("t10k-images*"))
    if args.run is not None or (fashion and args.train_epochs > 0):
        run = args.run or Path("runs") / "eval-speed-dlogistic"
        if args.run is None and not (run / ckpt.MODEL_FILE).is_file():
            # In a process of its own: training left the allocator in a state that slowed the eager paths for
            # the rest of the process (the distribution's by a third, the fused eager one by half; four times
            # the system time, in page faults).
            subprocess.run([sys.executable, __file__, "--train-into", str(run), "--train-epochs",
                            str(args.train_epochs)], check=True)
        model, config = ckpt.load_model(run)
        x = vaekit.load_dataset(config.data.source, like=config.data).split("test")[:args.examples]
        return model.eval(), x, f"{run} ({config.data.source} test images)"
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_shape=(1, 28, 28), latent_dim=50, hidden=(200, 200),
                                 likelihood="discretized-logistic"))
    x = torch.randint(0, 256, (args.examples, 1, 28, 28), generator=torch.Generator().manual_seed(1)) / 255
    return model.eval(), x, "random weights, random 8-bit images"


def train_into(run: Path, epochs: int) -> None:
    data = vaekit.load_dataset("fashion-mnist")
    config = make_run_config(data, latent_dim=50, hidden=(200, 200), arch="mlp", likelihood="discretized-logistic",
                             epochs=epochs, seed=0, device="cpu")
    train(config, data, run_dir=run, progress=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a trained discretized-logistic run to evaluate instead")
    parser.add_argument("--train-epochs", type=int, default=1, help="epochs for the model trained here (0: random)")
    parser.add_argument("-k", "--importance-samples", type=int, default=5000)
    parser.add_argument("--examples", type=int, default=32, help="test images per timing (default 32)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of all paths (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", type=Path, default=RESULTS / "eval_speed_dlogistic.json")
    parser.add_argument("--train-into", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_into is not None:
        train_into(args.train_into, args.train_epochs)
        return 0
    torch.set_num_threads(args.threads)
    model, x, source = build(args)
    k = args.importance_samples

    def estimate(compile: bool) -> torch.Tensor:
        return evaluate.log_likelihood(model, x, num_importance_samples=k, seed=0, compile=compile).double()

    def distribution_estimate() -> torch.Tensor:
        with distribution_path():
            return estimate(False)

    paths = {"distribution": distribution_estimate,
             "fused-eager": lambda: estimate(False),
             "fused-compiled": lambda: estimate(True)}
    started = time.perf_counter()
    evaluate.log_likelihood(model, x[:1], num_importance_samples=k, seed=0, compile=True)
    first_compiled_call = time.perf_counter() - started

    seconds: dict[str, list[float]] = {name: [] for name in paths}
    estimates: dict[str, torch.Tensor] = {}
    names = list(paths)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            started = time.perf_counter()
            estimates[name] = paths[name]()
            seconds[name].append(time.perf_counter() - started)
            print(f"  round {repeat + 1}: {name} {seconds[name][-1]:.2f} s", file=sys.stderr, flush=True)

    medians = {name: statistics.median(values) for name, values in seconds.items()}
    reference = estimates["distribution"]
    rows = {name: {"seconds": seconds[name], "median_seconds": medians[name],
                   "images_per_second": len(x) / medians[name],
                   "speedup_over_distribution": medians["distribution"] / medians[name],
                   "max_abs_difference_nats": float((estimates[name] - reference).abs().max())}
            for name in paths}
    result = {"machine": common.machine(), "model": "784-200-200-50 MLP, discretized logistic (256 levels)",
              "source": source, "importance_samples": k, "examples": len(x), "repeats": args.repeats,
              "first_compiled_call_seconds": first_compiled_call, "nll": float(-reference.mean()),
              "paths": rows,
              "speedup": medians["distribution"] / medians["fused-compiled"]}
    print(f"K={k}, {len(x)} images ({source}), {torch.get_num_threads()} thread(s), "
          f"median of {args.repeats} alternating rounds; -log p(x) = {result['nll']:.2f} nats")
    print("| path | median s | images/s | speed-up | max |difference| (nats) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, row in rows.items():
        print(f"| {name} | {row['median_seconds']:.2f} | {row['images_per_second']:.2f} | "
              f"{row['speedup_over_distribution']:.2f}x | {row['max_abs_difference_nats']:.2g} |")
    print(f"compiled path's first call (compilation and one image): {first_compiled_call:.1f} s")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
