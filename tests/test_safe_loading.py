"""Training checkpoints are refused, never run or half-loaded, when foreign, damaged, of another version, or a pickle."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import save_file

import vaekit
from vaekit import CheckpointError
from vaekit.training import checkpoint as ckpt
from vaekit.config import FORMAT_VERSION
from vaekit.training.trainer import train


@pytest.fixture
def run_copy(trained_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(trained_run, target)
    return target


def resume(run, digits, epochs: int = 4):
    config = ckpt.load_config(run)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs))
    return train(config, digits, run_dir=run, resume=True, progress=False)


def latest(run):
    return run / ckpt.read_pointer(run)["latest"]


class Exploit:
    """Unpickling this would create the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.safetensors", "state.safetensors"])
def test_a_pickle_in_place_of_a_checkpoint_file_is_refused_without_running(run_copy, digits, tmp_path, victim):
    marker = tmp_path / "pwned"
    (latest(run_copy) / victim).write_bytes(pickle.dumps({"weights": Exploit(marker)}))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        resume(run_copy, digits)
    assert not marker.exists()


def test_a_torch_save_file_passed_to_the_loaders_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"x": Exploit(marker)}, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        ckpt.load_tensors(tmp_path / "weights.pt")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        vaekit.load(run)
    assert not marker.exists()


@pytest.mark.parametrize("version,match", [(FORMAT_VERSION + 1, f"format version {FORMAT_VERSION + 1}"),
                                           (FORMAT_VERSION - 1, f"format version {FORMAT_VERSION - 1}"),
                                           (None, "format version None")])
def test_a_checkpoint_of_another_format_version_is_refused(run_copy, digits, version, match):
    path = latest(run_copy) / "state.json"
    state = json.loads(path.read_text())
    state["format_version"] = version
    path.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=match):
        resume(run_copy, digits)
    pointer = json.loads((run_copy / "checkpoint.json").read_text())
    pointer["format_version"] = FORMAT_VERSION + 1
    (run_copy / "checkpoint.json").write_text(json.dumps(pointer))
    with pytest.raises(CheckpointError, match=f"version {FORMAT_VERSION + 1}; this vaekit reads version {FORMAT_VERSION}"):
        resume(run_copy, digits)


def test_checkpoint_weights_with_missing_extra_or_misshapen_tensors_are_named(run_copy, digits):
    path = latest(run_copy) / "model.safetensors"
    tensors = ckpt.load_tensors(path)
    first = sorted(tensors)[0]
    del tensors[first]
    tensors["intruder.weight"] = torch.zeros(2)
    tensors["mean_head.weight"] = torch.zeros(3, 3)
    save_file(tensors, path)
    with pytest.raises(CheckpointError) as err:
        resume(run_copy, digits)
    message = str(err.value)
    assert f"missing tensors: {first}" in message and "unexpected tensors: intruder.weight" in message
    assert "mean_head.weight (expected (4, 64), found (3, 3))" in message


@pytest.mark.parametrize("damage,match", [
    (lambda d: (d / "state.json").write_text("[1, 2]"), "not a JSON object"),
    (lambda d: (d / "state.json").write_text(json.dumps({"format_version": FORMAT_VERSION})), "lacks optimizer"),
    (lambda d: (d / "state.json").unlink(), "incomplete or damaged"),
    (lambda d: save_file({"x.exp_avg": torch.zeros(1)}, d / "optimizer.safetensors"), "optimizer state .* damaged"),
    (lambda d: save_file({"sums": torch.zeros(3)}, d / "state.safetensors"), "training state .* damaged"),
    (lambda d: save_file({"noise_rng": torch.zeros(3), "sums": torch.zeros(3, dtype=torch.float64)},
                         d / "state.safetensors"), "training state .* damaged"),
    (lambda d: (d / "optimizer.safetensors").write_bytes((d / "optimizer.safetensors").read_bytes()[:100]),
     "corrupt, truncated"),
])
def test_damaged_training_state_is_refused_with_a_checkpoint_error(run_copy, digits, damage, match):
    damage(latest(run_copy))
    with pytest.raises(CheckpointError, match=match):
        resume(run_copy, digits)


def test_an_intact_copy_resumes(run_copy, digits):
    """The refusals above come from the damage: the same copy, undamaged, resumes and trains on."""
    _, history = resume(run_copy, digits, epochs=4)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


def test_saving_the_same_step_again_never_touches_the_complete_checkpoint(run_copy):
    """A checkpoint of the step checkpoint.json names goes to a new directory; leftovers of cut writes are cleared."""
    complete = ckpt.read_pointer(run_copy)
    saved = ckpt.load_checkpoint(run_copy)
    model = vaekit.load(run_copy).model_
    optimizer = torch.optim.Adam(model.parameters())
    step = complete["global_step"]
    stale = run_copy / "checkpoints" / f"step-{step + 7:09d}"  # a later checkpoint whose write a crash cut short
    stale.mkdir()
    (run_copy / ".model.safetensors.abc123.tmp").write_bytes(b"half a file")
    (run_copy / "checkpoints" / ".state.json.x.tmp").write_bytes(b"{")
    directory = ckpt.save_checkpoint(run_copy, model=model, optimizer=optimizer, tensors=saved["tensors"],
                                     state={**saved["state"], "global_step": step})
    assert directory.name == f"step-{step:09d}-1" and ckpt.read_pointer(run_copy)["latest"].endswith("-1")
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir() if p.is_dir()) == [directory.name]
    assert ckpt.remove_stale_temp_files(run_copy) == 2
    assert not list(run_copy.rglob("*.tmp")) and ckpt.load_checkpoint(run_copy)["state"]["global_step"] == step
