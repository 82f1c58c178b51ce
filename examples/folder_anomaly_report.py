"""From a folder of images to an anomaly report: which new images do not look like the normal ones, and why.

    python examples/folder_anomaly_report.py --normal photos/good --new photos/incoming --out report
    python examples/folder_anomaly_report.py --quick        # on images made from the embedded digits data

1. train a VAE on the normal images (a folder, searched recursively);
2. calibrate a detector on normal images the model did not train on, so that at most --target-fpr of new
   normal images are flagged (the default score is typicality: how unusual an image's reconstruction, KL
   and posterior are compared with the training images);
3. score every new image: report/scores.csv names each file, with its score and the verdict;
4. explain the flagged images: report/explanations/<file>.png shows each one beside its reconstruction
   and a heat map of the pixels the model finds hardest to explain.

Without --normal and --new the script writes demo folders first: digits 0-8 as the normal images, and as
new images some held-out digits, some 9s (a class the model never saw) and some noise and blank images.
Copy it and change the training settings (``vaekit.VAE(...)``) for your images.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

import vaekit
from vaekit.anomaly import AnomalyDetector
from vaekit.anomaly.explain import write_explanations


def write_demo_folders(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Normal images (digits 0-8) and new images (held-out 0-8, unseen 9s, noise, blank) as PNG files."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255).round().astype(np.uint8)
    rng = np.random.default_rng(seed)
    normal_idx = np.flatnonzero(digits.target != 9)
    rng.shuffle(normal_idx)
    held_out, train = normal_idx[:60], normal_idx[60:]
    nines = np.flatnonzero(digits.target == 9)[:15]
    normal, new = root / "normal", root / "new"
    for folder in (normal, new):
        folder.mkdir(parents=True, exist_ok=True)
    for i in train:
        Image.fromarray(images[i]).save(normal / f"digit{digits.target[i]}_{i:04d}.png")
    for i in held_out:
        Image.fromarray(images[i]).save(new / f"digit{digits.target[i]}_{i:04d}.png")
    for i in nines:
        Image.fromarray(images[i]).save(new / f"unseen9_{i:04d}.png")
    for j in range(8):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(new / f"noise_{j}.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(new / "blank.png")
    return normal, new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--normal", type=Path, help="folder of normal images to train on (default: a demo folder)")
    parser.add_argument("--new", type=Path, help="folder of images to check (default: a demo folder)")
    parser.add_argument("--out", type=Path, default=Path("anomaly-report"), help="where the report goes")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--target-fpr", type=float, default=0.05, help="share of normal images that may be flagged")
    parser.add_argument("--quick", action="store_true", help="a few epochs: checks the pipeline in seconds")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    if (args.normal is None) != (args.new is None):
        parser.error("give both --normal and --new, or neither for the demo folders")
    if args.normal is None:
        args.normal, args.new = write_demo_folders(args.out / "demo-images")
    epochs = 3 if args.quick else args.epochs

    # 1. Train on the normal images; vaekit holds back 10% of them (seeded) as a test split.
    normal = vaekit.load_dataset(str(args.normal), binarize="dynamic")
    vae = vaekit.VAE(latent_dim=8, hidden=(128,), arch="mlp", epochs=epochs, batch_size=128, seed=0)
    vae.fit(normal, run_dir=args.out / "run")

    # 2. Calibrate on the held-out normal images: the detector fits the typicality density on half of them and
    #    sets the threshold on the other half (a run trained with `vaekit train` already has its typicality.json).
    detector = AnomalyDetector(vae, target_fpr=args.target_fpr).fit(normal.x_test.numpy())
    detector.save(args.out / "run")  # anomaly_detector.json: `vaekit score RUN DATA` uses it from now on

    # 3. Score the new images, prepared as the training images were (same size and channels).
    new = vaekit.load_dataset(str(args.new), like=vae.config_.data)
    x_new, files = new.split("all").numpy(), new.example_ids("all")
    scores = detector.anomaly_score(x_new)
    flagged = detector.predict(x_new) == -1
    order = np.argsort(-scores, kind="stable")
    with open(args.out / "scores.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "score", "is_anomaly"])
        for i in order:
            writer.writerow([files[i], f"{scores[i]:.4f}", int(flagged[i])])

    # 4. Explain the flagged images, highest score first.
    names = [Path(name).stem for name in files]
    paths = write_explanations(vae, x_new, args.out / "explanations", indices=[int(i) for i in order if flagged[i]],
                               names=names, scores=scores)

    print(f"{int(flagged.sum())} of {len(files)} images flagged (threshold {detector.threshold_:.3f}, "
          f"score {detector.score_}); most anomalous first:")
    for i in order[:10]:
        print(f"  {scores[i]:10.3f}  {'ANOMALY' if flagged[i] else 'normal '}  {files[i]}")
    print(f"report: {args.out / 'scores.csv'}; {len(paths)} explanation(s) in {args.out / 'explanations'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
