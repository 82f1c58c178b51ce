"""Data bigger than memory: memory-mapped .npy, .npy shards, lazy image folders, the automatic choice, peak memory."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import vaekit
from vaekit.training import checkpoint as ckpt
from vaekit.api import make_run_config
from vaekit.errors import DataError
from vaekit.training.trainer import train


@pytest.fixture(scope="module")
def digits_npy(tmp_path_factory, digits) -> Path:
    """scikit-learn's digits as one uint8 .npy file (values k/16 as k*15, so /255 gives them back)."""
    path = tmp_path_factory.mktemp("npy") / "digits.npy"
    x = torch.cat([digits.x_train, digits.x_test]).numpy()
    np.save(path, np.round(x[:, 0] * 255).astype(np.uint8))
    return path


def test_streamed_and_in_memory_training_are_identical(tmp_path, digits_npy):
    """Same permutation, same global batches, same noise: streaming changes where bytes come from, nothing else."""
    results = {}
    for mode, workers in (("yes", 0), ("no", 2)):
        data = vaekit.load_dataset(str(digits_npy), in_memory=mode, binarize="dynamic", loader_workers=workers)
        assert (data.train_stream is not None) == (mode == "no")
        config = make_run_config(data, latent_dim=4, hidden=(32,), epochs=2, batch_size=100, device="cpu")
        model, history = train(config, data, progress=False)
        results[mode] = (model.state_dict(), history)
    for name, value in results["yes"][0].items():
        torch.testing.assert_close(results["no"][0][name], value, rtol=0, atol=0)
    assert [r["val_neg_elbo"] for r in results["no"][1]] == [r["val_neg_elbo"] for r in results["yes"][1]]


def test_shards_read_as_one_array_in_name_order(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.normal(3.0, 2.0, (n, 5)).astype(np.float32) for n in (7, 1, 12)]
    folder = tmp_path / "shards"
    folder.mkdir()
    for i, part in enumerate(parts):
        np.save(folder / f"part-{i:05d}.npy", part)
    from vaekit.data.streaming import NpyShards

    shards = NpyShards(folder)
    whole = np.concatenate(parts)
    picks = rng.permutation(len(whole))[:13]
    np.testing.assert_array_equal(shards.read(picks), whole[picks])
    # Real-valued vectors are standardized with statistics computed in chunks; they equal the in-memory ones.
    streamed = vaekit.load_dataset(str(folder), in_memory="no")
    whole_file = tmp_path / "whole.npy"
    np.save(whole_file, whole)
    loaded = vaekit.load_dataset(str(whole_file), in_memory="yes")
    np.testing.assert_allclose(streamed.config.standardize_mean, loaded.config.standardize_mean, rtol=1e-6)
    np.testing.assert_allclose(streamed.config.standardize_std, loaded.config.standardize_std, rtol=1e-6)
    np.testing.assert_allclose(streamed.x_test.numpy(), loaded.x_test.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(streamed.train_stream.read(np.arange(3)), loaded.x_train[:3].numpy(), rtol=1e-5, atol=1e-6)


def test_mismatched_shards_and_unstreamable_sources_are_refused(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    np.save(folder / "a.npy", np.zeros((3, 4), np.float32))
    np.save(folder / "b.npy", np.zeros((3, 5), np.float32))
    with pytest.raises(DataError, match="all shards of a folder must agree"):
        vaekit.load_dataset(str(folder), in_memory="no")
    with pytest.raises(DataError, match="cannot be streamed"):
        vaekit.load_dataset("digits", in_memory="no")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((20, 3)))
    with pytest.raises(DataError, match="cannot be streamed"):
        vaekit.load_dataset(str(tmp_path / "x.npy"), in_memory="no", binarize="static")


def test_image_folder_is_read_lazily_and_matches_loading_it_whole(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    for label in ("cats", "dogs"):
        (tmp_path / "img" / label).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (10, 12), dtype=np.uint8)).save(tmp_path / "img" / label / f"{i}.png")
    lazy = vaekit.load_dataset(str(tmp_path / "img"), in_memory="no")
    whole = vaekit.load_dataset(str(tmp_path / "img"), in_memory="yes")
    assert lazy.shape == whole.shape == (1, 10, 12)
    np.testing.assert_array_equal(lazy.x_test.numpy(), whole.x_test.numpy())
    np.testing.assert_array_equal(lazy.train_stream.read(np.arange(len(whole.x_train))), whole.x_train.numpy())
    np.testing.assert_array_equal(lazy.y_train, whole.y_train)
    with pytest.raises(DataError, match="streamed from disk"):
        lazy.split("train")


def test_auto_streams_only_what_does_not_fit_the_budget(digits_npy):
    small = vaekit.load_dataset(str(digits_npy), memory_budget_mb=100)
    assert small.train_stream is None
    # 1,797 x 64 float32 values = 0.44 MiB; twice that does not fit 0.5 MiB.
    tight = vaekit.load_dataset(str(digits_npy), memory_budget_mb=0.5)
    assert tight.train_stream is not None and len(tight.train_stream) == len(small.x_train)


def _tree_memory_mib(process) -> float:
    """Proportional set size (shared pages split between sharers) of a process and its children, in MiB."""
    import psutil

    total = 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20


@pytest.mark.slow
def test_training_on_data_larger_than_the_budget_stays_under_it(tmp_path):
    """A 985 MiB data set (3.9 GiB as float32) trains with a 900 MiB budget: the processes' memory stays under it.

    (A PyTorch process alone takes about 400 MiB here, so the budget cannot be much smaller.)"""
    psutil = pytest.importorskip("psutil")
    budget_mb = 900
    rng = np.random.default_rng(0)
    data = tmp_path / "big"
    for split, shards, rows in (("train", 7, 12_000), ("test", 1, 1_000)):
        (data / split).mkdir(parents=True)
        for i in range(shards):
            np.save(data / split / f"part-{i:05d}.npy", rng.integers(0, 256, (rows, 3, 64, 64), dtype=np.uint8))
    on_disk_mb = sum(p.stat().st_size for p in data.rglob("*.npy")) / 2**20
    assert on_disk_mb > budget_mb
    command = [sys.executable, "-m", "vaekit", "train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
               "--arch", "mlp", "--hidden", "16", "--latent-dim", "2", "--batch-size", "256", "--no-progress",
               "--memory-budget-mb", str(budget_mb), "--device", "cpu"]
    process = psutil.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    peak, stop = [0.0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_memory_mib(process))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        _, err = process.communicate(timeout=600)
    finally:
        stop.set()
        sampler.join()
    assert process.returncode == 0, err[-3000:]
    assert "train streamed from disk" in err
    history = ckpt.read_metrics(tmp_path / "run")
    assert history and history[0]["examples_per_second"] > 0
    print(f"\ndata {on_disk_mb:.0f} MiB on disk, {4 * on_disk_mb:.0f} MiB as float32; budget {budget_mb} MiB; "
          f"peak memory of vaekit and its loader workers (PSS) {peak[0]:.0f} MiB")
    assert 0 < peak[0] < budget_mb
