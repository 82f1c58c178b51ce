"""Test log-likelihood as papers report it: -log p(x) by importance sampling with K = 5000, in nats per example.

    python examples/likelihood_evaluation.py                       # trains on dynamically binarized digits
    python examples/likelihood_evaluation.py --run runs/fm         # evaluates a run you trained
    python examples/likelihood_evaluation.py --quick               # a few epochs and K = 100: seconds

The protocol of Burda et al. (2016), which the VAE literature reports: train on dynamically binarized data
(a fresh Bernoulli draw of the intensities at every step), evaluate on one fixed, seeded binarization of the
test set, and estimate log p(x) = log E_q[p(x, z) / q(z|x)] with K importance samples per example. The table
gives the estimate with its standard error over the test examples, the negative ELBO (the K = 1 bound) with its
reconstruction and KL parts, bits per dimension, and the active units (Cov_x E_q[z|x] > 0.01) that show
posterior collapse. The estimate is seeded: the same command gives the same numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import vaekit
from vaekit import evaluation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="evaluate this run directory instead of training one")
    parser.add_argument("--data", default="digits", help="data to train on (default digits)")
    parser.add_argument("--out", type=Path, default=Path("runs/likelihood-example"), help="run directory to train into")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("-k", "--importance-samples", type=int, default=5000)
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--quick", action="store_true", help="3 epochs and K = 100: checks the pipeline in seconds")
    args = parser.parse_args(argv)
    k = 100 if args.quick else args.importance_samples

    run = args.run or (args.out if (args.out / "model.safetensors").is_file() else None)
    if run is not None:  # a trained run: its own data, prepared as it was for training
        vae = vaekit.load(run)
        data = vaekit.load_dataset(vae.config_.data.source, like=vae.config_.data)
    else:
        data = vaekit.load_dataset(args.data, binarize="dynamic")
        vae = vaekit.VAE(latent_dim=8, hidden=(128,), arch="mlp", epochs=3 if args.quick else args.epochs,
                         batch_size=128, seed=0)
        vae.fit(data, run_dir=args.out)  # run it again and it evaluates this run instead of training anew

    # split("test") is the test set as the model sees it: binarized with the run's fixed, seeded draw.
    x_test = data.split("test")
    result = evaluation.evaluate(vae.model_, x_test, num_importance_samples=k, seed=0)

    print(f"{data.name}: {result.num_examples} test examples, K = {result.importance_samples} importance samples")
    print(f"  -log p(x)      {result.nll:9.2f} +- {result.nll_stderr:.2f} nats")
    print(f"  -ELBO          {result.neg_elbo:9.2f} +- {result.neg_elbo_stderr:.2f} nats "
          f"(reconstruction {result.reconstruction:.2f} + KL {result.kl:.2f})")
    if result.bits_per_dim is not None:
        print(f"  bits/dim       {result.bits_per_dim:9.4f}")
    layers = " + ".join(str(n) for n in result.active_units_per_layer)
    print(f"  active units   {result.active_units} of {len(result.kl_per_dim)} ({layers})")
    print(f"  took {result.seconds:.1f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
