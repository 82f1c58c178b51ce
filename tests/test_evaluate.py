"""Evaluation: the importance-weighted estimate against exact numerical integration, the ELBO, chunking, active units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vaekit
from vaekit.api import make_run_config
from vaekit.config import ModelConfig
from vaekit.evaluation import likelihood as evaluate_module
from vaekit.models.decoder_kernels import (BernoulliMLPLogProb, DiscretizedLogisticLogProb, bernoulli_log_prob, bernoulli_log_prob_grouped, bernoulli_kernel)
from vaekit.evaluation.likelihood import _bytes_per_row, active_units, chunk_shape, elbo, evaluate, log_likelihood
from vaekit.models.model import VAEModel
from vaekit.training.trainer import train


@pytest.fixture(scope="module")
def binary_digits():
    return vaekit.load_dataset("digits", binarize="static", binarize_threshold=0.5)


@pytest.fixture(scope="module")
def two_d_model(binary_digits):
    """A model with a 2-D latent space, trained briefly: small enough to integrate p(x) on a grid."""
    config = make_run_config(binary_digits, latent_dim=2, hidden=(32,), arch="mlp", epochs=15, batch_size=64,
                             lr=3e-3, lr_schedule="constant", seed=0, device="cpu")
    model, _ = train(config, binary_digits, progress=False)
    return model.eval()


def exact_log_likelihood(model: VAEModel, x: torch.Tensor, half_width: float = 7.0, points: int = 601) -> torch.Tensor:
    """log p(x) = log of the integral of p(x|z) p(z) over a 2-D grid (midpoint rule, float64)."""
    axis = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    cell = (axis[1] - axis[0]) ** 2
    z = torch.cartesian_prod(axis, axis)
    model64 = VAEModel(model.config).double()
    model64.load_state_dict(model.state_dict())
    with torch.no_grad():
        logits = model64.decoder(z).reshape(len(z), -1)  # (grid, 64)
        flat = x.reshape(len(x), -1).double()
        log_px_z = flat @ logits.T - torch.nn.functional.softplus(logits).sum(-1)  # (examples, grid)
        log_pz = -0.5 * (z**2).sum(-1) - math.log(2 * math.pi)
        return torch.logsumexp(log_px_z + log_pz, dim=1) + torch.log(cell)


@pytest.mark.slow
def test_the_estimate_converges_to_the_exact_log_likelihood(two_d_model, binary_digits):
    x = binary_digits.split("test")[:150]
    exact = exact_log_likelihood(two_d_model, x)
    # The grid is fine enough: halving its spacing changes nothing that matters.
    coarse = exact_log_likelihood(two_d_model, x, points=301)
    assert (exact - coarse).abs().max() < 1e-3
    gaps = {k: exact - log_likelihood(two_d_model, x, num_importance_samples=k, seed=1).double()
            for k in (10, 100, 5000)}
    # K = 1 is noisy example by example: average ten seeds.
    gaps[1] = exact - torch.stack([log_likelihood(two_d_model, x, num_importance_samples=1, seed=s).double()
                                   for s in range(10)]).mean(0)
    mean = {k: gap.mean().item() for k, gap in gaps.items()}
    # A lower bound in expectation (the ELBO for K = 1) that closes as K grows ...
    for small, large in ((1, 10), (10, 100), (100, 5000)):
        difference = gaps[small] - gaps[large]
        assert difference.mean() > -2 * difference.std() / math.sqrt(len(x)), (small, large, mean)
    drop = gaps[1] - gaps[5000]
    assert drop.mean() > 4 * drop.std() / math.sqrt(len(x)), mean  # the ELBO is visibly below log p(x)
    # ... and with K = 5000 meets the integral, example by example.
    assert abs(mean[5000]) < 0.01, mean
    assert (gaps[5000].abs() < 0.05).float().mean() > 0.9 and gaps[5000].abs().max() < 0.25


def test_one_sample_reproduces_the_elbo_in_expectation(two_d_model, binary_digits):
    x = binary_digits.split("test")
    single = -log_likelihood(two_d_model, x, num_importance_samples=1, seed=3).double()
    neg_elbo = elbo(two_d_model, x, seed=4).neg_elbo.double()  # closed-form KL, other draws
    difference = single - neg_elbo
    stderr = difference.std() / math.sqrt(len(x))
    assert abs(difference.mean()) < 4 * stderr, (difference.mean(), stderr)


def test_the_estimate_rises_with_k_and_stays_above_the_elbo(trained_run, digits):
    model = vaekit.load(trained_run).model_
    x = digits.split("test")
    # Each estimate averaged over 8 seeds: the gain from 1 to 10 draws is a few hundredths of a nat per example,
    # about the noise of one single-draw estimate.
    result = {k: torch.stack([log_likelihood(model, x, num_importance_samples=k, seed=seed).double()
                              for seed in range(8)]).mean(0) for k in (1, 10, 100)}
    neg_elbo = elbo(model, x, seed=0).neg_elbo.double()
    for small, large in ((1, 10), (10, 100)):
        gain = result[large] - result[small]
        assert gain.mean() > 2 * gain.std() / math.sqrt(len(x)), (small, large)
    above = result[100] + neg_elbo  # log p_100(x) - ELBO (one draw per example)
    assert above.mean() > 0
    # Against the ELBO averaged over the same 100 draws, Jensen's inequality holds example by example (up to the
    # difference between the closed-form KL and its average over the draws, about 0.1 nats).
    evaluation = evaluate(model, x, num_importance_samples=100, seed=0)
    assert (evaluation.per_example["neg_elbo"] - evaluation.per_example["nll"] > -0.3).mean() > 0.99


def test_results_depend_on_the_seed_not_on_chunking(trained_run, digits):
    model = vaekit.load(trained_run).model_
    x = digits.split("test")[:8]
    k = 1100  # more than one noise block
    reference = log_likelihood(model, x, num_importance_samples=k, seed=5)
    for batch_size, sample_chunk in ((1, k), (3, 300), (8, 97), (4, k - 1)):
        again = log_likelihood(model, x, num_importance_samples=k, seed=5, batch_size=batch_size,
                               sample_chunk=sample_chunk)
        torch.testing.assert_close(again, reference, rtol=0, atol=1e-4)
    tiny_budget = log_likelihood(model, x, num_importance_samples=k, seed=5, memory_budget_mb=0.05)
    torch.testing.assert_close(tiny_budget, reference, rtol=0, atol=1e-4)
    # Each example has its own stream: evaluating fewer examples changes nothing for those evaluated.
    torch.testing.assert_close(log_likelihood(model, x[:3], num_importance_samples=k, seed=5), reference[:3],
                               rtol=0, atol=1e-4)
    assert not torch.equal(log_likelihood(model, x, num_importance_samples=k, seed=6), reference)


def test_chunks_fit_the_memory_budget():
    model = VAEModel(ModelConfig(input_shape=(1, 28, 28), latent_dim=20, hidden=(400,)))
    for budget, k in ((1, 5000), (64, 5000), (256, 1), (256, 10**7)):
        examples, samples = chunk_shape(model, k, budget)
        assert examples * samples * _bytes_per_row(model) <= max(budget * 2**20, _bytes_per_row(model))
        assert 1 <= samples <= k
    examples, samples = chunk_shape(model, 5000, 256)
    assert samples == 2500 and examples == 1  # two equal chunks, not 4096 + 904


def test_bernoulli_kernels_equal_the_distribution():
    logits = torch.randn(3, 4, 16, dtype=torch.float64) * 20
    bias = torch.randn(16, dtype=torch.float64)
    target = torch.rand(4, 16, dtype=torch.float64).round()
    reference = torch.distributions.Bernoulli(logits=logits + bias).log_prob(target.expand_as(logits)).sum(-1)
    torch.testing.assert_close(bernoulli_log_prob(logits, target, bias), reference)
    torch.testing.assert_close(bernoulli_log_prob_grouped(logits, target, bias), reference)


@pytest.mark.parametrize("hidden,activation", [((64,), "relu"), ((32, 16), "relu"), ((64,), "tanh")])
def test_fused_decoder_path_equals_the_distribution(hidden, activation):
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_shape=(1, 8, 8), latent_dim=5, hidden=hidden, activation=activation))
    x = (torch.rand(6, 1, 8, 8) > 0.5).float()
    z = torch.randn(9, 6, 5)
    fast = BernoulliMLPLogProb(model.decoder, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(z, x), model.decode(z).log_prob(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("compile", [False, True])
def test_collapsed_relu_decoder_equals_the_distribution_in_float64(compile):
    """The one-hidden-layer path: units active for every draw (folded into a latent-sized matrix), for none
    (dropped) and for some, with binary and [0, 1] data, against torch.distributions in float64."""
    torch.manual_seed(1)
    model = VAEModel(ModelConfig(input_shape=(1, 8, 8), latent_dim=5, hidden=(48,)))
    first = model.decoder[0][0]
    with torch.no_grad():
        first.bias[:16] += 50.0   # active for every draw
        first.bias[16:32] -= 50.0  # active for none
    x = torch.rand(7, 1, 8, 8)
    x[:4] = (x[:4] > 0.5).float()
    z = torch.randn(300, 7, 5)
    fast = BernoulliMLPLogProb(model.decoder, 64, compile=compile)
    assert fast.collapse
    with torch.no_grad():
        pre = first(z)
        assert ((pre > 0).all(0).sum(-1) >= 16).all() and ((pre <= 0).all(0).sum(-1) >= 16).all()
        assert (((pre > 0).any(0) & (pre <= 0).any(0)).sum(-1) > 0).all()  # and some mixed units
        reference = model.double().decode(z.double()).log_prob(x.double())
        torch.testing.assert_close(fast(z, x).double(), reference, rtol=1e-6, atol=2e-4)


@pytest.mark.slow
def test_compiled_kernel_matches_eager(trained_run, digits):
    model = vaekit.load(trained_run).model_
    x = (digits.split("test")[:50] > 0.5).float()
    eager = log_likelihood(model, x, num_importance_samples=64, seed=0, compile=False)
    compiled = log_likelihood(model, x, num_importance_samples=64, seed=0, compile=True)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-3)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_discretized_logistic_decoder_path_equals_the_distribution_in_float64(arch):
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_shape=(1, 8, 8), latent_dim=5, hidden=(16, 8), arch=arch,
                                 likelihood="discretized-logistic", num_levels=17)).double()
    with torch.no_grad():  # wide and narrow scales, locations inside and outside [0, 1]
        last = [m for m in model.decoder.modules() if isinstance(m, (torch.nn.Linear, torch.nn.ConvTranspose2d))][-1]
        last.weight.mul_(8.0)
    x = torch.randint(0, 17, (6, 1, 8, 8), dtype=torch.float64) / 16
    x[0], x[1] = 0.0, 1.0
    z = torch.randn(9, 6, 5, dtype=torch.float64)
    fast = DiscretizedLogisticLogProb(model)
    with torch.no_grad():
        reference = model.decode(z).log_prob(x)
        torch.testing.assert_close(fast(z, x), reference, rtol=1e-12, atol=1e-9)


@pytest.fixture(scope="module")
def discretized_model(digits):
    """A discretized-logistic MLP (17 levels, as digits hold), trained briefly."""
    config = make_run_config(digits, latent_dim=4, hidden=(32, 32), arch="mlp", likelihood="discretized-logistic",
                             epochs=3, batch_size=64, seed=0, device="cpu")
    model, _ = train(config, digits, progress=False)
    assert model.likelihood.num_levels == 17
    return model.eval()


def test_evaluation_is_unchanged_by_the_fused_discretized_logistic(discretized_model, digits, monkeypatch):
    """evaluate() with the distribution's log_prob (the path before the fused kernel), with the fused formula
    eager and compiled: the same numbers, the same seed, up to float32 rounding."""
    x = digits.split("test")[:40]
    results = {}
    for name, compile in (("eager", False), ("compiled", True)):
        results[name] = evaluate(discretized_model, x, num_importance_samples=100, seed=3, batch_size=8,
                                 compile=compile)
    with monkeypatch.context() as patch:
        patch.setattr(evaluate_module, "_decoder_log_prob",
                      lambda model, compile: lambda z, x: model.decode(z).log_prob(x))
        results["distribution"] = evaluate(discretized_model, x, num_importance_samples=100, seed=3, batch_size=8)
    reference = results.pop("distribution")
    assert reference.bits_per_dim is not None and 0 < reference.nll < 500
    for result in results.values():
        for name, values in reference.per_example.items():
            np.testing.assert_allclose(result.per_example[name], values, rtol=1e-5, atol=1e-4, err_msg=name)
        for name in ("nll", "neg_elbo", "reconstruction", "kl", "bits_per_dim", "elbo_bits_per_dim"):
            assert getattr(result, name) == pytest.approx(getattr(reference, name), rel=1e-6), name
    # and log_likelihood alone, with another chunking
    np.testing.assert_allclose(-log_likelihood(discretized_model, x, 100, seed=3, sample_chunk=30).numpy(),
                               reference.per_example["nll"], rtol=1e-5, atol=1e-4)


def test_evaluate_reports_means_standard_errors_and_bits(trained_run, digits):
    model = vaekit.load(trained_run).model_
    x = digits.split("test")[:100]
    result = evaluate(model, x, num_importance_samples=20, seed=0)
    for name in ("neg_elbo", "reconstruction", "kl", "nll"):
        values = result.per_example[name]
        assert getattr(result, name) == pytest.approx(values.mean())
        assert getattr(result, f"{name}_stderr") == pytest.approx(values.std(ddof=1) / math.sqrt(len(values)))
    assert result.neg_elbo == pytest.approx(result.reconstruction + result.kl)
    # The same draws and seed as log_likelihood.
    np.testing.assert_allclose(result.per_example["nll"],
                               -log_likelihood(model, x, num_importance_samples=20, seed=0).numpy(), rtol=1e-6)
    # Closed-form KL, matching the ELBO's.
    np.testing.assert_allclose(result.per_example["kl"], elbo(model, x).kl.numpy(), rtol=1e-5)
    assert sum(result.kl_per_dim) == pytest.approx(result.kl, rel=1e-5)
    # digits are not binary, so the Bernoulli likelihood gives no probabilities: no bits/dim.
    assert result.bits_per_dim is None
    binary = (x > 0.5).float()
    result = evaluate(model, binary, num_importance_samples=20)
    assert result.bits_per_dim == pytest.approx(result.nll / (64 * math.log(2)))
    assert set(result.to_dict()) >= {"neg_elbo", "reconstruction", "kl", "nll", "nll_stderr", "importance_samples",
                                     "active_units", "bits_per_dim"}


def test_active_units_follow_the_covariance_of_posterior_means(digits):
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_shape=(1, 8, 8), latent_dim=5, hidden=(16,)))
    with torch.no_grad():
        model.mean_head.weight[3:].zero_()  # units 3 and 4: the same posterior mean for every x
        model.mean_head.weight[:3] *= 10  # units 0-2: means that vary with x
    x = digits.split("test")
    counts, variances = active_units(model, x)
    with torch.no_grad():
        means = model.posterior_params(x)[0].double().numpy()
    np.testing.assert_allclose(variances, means.var(0, ddof=1), rtol=1e-5)
    assert counts == [int((means.var(0, ddof=1) > 0.01).sum())] and counts[0] == 3


def test_two_layer_and_vamp_models_evaluate(binary_digits):
    config = make_run_config(binary_digits, latent_dim=6, hidden=(32,), arch="mlp", upper_latent_dims=(3,),
                             upper_hidden=(16,), prior="vamp", vamp_components=10, epochs=1, device="cpu")
    model, _ = train(config, binary_digits, progress=False)
    x = binary_digits.split("test")[:30]
    result = evaluate(model.eval(), x, num_importance_samples=20)
    assert len(result.kl_per_dim) == 9 and len(result.active_units_per_layer) == 2
    assert result.bits_per_dim is not None and math.isfinite(result.nll)
    # No closed form here: the KL is the average over the same draws as the estimate, so -ELBO = rec + KL
    # and K = 1 is the ELBO's one-sample estimate.
    assert result.neg_elbo == pytest.approx(result.reconstruction + result.kl)
    assert result.nll <= result.neg_elbo + 3 * result.neg_elbo_stderr


def test_the_sampled_kl_per_dimension_spends_a_fixed_budget_of_draws(binary_digits, monkeypatch):
    """64 draws per example on small sets; on large ones fewer (at least 4), about 2^16 in all: the VampPrior's
    per-dimension marginals made 64 draws of each of 10,000 examples take minutes. Same estimate, within noise."""
    from vaekit.evaluation import likelihood as ev

    config = make_run_config(binary_digits, latent_dim=4, hidden=(32,), arch="mlp", prior="vamp",
                             vamp_components=10, epochs=1, device="cpu")
    model, _ = train(config, binary_digits, progress=False)
    model.eval()
    x = binary_digits.split("test")[:64]
    draws, elbo_terms = [], model.elbo_terms
    monkeypatch.setattr(model, "elbo_terms", lambda *a, **k: draws.append(k["num_samples"]) or elbo_terms(*a, **k))
    _, small = ev._kl_per_example_and_dim(model, x, 1024, seed=0)
    _, large = ev._kl_per_example_and_dim(model, x.repeat(256, 1, 1, 1), 4096, seed=0)  # 16,384 examples
    assert draws == [64] + [4] * 4
    torch.testing.assert_close(large, small, rtol=0.05, atol=0.01)


def test_bad_arguments(trained_run, digits):
    model = vaekit.load(trained_run).model_
    with pytest.raises(vaekit.ConfigError, match="at least 1"):
        log_likelihood(model, digits.x_test[:2], num_importance_samples=0)
    with pytest.raises(vaekit.ConfigError, match="no examples"):
        evaluate(model, digits.x_test[:0])
    with pytest.raises(vaekit.DataError, match="needs data in \\[0, 1\\]"):
        evaluate(model, digits.x_test[:3] * 5)
