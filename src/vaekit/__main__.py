"""``python -m vaekit``: the command line (also what ``torchrun -m vaekit`` starts)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
