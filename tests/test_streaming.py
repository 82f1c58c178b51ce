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
    # The same folder held in memory (what auto does with shards that fit) is the concatenated array.
    for in_memory in ("yes", "auto"):
        held = vaekit.load_dataset(str(folder), in_memory=in_memory)
        assert held.train_stream is None
        np.testing.assert_array_equal(held.x_train.numpy(), loaded.x_train.numpy())
        np.testing.assert_array_equal(held.x_test.numpy(), loaded.x_test.numpy())
        assert held.config.standardize_mean == loaded.config.standardize_mean


def test_a_shard_folder_with_its_own_split_keeps_it_in_memory(tmp_path):
    for split, values in (("train", np.arange(40)), ("test", np.arange(100, 110))):
        (tmp_path / "data" / split).mkdir(parents=True)
        for i, chunk in enumerate(np.array_split(values, 2)):
            np.save(tmp_path / "data" / split / f"part-{i}.npy", np.repeat(chunk[:, None], 3, 1).astype(np.uint8))
    held = vaekit.load_dataset(str(tmp_path / "data"), in_memory="yes")
    streamed = vaekit.load_dataset(str(tmp_path / "data"), in_memory="no")
    assert held.num_train == 40 and len(held.x_test) == 10 and held.config.kind == "unit"
    np.testing.assert_array_equal(held.x_test.numpy(), streamed.x_test.numpy())
    np.testing.assert_array_equal(held.x_train.numpy(), streamed.train_stream.read(np.arange(40)))


def test_a_built_in_name_means_the_built_in_data_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("digits", "fmnist"):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "part-0.npy", np.zeros((30, 4), np.uint8))
    for in_memory in ("auto", "yes"):
        data = vaekit.load_dataset("digits", in_memory=in_memory)
        assert data.num_train + len(data.x_test) == 1797 and data.x_train.shape[1:] == (1, 8, 8)
    from vaekit.data import streaming
    from vaekit.data.sources import builtin_name

    assert builtin_name("fmnist") == builtin_name("fashion_mnist") == "fashion-mnist" and builtin_name("x") is None
    assert streaming.open_streamable("fmnist") is None and streaming.load_shard_folder("fmnist") is None
    assert streaming.open_streamable(str(tmp_path / "fmnist")) is not None  # by its path, the folder


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


# --- damaged files in streamed data (issue 17) -------------------------------------------------------------------

TINY_RUN = ["--epochs", "1", "--arch", "mlp", "--hidden", "8", "--latent-dim", "2", "--batch-size", "8",
            "--device", "cpu", "--no-progress"]


def write_pngs(folder: Path, n: int = 30) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = [folder / f"{i:03d}.png" for i in range(n)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).save(path)
    return paths


