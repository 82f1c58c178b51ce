"""The discretized logistic: a proper distribution over the levels, stable in its tails, and its helpers."""

from __future__ import annotations

import math

import pytest
import torch

from vaekit.models.likelihoods import DiscretizedLogistic, DiscretizedLogisticLikelihood, detect_levels, log1mexp

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


# --- the fused log-likelihood of evaluation (decoder_kernels.discretized_logistic_log_prob) ----------------------

def fused_cases(levels: int = 256, width: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder outputs (1, cases, 2, width) and values (cases, width), constant along each row, so that a row's
    sum is ``width`` times one value's log-probability (and the compiled loop runs its vector code and its tail).

    Raw log-scales beyond both soft-clamp limits and between; locations far below, at and far above [0, 1]
    (far tails: bin masses near e^-30000, where the plain difference of sigmoids is zero); the end levels 0
    and 1, their neighbours and a middle level."""
    raw_log_scales = torch.tensor([-40.0, -6.9, -3.0, 0.0, 3.0, 6.9, 40.0], dtype=torch.float64)
    raw_locs = torch.tensor([-60.0, -1.0, -0.5, -0.1, 0.0, 0.3, 0.5, 2.0, 60.0], dtype=torch.float64)
    values = torch.tensor([0, 1, levels // 2, levels - 2, levels - 1], dtype=torch.float64) / (levels - 1)
    grid = torch.cartesian_prod(raw_locs, raw_log_scales, values)
    params = grid[:, :2, None].expand(len(grid), 2, width)[None]
    return params, grid[:, 2, None].expand(len(grid), width)


def fused(params, x, levels=256, compile=False, bias=None):
    from vaekit.models.decoder_kernels import discretized_logistic_kernel

    lik = DiscretizedLogisticLikelihood((x.shape[-1],), num_levels=levels)
    kernel = discretized_logistic_kernel(levels, lik.MIN_LOG_SCALE, lik.MAX_LOG_SCALE, compile)
    return kernel(params, x, bias)


def distribution(params, x, levels=256):
    """The plain path: the likelihood's distribution (soft clamp, DiscretizedLogistic, Independent sum)."""
    return DiscretizedLogisticLikelihood((x.shape[-1],), num_levels=levels)(params).log_prob(x)


@pytest.mark.parametrize("levels,compile", [(256, False), (17, False), (2, False), (256, True)])
def test_fused_log_prob_equals_the_distribution_in_float64(levels, compile):
    params, x = fused_cases(levels)
    reference = distribution(params, x, levels)
    got = fused(params, x, levels, compile)
    assert got.dtype == torch.float64 and got.shape == reference.shape
    torch.testing.assert_close(got, reference, rtol=1e-12, atol=1e-9)
    assert reference.min() < -1e5  # the far tails are in there


@pytest.mark.parametrize("compile", [False, True])
def test_fused_log_prob_in_float32_is_as_accurate_as_the_plain_formula(compile):
    params, x = (t.float() for t in fused_cases())
    exact = distribution(params.double(), x.double())  # of the same (float32) numbers
    plain = distribution(params, x).double()
    got = fused(params, x, compile=compile)
    assert got.dtype == torch.float32
    got = got.double()
    # Float32 rounding. The plain formula is less accurate: 7e-5 off in the far tails, where it subtracts
    # standardized edges of size 1e4 to get a width of 1e-2 (the fused formula computes the width directly).
    torch.testing.assert_close(got, exact, rtol=1e-6, atol=2e-5)
    torch.testing.assert_close(plain, exact, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=4e-5)
    error = lambda t: ((t - exact).abs() / exact.abs().clamp_min(1)).max()  # noqa: E731
    assert error(got) <= error(plain)


def test_fused_log_prob_keeps_the_far_tails_and_small_bins():
    """Where the plain difference of two sigmoids rounds to zero, and at the largest scale, where the bin width
    in standard units is 8e-6 and 1 - e^-width must not be taken as exp(-width) - 1 (the compiled expm1)."""
    params, x = (t.float() for t in fused_cases())
    exact = distribution(params.double(), x.double())
    base = DiscretizedLogisticLikelihood((20,))(params).base_dist
    edges = [torch.sigmoid((x + sign * base.half_bin - base.loc) * torch.exp(-base.log_scale)) for sign in (1, -1)]
    tails = (edges[0] - edges[1] == 0).all(-1)[0] & (x[:, 0] > 0) & (x[:, 0] < 1)
    assert tails.sum() >= 10
    for compile in (False, True):
        got = fused(params, x, compile=compile).double()
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got[:, tails], exact[:, tails], rtol=1e-6, atol=0)
        widest = params[0, :, 1, 0] == 40.0  # the soft clamp's upper limit: scale 1000
        torch.testing.assert_close(got[:, widest], exact[:, widest], rtol=1e-6, atol=0)


def test_fused_log_prob_broadcasts_the_data_over_samples_and_adds_a_bias():
    torch.manual_seed(0)
    params = torch.randn(4, 3, 2, 1, 5, 5)
    x = torch.randint(0, 256, (3, 1, 5, 5)) / 255
    reference = DiscretizedLogisticLikelihood((1, 5, 5))(params).log_prob(x)
    got = fused(params.flatten(-3), x.flatten(-3))
    assert got.shape == (4, 3)
    torch.testing.assert_close(got, reference, rtol=1e-6, atol=1e-4)
    bias = torch.randn(2, 25)
    torch.testing.assert_close(fused(params.flatten(-3) - bias, x.flatten(-3), bias=bias), reference,
                               rtol=1e-6, atol=1e-4)


def test_the_kernel_stays_eager_when_compiling_fails(monkeypatch):
    from vaekit.models import decoder_kernels

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(decoder_kernels, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", broken)
    params, x = fused_cases()
    got = fused(params, x, compile=True)
    torch.testing.assert_close(got, distribution(params, x), rtol=1e-12, atol=1e-9)
    assert all(not hasattr(f, "_torchdynamo_orig_callable") for f in decoder_kernels._COMPILED.values())
    assert len(decoder_kernels._COMPILED) == 1
