"""Run directories: round trips give identical outputs; damaged or foreign files are refused, never run."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vaekit
from vaekit import CheckpointError
from vaekit.training import checkpoint as ckpt
from vaekit.config import FORMAT_VERSION


@pytest.fixture
def run_copy(trained_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(trained_run, target)
    return target


def test_save_load_round_trip_gives_identical_outputs(trained_run, tmp_path, digits):
    vae = vaekit.load(trained_run)
    x = digits.x_test[:50].numpy()
    vae.save(tmp_path / "copy")
    again = vaekit.load(tmp_path / "copy")
    np.testing.assert_array_equal(vae.transform(x), again.transform(x))
    np.testing.assert_array_equal(vae.sample(8, seed=1), again.sample(8, seed=1))
    np.testing.assert_array_equal(vae.reconstruct(x), again.reconstruct(x))
    for name, tensor in vae.model_.state_dict().items():
        assert torch.equal(tensor, again.model_.state_dict()[name])


def test_pickle_file_in_place_of_weights_is_refused_without_running(run_copy, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (run_copy / "model.safetensors").write_bytes(pickle.dumps({"weights": Exploit()}))
    torch.save({"x": Exploit()}, run_copy / "checkpoints" / "torch_style.pt")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        vaekit.load(run_copy)
    assert not marker.exists()


def test_truncated_weights_are_refused(run_copy):
    data = (run_copy / "model.safetensors").read_bytes()
    (run_copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        vaekit.load(run_copy)


def test_missing_extra_and_misshapen_tensors_are_named(run_copy):
    tensors = ckpt.load_tensors(run_copy / "model.safetensors")
    first = sorted(tensors)[0]
    del tensors[first]
    tensors["intruder.weight"] = torch.zeros(2)
    tensors["mean_head.weight"] = torch.zeros(3, 3)
    save_file(tensors, run_copy / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        vaekit.load(run_copy)
    message = str(err.value)
    assert f"missing tensors: {first}" in message
    assert "unexpected tensors: intruder.weight" in message
    assert "mean_head.weight (expected (4, 64), found (3, 3))" in message


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.update(format_version=FORMAT_VERSION + 1), "newer than this vaekit reads"),
    (lambda c: c.update(format_version=0), "older than this vaekit reads"),
    (lambda c: c.pop("format_version"), "not written by vaekit"),
    (lambda c: c["model"].update(latent_dim="four"), "'model.latent_dim' must be an integer"),
    (lambda c: c["model"].update(likelihood="poisson"), "likelihood must be one of"),
    (lambda c: c["model"].update(secret=1), "unknown field\\(s\\) in 'model': secret"),
    (lambda c: c["train"].update(lr=-1), "lr must be a positive number"),
    (lambda c: c["train"].update(lr_schedule="step"), "lr_schedule must be one of cosine, constant"),
    (lambda c: c.pop("model"), "no 'model' section"),
])
def test_invalid_config_is_refused_with_the_field_named(run_copy, edit, match):
    config = json.loads((run_copy / "config.json").read_text())
    edit(config)
    (run_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=match):
        vaekit.load(run_copy)


def test_not_json_and_not_a_run(run_copy, tmp_path):
    with pytest.raises(CheckpointError, match="not a vaekit run directory"):
        vaekit.load(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        vaekit.load(tmp_path / "nowhere")
    (run_copy / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        vaekit.load(run_copy)


def test_pointer_names_only_complete_checkpoints(run_copy):
    pointer = ckpt.read_pointer(run_copy)
    assert (run_copy / pointer["latest"] / "state.json").is_file()
    saved = ckpt.load_checkpoint(run_copy)
    assert saved["state"]["global_step"] == pointer["global_step"]
    # A pointer aimed outside the run directory is refused.
    (run_copy / "checkpoint.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "latest": "../../etc"}))
    with pytest.raises(CheckpointError, match="outside its run directory"):
        ckpt.load_checkpoint(run_copy)
    (run_copy / "checkpoint.json").write_text("garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        ckpt.load_checkpoint(run_copy)


def test_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    from vaekit import fileio

    target = tmp_path / "file.json"
    fileio.atomic_write_json(target, {"version": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", crash)
    with pytest.raises(OSError):
        fileio.atomic_write_json(target, {"version": 2})
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    import os
    import stat

    from vaekit import fileio

    mask = os.umask(0o022)
    try:
        fileio.atomic_write_text(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(mask)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o644
