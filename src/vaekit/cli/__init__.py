"""The ``vaekit`` command line: a thin layer over the library.

Each command lives in its own module with a ``register(subparsers)`` function that adds its parser
and sets ``func``; ``COMMAND_MODULES`` lists them in the order ``vaekit --help`` shows them.
Errors a user can cause (``VaekitError``) are printed as one line without a traceback, exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import VaekitError

COMMAND_MODULES = ["train", "use", "evaluate", "info", "latent", "anomaly", "export", "serve"]


class Parser(argparse.ArgumentParser):
    """argparse without prefix abbreviations (``--epoch`` is not ``--epochs``), suggesting close names on errors."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}{self._suggestion(message)}\n")

    def _suggestion(self, message: str) -> str:
        if "invalid choice: " in message:  # an unknown command
            wrong = message.split("invalid choice: ", 1)[1].split("'")[1]
            names = [a for action in self._actions if isinstance(action, argparse._SubParsersAction) for a in action.choices]
        elif "unrecognized arguments: " in message:  # an unknown option
            wrong = message.split("unrecognized arguments: ", 1)[1].split()[0].split("=")[0]
            names = [o for action in self._actions for o in action.option_strings]
        else:
            return ""
        close = difflib.get_close_matches(wrong, names, n=3, cutoff=0.6)
        return f" (did you mean {' or '.join(close)}?)" if close else ""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="vaekit",
        description="Train variational autoencoders on your own data and use them: sample, reconstruct, encode, decode, "
                    "evaluate log-likelihood, explore the latent space, score anomalies, export the decoder, "
                    "serve it over HTTP with an explorer page.",
    )
    parser.add_argument("--version", action="version", version=f"vaekit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the command's own parser, with its usage, not the top level's
        command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
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
