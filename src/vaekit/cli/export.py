"""``vaekit export``: the decoder (and, on request, the encoder) as ONNX, TorchScript or a torch.export program."""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from ..names import EXPORT_FORMATS as FORMATS
from .common import load_run


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="write the decoder (and optionally the encoder) for use without vaekit",
                              description="Export the decoder (z -> mean of p(x|z), in the data's units) to run without "
                                          "vaekit: .onnx (ONNX; needs pip install 'vaekit[export]'), .pt (TorchScript) "
                                          "or .pt2 (torch.export). The batch axis is dynamic. The written file is run "
                                          "once on a seeded batch and compared with PyTorch.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("-o", "--output", required=True, help=f"the decoder file: {', '.join(FORMATS)}")
    p.add_argument("--encoder", metavar="PATH",
                   help="also write the encoder (x -> z_mean, z_log_variance) to PATH (.onnx, .pt or .pt2)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the parity check (for ONNX it needs onnxruntime)")
    p.set_defaults(func=export)


def export(args: argparse.Namespace) -> int:
    from ..export import export_model

    for path in (args.output, args.encoder):
        if path is not None and not any(path.lower().endswith(suffix) for suffix in FORMATS):
            raise ConfigError(f"cannot export to {path}: use a file ending in {', '.join(FORMATS)}")
    vae = load_run(args.run)
    results = [export_model(vae, args.output, "decoder", verify=args.verify)]
    if args.encoder:
        results.append(export_model(vae, args.encoder, "encoder", verify=args.verify))
    for result in results:
        print(f"wrote the {result.summary()}", file=sys.stderr)
    return 0
