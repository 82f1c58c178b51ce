#!/usr/bin/env bash
# Regenerates the latent-space pictures in docs/images/ from two small Fashion-MNIST models
# (MLP, 400 hidden units, 20 epochs on dynamically binarized data; about a minute each on 2 cores).
# Run from the repository root after `make setup`:  bash docs/make_images.sh
set -euo pipefail
VAEKIT=${VAEKIT:-.venv/bin/vaekit}
OUT=docs/images
mkdir -p "$OUT" runs

train() {  # train RUN LATENT_DIM, unless the run is already complete
  if [ ! -f "runs/$1/model.safetensors" ]; then
    rm -rf "runs/$1"
    $VAEKIT train fashion-mnist --out "runs/$1" --binarize dynamic --arch mlp --hidden 400 \
      --latent-dim "$2" --epochs 20 --seed 0 --no-progress
  fi
}
train docs-fm20 20
train docs-fm2 2

$VAEKIT interpolate runs/docs-fm20 fashion-mnist:test --from 0 --to 2 --steps 10 -o "$OUT/interpolate-linear.png"
$VAEKIT interpolate runs/docs-fm20 fashion-mnist:test --from 0 --to 2 --steps 10 --method spherical -o "$OUT/interpolate-spherical.png"
$VAEKIT traverse runs/docs-fm20 --top 8 --steps 9 -o "$OUT/traverse.png"
$VAEKIT latent-plot runs/docs-fm20 fashion-mnist:test -o "$OUT/latent-pca.png"
$VAEKIT latent-plot runs/docs-fm20 fashion-mnist:test --method tsne --max-points 3000 -o "$OUT/latent-tsne.png"
$VAEKIT latent-plot runs/docs-fm2 fashion-mnist:test -o "$OUT/latent-2d.png"
$VAEKIT manifold runs/docs-fm2 --steps 15 -o "$OUT/manifold.png"
