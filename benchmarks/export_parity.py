"""Parity of exported models with PyTorch: ONNX (onnxruntime), TorchScript and torch.export on many inputs.

Exports the decoder and encoder of a run, runs each file with its own runtime on N prior draws (decoder)
and N examples of the run's data (encoder), and reports the largest and mean absolute differences from
the estimator's ``decode``/``encode``, plus the time per batch of each runtime.

    python benchmarks/export_parity.py runs/docs-fm20 --json benchmarks/results/export_parity.json
    python benchmarks/export_parity.py runs/docs-fm20 --quick
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import vaekit
from vaekit.cli.common import load_run_data
from vaekit.export import export_model, run_exported
from vaekit.fileio import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory")
    parser.add_argument("-n", type=int, default=10000, help="inputs per check (default 10000)")
    parser.add_argument("--quick", action="store_true", help="500 inputs")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    n = 500 if args.quick else args.n
    vae = vaekit.load(args.run)
    z = np.random.default_rng(1).normal(size=(n, vae.latent_dim_)).astype(np.float32)
    x = load_run_data(vae.config_.data.source, vae)[0][:n]
    started = time.perf_counter()
    reference_x = vae.decode(z)
    decode_seconds = time.perf_counter() - started
    reference_mean, reference_var = vae.encode(x)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in (".onnx", ".pt", ".pt2"):
            for part, inputs in (("decoder", z), ("encoder", x)):
                path = Path(tmp) / f"{part}{suffix}"
                result = export_model(vae, path, part)
                started = time.perf_counter()
                outputs = run_exported(path, inputs)
                seconds = time.perf_counter() - started
                if part == "decoder":
                    diff = np.abs(outputs[0] - reference_x)
                else:
                    diff = np.concatenate([np.abs(outputs[0] - reference_mean).ravel(),
                                           np.abs(np.exp(outputs[1]) - reference_var).ravel()])
                rows.append({"format": result.format, "part": part, "inputs": len(inputs),
                             "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                             "seconds": seconds, "file_bytes": path.stat().st_size})
    print(f"run {args.run}: latent {vae.latent_dim_}, input {vae.input_shape_}; torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}; PyTorch decode of {n}: {decode_seconds:.3f} s")
    print(f"{'format':<14}{'part':<9}{'inputs':>8}{'max |diff|':>12}{'mean |diff|':>13}{'seconds':>9}{'bytes':>10}")
    for r in rows:
        print(f"{r['format']:<14}{r['part']:<9}{r['inputs']:>8}{r['max_abs_diff']:>12.3g}{r['mean_abs_diff']:>13.3g}"
              f"{r['seconds']:>9.3f}{r['file_bytes']:>10}")
    if args.json:
        atomic_write_json(args.json, {"run": args.run, "torch": torch.__version__, "machine": platform.platform(),
                                      "pytorch_decode_seconds": decode_seconds, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
