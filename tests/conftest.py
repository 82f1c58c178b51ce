"""Shared fixtures: real data (digits), a small trained run, and a guard for optional data sets."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import vaekit
from vaekit.data.sources import FASHION_MNIST_DIR

torch.set_num_threads(min(2, os.cpu_count() or 1))


def fashion_mnist_available() -> bool:
    directory = Path(os.environ.get("VAEKIT_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    return directory.is_dir() and any(directory.glob("train-images*"))


@pytest.fixture
def fashion_mnist():
    """Skip (or, in CI with VAEKIT_REQUIRE_DATASETS=1, fail) when Fashion-MNIST is not installed."""
    if not fashion_mnist_available():
        message = ("Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist "
                   "(or set VAEKIT_FASHION_MNIST_DIR)")
        if os.environ.get("VAEKIT_REQUIRE_DATASETS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return vaekit.load_dataset("fashion-mnist")


@pytest.fixture(scope="session")
def digits():
    return vaekit.load_dataset("digits")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, digits):
    """A run directory of a small MLP VAE trained briefly on digits (shared, treat as read-only)."""
    run = tmp_path_factory.mktemp("runs") / "digits"
    vaekit.VAE(latent_dim=4, hidden=(64,), epochs=3, seed=0, device="cpu").fit(digits, run_dir=run)
    return run


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def benchmark_module(name: str) -> Iterator:
    """Import ``benchmarks/NAME.py`` (which imports its shared helpers from that folder) for a test."""
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and forked processes look the module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory):
    """What vaekit caches (the sample-quality classifiers) goes to a temporary folder, not the user's ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("VAEKIT_CACHE_DIR", str(tmp_path_factory.mktemp("vaekit-cache")))
    yield
    patch.undo()
