"""The discretized logistic: a proper distribution over the levels, stable in its tails, and its helpers."""

from __future__ import annotations

import math

import pytest
import torch

from vaekit.likelihoods import DiscretizedLogistic, DiscretizedLogisticLikelihood, detect_levels, log1mexp

# Locations inside and far outside [0, 1], scales from a hundredth of a level to many times the range.
LOCS = torch.tensor([0.5, 0.0, 1.0, 0.37, -3.0, 4.0, 0.5, 0.2, 0.9], dtype=torch.float64)
LOG_SCALES = torch.log(torch.tensor([0.1, 0.02, 0.02, 1e-3 / 255, 0.05, 0.3, 50.0, 1e-4, 3e-3], dtype=torch.float64))


@pytest.mark.parametrize("levels", [256, 17, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_probabilities_of_all_levels_sum_to_one(levels, dtype):
    values = torch.arange(levels, dtype=dtype) / (levels - 1)
    dist = DiscretizedLogistic(LOCS.to(dtype)[:, None], LOG_SCALES.to(dtype)[:, None], levels)
    log_probs = dist.log_prob(values[None, :].expand(len(LOCS), levels))
    assert torch.isfinite(log_probs).all()
    totals = torch.logsumexp(log_probs.double(), dim=1).exp()
    tolerance = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(totals, torch.ones_like(totals), rtol=0, atol=tolerance)


def test_tiny_bin_masses_keep_their_logarithm():
    """Far in a tail the mass of a bin is about pdf * width; the plain difference of two sigmoids rounds to 0."""
    loc, log_scale, value = torch.tensor(0.0), torch.tensor(math.log(0.01)), torch.tensor(128 / 255)
    got = DiscretizedLogistic(loc, log_scale).log_prob(value)
    lower, upper = (127.5 / 255) / 0.01, (128.5 / 255) / 0.01
    # sigmoid(u) - sigmoid(l) = sigmoid(-l) - sigmoid(-u): two numbers near 1e-22, no cancellation in float64.
    reference = math.log(1 / (1 + math.exp(lower)) - 1 / (1 + math.exp(upper)))
    assert got.item() == pytest.approx(reference, abs=1e-4)
    assert reference < -50
    plain = torch.sigmoid(torch.tensor((128.5 / 255) / 0.01)) - torch.sigmoid(torch.tensor((127.5 / 255) / 0.01))
    assert plain.item() == 0.0  # what the stable formula avoids


def test_mean_and_sampling_agree_with_the_probabilities():
    dist = DiscretizedLogistic(torch.tensor([0.3, 0.95, -0.2]), torch.log(torch.tensor([0.05, 0.1, 0.2])), 256)
    values = torch.arange(256, dtype=torch.float32) / 255
    probs = dist.log_prob(values[:, None].expand(256, 3)).exp()  # (256, 3)
    exact_mean = (probs * values[:, None]).sum(0)
    torch.testing.assert_close(dist.mean, exact_mean, rtol=0, atol=1e-5)
    draws = torch.stack([dist.sample_with(torch.Generator().manual_seed(i)) for i in range(4000)])
    assert set(torch.unique(draws * 255).round().tolist()) <= set(range(256))
    torch.testing.assert_close(draws.mean(0), exact_mean, rtol=0, atol=0.01)
    # The end values take the tails: for the location below 0 the first value is the most likely draw.
    assert (draws[:, 2] == 0).float().mean().item() == pytest.approx(probs[0, 2].item(), abs=0.03)


def test_log1mexp_is_accurate_for_small_and_large_arguments():
    t = torch.tensor([1e-10, 1e-3, 0.5, math.log(2.0), 2.0, 40.0], dtype=torch.float64)
    expected = torch.tensor([math.log(-math.expm1(-v)) for v in t.tolist()], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(t), expected)


def test_data_must_lie_on_the_levels():
    likelihood = DiscretizedLogisticLikelihood((4,), num_levels=256)
    likelihood.check_data(torch.tensor([[0.0, 1 / 255, 128 / 255, 1.0]]))
    with pytest.raises(ValueError, match="multiples of 1/255"):
        likelihood.check_data(torch.tensor([[0.001, 0.5, 0.3, 0.999]]))
    with pytest.raises(ValueError, match="needs data in \\[0, 1\\]"):
        likelihood.check_data(torch.tensor([[0.0, 2.0, 0.0, 0.0]]))
    assert likelihood.is_discrete(torch.zeros(2, 4))


def test_detect_levels():
    assert detect_levels(torch.arange(256.0) / 255) == 256
    assert detect_levels(torch.arange(17.0) / 16) == 17
    assert detect_levels(torch.tensor([0.0, 1.0, 1.0])) == 2
    assert detect_levels(torch.tensor([0.0, 0.123456, 0.654321])) is None
    assert detect_levels(torch.tensor([-1.0, 0.5])) is None
