"""The ``vaekit`` command line: a thin layer over the library.

Each command lives in its own module with a ``register(subparsers)`` function that adds its parser
and sets ``func``; ``COMMAND_MODULES`` lists them in the order ``vaekit --help`` shows them.
Errors a user can cause (``VaekitError``) are printed as one line without a traceback, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import VaekitError

COMMAND_MODULES = ["train", "use", "evaluate", "info", "latent", "anomaly", "export", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaekit",
        description="Train variational autoencoders on your own data and use them: sample, reconstruct, encode, decode, "
                    "evaluate log-likelihood, explore the latent space, score anomalies, export the decoder, "
                    "serve it over HTTP with an explorer page.",
    )
    parser.add_argument("--version", action="version", version=f"vaekit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `vaekit train --nproc N` hands on to torchrun
    try:
        result = args.func(args)
    except VaekitError as err:
        print(f"vaekit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vaekit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
