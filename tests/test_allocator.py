"""The C allocator's settings (``vaekit.allocator``): freed tensors stay in the heap for the next step.

Measured by the kernel's count of minor page faults (``getrusage``) in fresh processes: a training step's worth of
large tensors allocated, written and freed again and again takes its pages afresh every time under glibc's
defaults, and once only after ``tune_allocator``.
"""

import os
import subprocess
import sys

import pytest

from vaekit import allocator

pytestmark = pytest.mark.skipif(allocator.glibc_mallopt() is None, reason="the allocator settings are glibc's")

# 24 tensors of 8 MB (a convolutional step's activations) allocated, filled and freed 20 times; the faults of the
# last 19 rounds, after the first has sized the heap.
STEPS = """
import resource, sys, torch
from vaekit.allocator import tune_allocator
print(tune_allocator(), file=sys.stderr)
def step():
    tensors = [torch.ones(2_000_000) for _ in range(24)]
    return float(sum(t[0] for t in tensors))
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(19):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(**env: str) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "VAEKIT_ALLOCATOR"}
    out = subprocess.run([sys.executable, "-c", STEPS], env={**clean, **env}, capture_output=True, text=True,
                         check=True, timeout=120)
    return int(out.stdout.strip().splitlines()[-1]), out.stderr.strip()


def test_tuned_allocator_keeps_freed_tensors_instead_of_faulting_their_pages_in_again():
    tuned, state = faults()
    assert state == "tuned"
    untouched, reason = faults(VAEKIT_ALLOCATOR="system")
    assert reason == "VAEKIT_ALLOCATOR=system"
    pages = 19 * 24 * 8_000_000 // 4096  # every page of every round, had each been faulted in again
    assert untouched > pages / 2  # glibc's defaults return the memory and fault it in again
    assert tuned < pages / 50, (tuned, untouched, pages)


def test_allocator_settings_from_the_environment_are_left_alone():
    _, reason = faults(MALLOC_TRIM_THRESHOLD_="100000")
    assert reason == "malloc options set in the environment"
    _, reason = faults(GLIBC_TUNABLES="glibc.malloc.trim_threshold=100000")
    assert reason == "malloc options set in the environment"


def test_tune_allocator_decides_once_per_process(monkeypatch):
    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setenv("VAEKIT_ALLOCATOR", "system")
    assert allocator.tune_allocator() == "VAEKIT_ALLOCATOR=system"
    monkeypatch.delenv("VAEKIT_ALLOCATOR")
    assert allocator.tune_allocator() == "VAEKIT_ALLOCATOR=system"  # the first answer stands
