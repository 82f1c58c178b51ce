"""Speed and accuracy of the importance-weighted log-likelihood: vaekit's path against a plain float32 reference.

The reference is the obvious computation: ``model.log_importance_weights`` (torch.distributions,
eager) on chunks of samples, with a running log-sum-exp. vaekit's ``evaluate.log_likelihood`` must give
the same estimate (within its standard error; it is the same arithmetic, so far closer) in less time.

    python benchmarks/eval_speed.py --run runs/fm                  # K=5000 on the 10,000 test images
    python benchmarks/eval_speed.py --quick                        # trains a small model, a few hundred images

Without ``--run`` it trains the 784-400-20 Bernoulli MLP on dynamically binarized Fashion-MNIST
(10 epochs, or 1 with --quick) into runs/eval-speed first. The reference is timed on a subset
(``--reference-examples``) and scaled to the full set; prints a table and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

import vaekit
from vaekit.training import checkpoint as ckpt
from vaekit.api import make_run_config
from vaekit.evaluation.likelihood import log_likelihood
from vaekit.fileio import atomic_write_json
from vaekit.training.trainer import train


@torch.no_grad()
def reference_log_likelihood(model, x: torch.Tensor, k: int, seed: int = 0, chunk: int = 1000) -> torch.Tensor:
    """The plain float32 estimate: log_importance_weights on chunks of samples, running log-sum-exp."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(x), 8):
        batch = x[start:start + 8]
        running = torch.full((len(batch),), -math.inf, dtype=torch.float64)
        for done in range(0, k, chunk):
            log_w = model.log_importance_weights(batch, min(chunk, k - done), generator=generator).double()
            running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
        out.append(running - math.log(k))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a trained run (default: train the 784-400-20 model first)")
    parser.add_argument("-k", "--importance-samples", type=int, default=5000)
    parser.add_argument("--examples", type=int, default=10000, help="test images for vaekit's path (default 10000)")
    parser.add_argument("--reference-examples", type=int, default=300, help="test images for the reference (default 300)")
    parser.add_argument("--quick", action="store_true", help="1 training epoch, 300 images, 100 for the reference")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.examples, args.reference_examples = min(args.examples, 300), min(args.reference_examples, 100)
    run = args.run
    if run is None:
        run = Path("runs") / ("eval-speed-quick" if args.quick else "eval-speed")
        if not (run / ckpt.MODEL_FILE).is_file():
            data = vaekit.load_dataset("fashion-mnist", binarize="dynamic")
            config = make_run_config(data, latent_dim=20, hidden=(400,), arch="mlp", epochs=1 if args.quick else 10,
                                     device="cpu")
            train(config, data, run_dir=run, progress=False)
    model, config = ckpt.load_model(run)
    data = vaekit.load_dataset(config.data.source, like=config.data)
    x = data.split("test")
    k = args.importance_samples

    started = time.perf_counter()
    fast = log_likelihood(model, x[:args.examples], num_importance_samples=k, seed=0).double()
    fast_seconds = time.perf_counter() - started
    subset = x[:args.reference_examples]
    started = time.perf_counter()
    reference = reference_log_likelihood(model, subset, k, seed=1)
    reference_seconds = time.perf_counter() - started

    n_ref = len(subset)
    fast_subset = fast[:n_ref]
    stderr = float(fast.std() / math.sqrt(len(fast)))
    difference = fast_subset - reference  # different draws: equal in expectation
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "run": str(run), "importance_samples": k, "examples": len(fast),
        "vaekit_seconds": fast_seconds, "vaekit_examples_per_second": len(fast) / fast_seconds,
        "nll": float(-fast.mean()), "nll_stderr": stderr,
        "reference_examples": n_ref, "reference_seconds": reference_seconds,
        "reference_seconds_scaled": reference_seconds * len(fast) / n_ref,
        "reference_nll_on_subset": float(-reference.mean()), "vaekit_nll_on_subset": float(-fast_subset.mean()),
        "subset_difference": float(-difference.mean()),
        "subset_difference_stderr": float(difference.std() / math.sqrt(n_ref)),
    }
    result["speedup"] = result["reference_seconds_scaled"] / fast_seconds
    print(f"K={k}, {len(fast):,} test images, {torch.get_num_threads()} threads")
    print(f"| path | seconds | images/s | -log p(x) |")
    print(f"| --- | ---: | ---: | ---: |")
    print(f"| vaekit (all {len(fast):,}) | {fast_seconds:.1f} | {result['vaekit_examples_per_second']:.1f} | "
          f"{result['nll']:.3f} ± {stderr:.3f} |")
    print(f"| float32 reference ({n_ref}, scaled to {len(fast):,}) | {result['reference_seconds_scaled']:.1f} | "
          f"{n_ref / reference_seconds:.1f} | {result['reference_nll_on_subset']:.3f} (vaekit on the same "
          f"{n_ref}: {result['vaekit_nll_on_subset']:.3f}) |")
    print(f"speed-up {result['speedup']:.2f}x; vaekit - reference on the subset: {result['subset_difference']:+.3f} "
          f"± {result['subset_difference_stderr']:.3f} nats (independent draws)")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
