"""What the benchmarks share: a description of the machine they ran on (imported as ``common`` from this folder)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> dict:
    """CPU model, cores, torch's thread count and the versions that matter, for a benchmark's JSON."""
    import torch

    import vaekit

    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "vaekit": vaekit.__version__, "python": platform.python_version(), "platform": platform.platform()}
