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


def settled_work_dir(root: str | Path, quick: bool, settings: dict) -> Path | None:
    """``root/quick`` or ``root/full``, created, holding ``settings.json``; ``None`` (after saying why) when it
    already holds results of other settings, which a resumed run must not mix with."""
    import json
    import sys

    from vaekit.fileio import atomic_write_json

    work = Path(root) / ("quick" if quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    settings_file = work / "settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) != settings:
        print(f"{work} holds results for other settings; remove it or use another --work-dir", file=sys.stderr)
        return None
    atomic_write_json(settings_file, settings)
    return work


def log(message: str) -> None:
    """Progress for the person watching, on stderr, so that the table on stdout stays clean."""
    import sys

    print(message, file=sys.stderr, flush=True)