def truncate(path: Path) -> None:
    """Cut a PNG in half: its header still reads, its pixels do not."""
    content = path.read_bytes()
    path.write_bytes(content[:len(content) // 2])


def training_file(paths: list[Path], which: int = 0) -> Path:
    """A file of the training split (test fraction 0.1, seed 0), so that it is read by the loader workers."""
    from vaekit.data.dataset import _split_indices

    return paths[int(_split_indices(len(paths), 0.1, 0)[0][which])]


def train_cli(data: Path, out: Path, *options: str) -> int:
    from vaekit.cli import main

    return main(["train", str(data), "--out", str(out), *TINY_RUN, *options])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("vaekit: error:")]


def test_a_damaged_file_read_by_a_loader_worker_is_one_line_and_leaves_no_run(tmp_path, capsys):
    paths = write_pngs(tmp_path / "img")
    bad = training_file(paths)
    truncate(bad)
    out = tmp_path / "run"
    assert train_cli(tmp_path / "img", out, "--data-in-memory", "no", "--loader-workers", "1") == 2
    err = capsys.readouterr().err
    line, = error_lines(err)
    assert str(bad) in line and "truncated" in line and "--skip-bad-files" in line
    assert "Traceback" not in err and "DataLoader worker" not in err
    assert not out.exists()  # not a half-made run that blocks the next `vaekit train --out run`
    # A directory the user made is kept, with what was in it, and nothing that looks like a run.
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert train_cli(tmp_path / "img", out, "--data-in-memory", "no", "--loader-workers", "1") == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_the_worker_error_is_raised_as_itself_by_the_library(tmp_path):
    from vaekit.data.sources import UnreadableFileError

    paths = write_pngs(tmp_path / "img")
    bad = training_file(paths)
    truncate(bad)
    data = vaekit.load_dataset(str(tmp_path / "img"), in_memory="no", loader_workers=1)
    config = make_run_config(data, latent_dim=2, hidden=(8,), epochs=1, batch_size=8, device="cpu")
    with pytest.raises(UnreadableFileError) as caught:
        train(config, data, progress=False)
    assert caught.value.path == str(bad) and "\n" not in str(caught.value)


def test_the_estimator_leaves_no_half_made_run_either(tmp_path, monkeypatch):
    from vaekit.data.sources import UnreadableFileError

    paths = write_pngs(tmp_path / "img")
    truncate(training_file(paths))
    data = vaekit.load_dataset(str(tmp_path / "img"), in_memory="no", loader_workers=1)
    vae = vaekit.VAE(latent_dim=2, hidden=(8,), epochs=1, batch_size=8, device="cpu")
    with pytest.raises(UnreadableFileError):
        vae.fit(data, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # config.json alone would make it look like a run
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(UnreadableFileError):
        vae.fit(data, run_dir=tmp_path / "mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    monkeypatch.chdir(tmp_path)  # a path the trainer takes literally ("~" is not expanded): cleaned up the same
    with pytest.raises(UnreadableFileError):
        vae.fit(data, run_dir="~/run")
    assert not (tmp_path / "~").exists() or not any((tmp_path / "~").iterdir())


def test_the_command_line_prints_no_traceback_across_the_worker_boundary(tmp_path):
    paths = write_pngs(tmp_path / "img")
    bad = training_file(paths)
    truncate(bad)
    command = [sys.executable, "-m", "vaekit", "train", str(tmp_path / "img"), "--out", str(tmp_path / "run"),
               *TINY_RUN, "--data-in-memory", "no", "--loader-workers", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    line, = error_lines(done.stderr)
    assert str(bad) in line and done.stderr.rstrip().endswith(line)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("in_memory", ["no", "yes"])
def test_skip_bad_files_trains_and_lists_them(tmp_path, capsys, in_memory):
    paths = write_pngs(tmp_path / "img")
    bad_train, bad_test = training_file(paths), paths[int(np.setdiff1d(np.arange(30), training_positions(30))[0])]
    truncate(bad_train)
    bad_test.write_bytes(b"not an image at all")  # its header does not read either
    out = tmp_path / "run"
    assert train_cli(tmp_path / "img", out, "--data-in-memory", in_memory, "--loader-workers", "1",
                     "--skip-bad-files") == 0
    err = capsys.readouterr().err
    assert str(bad_train) in err and str(bad_test) in err and "vaekit: error" not in err
    listed = (out / "bad_files.txt").read_text().splitlines()
    assert listed[0] == "file\treason" and sorted(line.split("\t")[0] for line in listed[1:]) == \
        sorted([str(bad_train), str(bad_test)])
    assert ckpt.read_metrics(out) and (out / "model.safetensors").is_file()


def training_positions(n: int) -> np.ndarray:
    from vaekit.data.dataset import _split_indices

    return _split_indices(n, 0.1, 0)[0]


def test_a_streamed_bad_file_is_replaced_by_the_next_readable_example(tmp_path):
    paths = write_pngs(tmp_path / "img")
    bad = training_file(paths, 0)
    truncate(bad)
    truncate(training_file(paths, 1))  # two bad ones in a row: the next readable is the third
    data = vaekit.load_dataset(str(tmp_path / "img"), in_memory="no", skip_bad_files=True)
    whole = vaekit.load_dataset(str(tmp_path / "img"), in_memory="yes", skip_bad_files=True)
    stream = data.train_stream
    x, found = stream.read_batch(np.array([0, 5]))
    assert x.shape == (2, 1, 6, 6) and [path for path, _ in found.values()] == [str(bad), str(training_file(paths, 1))]
    np.testing.assert_array_equal(x[0], stream.read(np.array([2]))[0])
    np.testing.assert_array_equal(x[1], stream.read(np.array([5]))[0])
    # Every readable file keeps the split it has when all can be read, streamed or in memory.
    np.testing.assert_array_equal(data.x_test.numpy(), whole.x_test.numpy())
    assert whole.example_ids("train")[0] == str(training_file(paths, 2))
    assert [p for p, _ in whole.skipped_files] == sorted([str(bad), str(training_file(paths, 1))])
    assert len(whole.x_train) == len(stream) - 2


def test_a_failed_resume_never_removes_the_run(tmp_path, capsys):
    paths = write_pngs(tmp_path / "img")
    out = tmp_path / "run"
    assert train_cli(tmp_path / "img", out, "--data-in-memory", "no", "--loader-workers", "0") == 0
    before = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*")}
    truncate(training_file(paths))
    from vaekit.cli import main

    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--data-in-memory", "no",
                 "--loader-workers", "1", "--no-progress"]) == 2
    line, = error_lines(capsys.readouterr().err)
    assert str(training_file(paths)) in line and "--skip-bad-files" in line
    after = {p.relative_to(out) for p in out.rglob("*")}
    assert set(before) <= after and ckpt.load_checkpoint(out) is not None


def test_a_shard_that_cannot_be_opened_is_skipped_with_the_option(tmp_path):
    from vaekit.data.sources import UnreadableFileError

    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"part-{i:05d}.npy", np.full((10, 4), i, np.uint8))
    damaged = folder / "part-00001.npy"
    damaged.write_bytes(damaged.read_bytes()[:90])  # the header reads, the data is cut short
    with pytest.raises(UnreadableFileError, match="part-00001.npy"):
        vaekit.load_dataset(str(folder), in_memory="no")
    for in_memory in ("no", "yes"):
        data = vaekit.load_dataset(str(folder), in_memory=in_memory, skip_bad_files=True)
        assert [p for p, _ in data.skipped_files] == [str(damaged)] and data.num_train + len(data.x_test) == 20
