"""The plain PyTorch program a user would write instead of ``vaekit train fashion-mnist``: the yardstick of the
whole-process timings in ``benchmarks/speed.py --parts process``.

It follows pytorch/examples' ``vae/main.py``: read the data, train with Adam 1e-3 at batch 128 over a
``DataLoader``, report the test loss after every epoch, save the weights. Two networks:

    mlp    pytorch/examples' VAE, 784-400-20, and its loss: ``ReferenceVAE`` and ``reference_loss`` of
           ``benchmarks/speed.py``, the one definition its in-process parts train too (what ``vaekit train fashion-mnist --arch mlp --hidden 400
           --latent-dim 20`` builds)
    conv   the layers of vaekit's default convolutional model for 28x28 images, written out by hand: two stride-2
           3x3 convolutions (32, 64 channels) and their transposes, linear heads to a 20-dimensional code

The images are Fashion-MNIST's IDX files from Debian's ``dataset-fashion-mnist`` package, decoded with NumPy;
the likelihood is a Bernoulli on the grey values (binary cross-entropy, as pytorch/examples and vaekit's
default). It writes no pictures (pytorch/examples saves a sample grid every epoch with torchvision, which
this machine does not have): that omission favours this side of the comparison.

    python benchmarks/plain_loop.py --arch mlp --epochs 3 --out /tmp/plain
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from speed import ReferenceVAE, reference_loss  # benchmarks/speed.py: pytorch/examples' network and loss

DATA = Path("/usr/share/datasets/fashion-mnist")


def read_images(name: str) -> torch.Tensor:
    with gzip.open(DATA / f"{name}-images-idx3-ubyte.gz", "rb") as fh:
        raw = np.frombuffer(fh.read(), dtype=np.uint8, offset=16)
    return torch.from_numpy(raw.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)


class Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                                     nn.Flatten())
        self.mu, self.logvar = nn.Linear(3136, 20), nn.Linear(3136, 20)
        self.fc = nn.Linear(20, 3136)
        self.decoder = nn.Sequential(nn.ConvTranspose2d(64, 32, 3, 2, 1, 1), nn.ReLU(),
                                     nn.ConvTranspose2d(32, 1, 3, 2, 1, 1))

    def forward(self, x):
        h = self.encoder(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.decoder(F.relu(self.fc(z)).view(-1, 64, 7, 7))).flatten(1), mu, logvar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("mlp", "conv"), default="mlp")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="folder for the weights (model.pt)")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    train = DataLoader(TensorDataset(read_images("train")), batch_size=128, shuffle=True)
    test = DataLoader(TensorDataset(read_images("t10k")), batch_size=128)
    model = (ReferenceVAE if args.arch == "mlp" else Conv)()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(1, args.epochs + 1):
        model.train()
        total = 0.0
        for (x,) in train:
            optimizer.zero_grad()
            recon, mu, logvar = model(x)
            loss = reference_loss(recon, x, mu, logvar)
            loss.backward()
            total += loss.item()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            test_loss = 0.0
            for (x,) in test:
                recon, mu, logvar = model(x)
                test_loss += reference_loss(recon, x, mu, logvar).item()
        print(f"epoch {epoch}: train loss {total / len(train.dataset):.3f}  test loss "
              f"{test_loss / len(test.dataset):.3f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "model.pt")
    print(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
