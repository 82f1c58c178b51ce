"""Crash safety: real SIGKILLs of `vaekit train` at random moments, each resumed with --resume (benchmarks/fault_injection.py)."""

from __future__ import annotations

import pytest
from conftest import benchmark_module


@pytest.fixture(scope="module")
def fault_injection():
    with benchmark_module("fault_injection") as module:  # forked training processes find their entry point there
        yield module


@pytest.mark.slow
def test_random_sigkills_then_resume_end_bit_identical_to_an_uninterrupted_run(fault_injection, tmp_path):
    train_args = ["--epochs", "2", "--batch-size", "64", "--latent-dim", "4", "--hidden", "16", "--seed", "5",
                  "--device", "cpu", "--checkpoint-every", "2", "--no-progress"]
    result = fault_injection.run_kill_loop(12, seed=1, train_args=train_args, workdir=tmp_path, time_limit=90.0,
                                           log=lambda message: None)
    assert result["kills"] >= 8, result  # the time limit is a safety net, not the expected end
    assert result["kills_before_first_checkpoint"] < result["kills"]  # most kills resume from a checkpoint
    assert result["audit_problems"] == [], result["audit_problems"]
    assert result["rounds"] >= 1 and result["all_identical"], result["rounds_detail"]
    # Every kill's run was finished and compared: no kill is left out of the verdict.
    assert result["kills_in_identical_rounds"] == result["kills"]


def test_the_comparison_sees_a_one_bit_difference(fault_injection):
    """The verdict above can fail: flipping one bit of one weight is reported by name."""
    import torch

    weights = {"w": torch.tensor([1.0, 2.0])}
    reference = {"model": weights, "checkpoint_model": weights, "tensors": {}, "optimizer": {0: {"step": 3}},
                 "state": {"global_step": 3}, "metrics": []}
    flipped = torch.tensor([1.0, 2.0]).view(torch.int32)
    flipped[1] ^= 1
    other = {**reference, "model": {"w": flipped.view(torch.float32)}}
    assert fault_injection.differences(reference, reference) == []
    assert fault_injection.differences(reference, other) == ["model.w"]
    assert fault_injection.differences(reference, {**reference, "optimizer": {0: {"step": 4}}}) == ["optimizer.0.step"]
