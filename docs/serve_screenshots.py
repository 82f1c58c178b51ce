"""Screenshots of the `vaekit serve` explorer page for the README (docs/images/serve-*.png).

Serves two Fashion-MNIST runs on loopback (as `vaekit serve` does: the run's test split as reference
data, its saved anomaly detector if any), drives Debian's chromium with Playwright through the page
(sliders, gallery, an uploaded test image, an inverted one that the detector flags, an interpolation,
the latent map)
and saves full-page screenshots reduced to 256 colours. Run from the repository root after `make setup`:

    vaekit train fashion-mnist --out runs/fm20 --binarize dynamic --epochs 10 --arch mlp --hidden 400 --latent-dim 20
    vaekit train fashion-mnist --out runs/fm2 --binarize dynamic --epochs 10 --arch mlp --hidden 400 --latent-dim 2
    vaekit fit-detector runs/fm20 --target-fpr 0.01
    python docs/serve_screenshots.py runs/fm20 runs/fm2
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import vaekit
from vaekit.cli.serve import load_reference
from vaekit.serve import Explorer, create_app
from vaekit.serve.server import BackgroundServer

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def serve(run: str) -> BackgroundServer:
    vae = vaekit.load(run)
    reference = load_reference(None, vae, run)
    return BackgroundServer(create_app(Explorer.from_run(run, vae=vae, reference=reference)))


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.rint(image * 255).astype(np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def save(page, path: Path) -> None:
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    shot.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB, {shot.width}x{shot.height})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a Fashion-MNIST run with a 20-D latent (and a fitted detector)")
    parser.add_argument("run_2d", help="a Fashion-MNIST run with a 2-D latent")
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    fashion = vaekit.load_dataset("fashion-mnist").x_test.numpy()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        with serve(args.run) as url:
            page.goto(url)
            page.wait_for_selector("body[data-ready=true]")
            page.click("#reference-examples")
            page.wait_for_selector("#gallery .item")
            page.click("#random-samples")
            page.wait_for_function("() => document.querySelectorAll('#gallery .item').length >= 16")
            page.set_input_files("#file-input", files=[{"name": "ankle-boot.png", "mimeType": "image/png",
                                                        "buffer": png(fashion[0, 0])}])
            page.wait_for_function("() => document.querySelector('#analysis-note').textContent.includes('ankle-boot')")
            page.click("#analysis-a")
            # A pullover photographed on white paper: dark on light, unlike anything the model has seen.
            page.set_input_files("#file-input", files=[{"name": "pullover-on-white.png", "mimeType": "image/png",
                                                        "buffer": png(1.0 - fashion[1, 0])}])
            page.wait_for_function("() => document.querySelector('#analysis-note').textContent.includes('white')")
            page.locator("#gallery .item").nth(9).locator("button", has_text="B").click()
            page.wait_for_selector("#interp-output img")
            page.locator("#scrub").fill("12")
            sliders = page.locator("#sliders input")
            for i, value in ((0, "1.6"), (1, "-1.2")):
                sliders.nth(i).fill(value)
            page.wait_for_timeout(800)
            save(page, out / "serve-explorer.png")
        with serve(args.run_2d) as url:
            page.goto(url)
            page.wait_for_selector("#map-card:not([hidden]) #map-image[src]")
            page.click("#reference-examples")
            page.wait_for_selector("#gallery .item")
            box = page.locator("#map").bounding_box()
            page.locator("#map").click(position={"x": box["width"] * 0.3, "y": box["height"] * 0.62})
            page.wait_for_function("() => document.querySelector('#explorer-base').textContent.includes('map')")
            page.wait_for_timeout(800)
            save(page, out / "serve-latent-map.png")
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
