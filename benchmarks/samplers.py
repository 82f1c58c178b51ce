"""Prior sampling against the ex-post Gaussian mixture (``vaekit fit-sampler``) on digits: which samples look
more like the data?

Protocol, per latent size and seed: ``VAE(latent_dim=D, hidden=(128,), epochs=E, seed=seed).fit(digits)`` (the
built-in 8x8 digits, its own train/test split, every other setting at its default). Each sampler decodes N codes
(the mean of p(x|z), as ``vaekit sample`` draws them):

    prior       z ~ N(0, I)
    gmm         the mixture fitted on the training set's posterior means (the default of fit_sampler)
    gmm-draw    the mixture fitted on one posterior draw z ~ q(z|x) per training example (source="draw")

Measures, each computed offline with scikit-learn on the decoded images (pixels in [0, 1], 64 values):

    confidence   mean max class probability of a LogisticRegression trained on digits' training images (its
                 test accuracy is printed too): higher = the samples look more like some digit
    class H      entropy of the histogram of predicted classes, nats (ln 10 = 2.303 is all ten equally often):
                 lower = fewer digits are drawn (a sampler that sharpens by dropping modes shows here)
    d(test)      mean Euclidean distance from each sample to its nearest test image: lower = closer to real data
    d(train)     the same to the nearest training image; a sampler that copied training images would have
                 d(train) far below d(test)

The same measures of the real test images (d(test) is then 0: their distance to the nearest *other* test
image is given instead) and of their reconstructions (decoded posterior means) are the reference rows.

    python benchmarks/samplers.py --quick                           # one small model, few epochs: checks the pipeline
    flock /tmp/vaekit-cpu.lock nice -n 5 python benchmarks/samplers.py --json benchmarks/results/samplers.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SAMPLERS = ("prior", "gmm", "gmm-draw")


def measures(images: np.ndarray, classifier, x_test: np.ndarray, x_train: np.ndarray, exclude_self: bool = False) -> dict:
    """Confidence, predicted-class entropy and nearest-neighbour distances of flattened images."""
    from sklearn.metrics import pairwise_distances

    proba = classifier.predict_proba(images)
    counts = np.bincount(proba.argmax(1), minlength=proba.shape[1]) / len(images)
    nonzero = counts[counts > 0]
    to_test = pairwise_distances(images, x_test)
    if exclude_self:
        np.fill_diagonal(to_test, np.inf)
    return {"confidence": float(proba.max(1).mean()), "class_entropy": float(-(nonzero * np.log(nonzero)).sum()),
            "nn_test": float(to_test.min(1).mean()), "nn_train": float(pairwise_distances(images, x_train).min(1).mean()),
            "class_histogram": counts.round(4).tolist()}


def run_one(data, latent_dim: int, seed: int, epochs: int, num: int, classifier, x_test, x_train) -> dict:
    import vaekit
    from vaekit.generation import fit_sampler

    start = time.perf_counter()
    vae = vaekit.VAE(latent_dim=latent_dim, hidden=(128,), epochs=epochs, seed=seed, device="cpu").fit(data)
    result = {"latent_dim": latent_dim, "seed": seed, "train_s": round(time.perf_counter() - start, 2), "samplers": {}}
    for name in SAMPLERS:
        start = time.perf_counter()
        if name == "prior":
            kind, info = "prior", {}
        else:
            sampler = fit_sampler(vae, data.x_train.numpy(), seed=seed, source="draw" if name == "gmm-draw" else "mean")
            kind = sampler
            info = {"components": sampler.components, "bic_candidates": len(sampler.bic),
                    "fit_s": round(time.perf_counter() - start, 2)}
        images = vae.sample(num, sampler=kind, seed=seed).reshape(num, -1)
        result["samplers"][name] = {**info, **measures(images, classifier, x_test, x_train)}
    recon = vae.reconstruct(data.x_test.numpy()).reshape(len(x_test), -1)
    result["reconstructions"] = measures(recon, classifier, x_test, x_train)
    return result


def summarize(results: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds, per latent size and sampler."""
    rows = []
    for d in sorted({r["latent_dim"] for r in results}):
        mine = [r for r in results if r["latent_dim"] == d]
        for name in (*SAMPLERS, "reconstructions"):
            values = [r["samplers"][name] if name in SAMPLERS else r[name] for r in mine]
            row = {"latent_dim": d, "sampler": name, "seeds": len(values)}
            for key in ("confidence", "class_entropy", "nn_test", "nn_train", "components"):
                numbers = [v[key] for v in values if key in v]
                if numbers:
                    row[key] = float(np.mean(numbers))
                    row[key + "_sd"] = float(np.std(numbers))
            rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent-dims", default="2,8,20")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--num", type=int, default=2000, help="samples per sampler")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="latent size 8, one seed, 5 epochs, 200 samples")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.latent_dims, args.seeds, args.epochs, args.num = "8", "0", 5, 200

    import torch
    from common import log, machine
    from sklearn.linear_model import LogisticRegression

    import vaekit

    torch.set_num_threads(args.threads)
    data = vaekit.load_dataset("digits")
    x_train = data.x_train.numpy().reshape(data.num_train, -1)
    x_test = data.x_test.numpy().reshape(len(data.x_test), -1)
    y_train, y_test = data.labels("train"), data.labels("test")
    classifier = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    accuracy = float((classifier.predict(x_test) == y_test).mean())
    log(f"classifier: LogisticRegression on {len(x_train)} training images, test accuracy {accuracy:.3f}")
    settings = {"dataset": "digits", "hidden": [128], "epochs": args.epochs, "num_samples": args.num,
                "classifier": "LogisticRegression(max_iter=2000)", "classifier_test_accuracy": accuracy,
                "threads": args.threads, "quick": args.quick}
    test_images = {**measures(x_test, classifier, x_test, x_train, exclude_self=True)}

    results = []
    for d in (int(v) for v in args.latent_dims.split(",")):
        for seed in (int(v) for v in args.seeds.split(",")):
            log(f"latent {d}, seed {seed}: training {args.epochs} epochs")
            results.append(run_one(data, d, seed, args.epochs, args.num, classifier, x_test, x_train))
    summary = summarize(results)

    print(f"digits, {args.num} samples per sampler, hidden (128,), {args.epochs} epochs, mean (sd) over seeds "
          f"{args.seeds}; classifier test accuracy {accuracy:.3f}")
    header = f"{'latent':>6}  {'sampler':<16}{'K':>5}{'confidence':>16}{'class H':>15}{'d(test)':>15}{'d(train)':>15}"
    print(header)
    print("-" * len(header))

    def cell(row, key, width):
        if key not in row:
            return " " * width
        return f"{row[key]:.3f} ({row[key + '_sd']:.3f})".rjust(width)

    for row in summary:
        k = f"{row['components']:.1f}" if "components" in row else ""
        print(f"{row['latent_dim']:>6}  {row['sampler']:<16}{k:>5}{cell(row, 'confidence', 16)}"
              f"{cell(row, 'class_entropy', 15)}{cell(row, 'nn_test', 15)}{cell(row, 'nn_train', 15)}")
    print(f"{'':>6}  {'test images':<16}{'':>5}{test_images['confidence']:>16.3f}{test_images['class_entropy']:>15.3f}"
          f"{test_images['nn_test']:>15.3f}{test_images['nn_train']:>15.3f}   (d(test): to the nearest other test image)")
    if args.json:
        from vaekit.fileio import atomic_write_json

        atomic_write_json(args.json, {"machine": machine(), "settings": settings, "test_images": test_images,
                                      "summary": summary, "results": results})
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
