"""Likelihood Regret and the posterior (amortization-gap) regret, against one-example-at-a-time references.

The references are independent of ``vaekit.anomaly.regret``: a deep copy of the model whose encoder is
fine-tuned with ``torch.optim.Adam`` on one example, its bound from ``VAEModel.elbo_terms`` (whose
posterior draws come from a generator seeded the same way the batched call's noise is built).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

import vaekit
from vaekit import ConfigError, DataError
from vaekit.anomaly.regret import (ADAM_BETAS, ADAM_EPS, MEMORY_BUDGET_BYTES, _adam_update, _scratch_for,
                                   encoder_chunk_size, likelihood_regret, posterior_regret)
from vaekit.config import ModelConfig
from vaekit.models.model import VAEModel

SCORES = (likelihood_regret, posterior_regret)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: a second thread only adds overhead (and on busy cores a lot of it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(arch: str = "mlp", likelihood: str = "bernoulli", prior: str = "standard-normal",
               batch_norm: bool = False, seed: int = 0) -> VAEModel:
    torch.manual_seed(seed)
    hidden = (4, 8) if arch == "conv" else (16,)
    model = VAEModel(ModelConfig(input_shape=(1, 8, 8), latent_dim=3, arch=arch, hidden=hidden,
                                 likelihood=likelihood, prior=prior, vamp_components=5))
    if batch_norm:  # after the first conv, with running statistics far from the identity
        norm = nn.BatchNorm2d(hidden[0])
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
        model.encoder = nn.Sequential(model.encoder[0], norm, *list(model.encoder)[1:])
    return model.double().eval()


def example_noise(n: int, num_samples: int, latent_dim: int, offset: int = 100) -> torch.Tensor:
    """Example i's draws as ``elbo_terms(x[i:i+1], generator=seeded(offset + i), num_samples=...)`` makes them."""
    rows = [torch.randn((num_samples, 1, latent_dim), generator=torch.Generator().manual_seed(offset + i),
                        dtype=torch.float64)[:, 0] for i in range(n)]
    return torch.stack(rows)  # (n, num_samples, latent_dim)


def reference_likelihood_regret(model: VAEModel, x: torch.Tensor, steps: int, lr: float, num_samples: int,
                                seed: int) -> float:
    """One example (x of shape (1, ...)): a copy of the encoder fine-tuned by torch.optim.Adam."""
    copied = copy.deepcopy(model).eval()
    with torch.no_grad():
        prior = model.prior_distribution()
    encoder_params = [*copied.encoder.parameters(), *copied.mean_head.parameters(), *copied.logvar_head.parameters()]

    def bound():
        generator = torch.Generator().manual_seed(seed)
        return copied.elbo_terms(x, generator=generator, prior=prior, num_samples=num_samples).neg_elbo.sum()

    return adam_regret(encoder_params, bound, steps, lr)


def reference_posterior_regret(model: VAEModel, x: torch.Tensor, steps: int, lr: float, eps: torch.Tensor) -> float:
    """One example: its (mu, logvar) refit by torch.optim.Adam; the bound from the decoder's distribution."""
    with torch.no_grad():
        mu, logvar = model.posterior_params(x)
    mu, logvar = mu.clone().requires_grad_(True), logvar.clone().requires_grad_(True)

    def bound():
        std = torch.exp(0.5 * logvar)
        z = mu + std * eps[:, None]  # (samples, 1, latent)
        reconstruction = -model.decode(z).log_prob(x).mean(0)
        kl = kl_divergence(Normal(mu, std), Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
        return (reconstruction + kl).sum()

    return adam_regret([mu, logvar], bound, steps, lr)


def adam_regret(params, bound, steps: int, lr: float) -> float:
    """The first value of ``bound()`` minus its lowest over ``steps`` steps of torch.optim.Adam on ``params``."""
    optimizer = torch.optim.Adam(params, lr=lr)
    bounds = []
    for step in range(steps + 1):
        value = bound()
        bounds.append(value.item())
        if step < steps:
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
    return bounds[0] - min(bounds)


def inputs_for(model: VAEModel, n: int, seed: int = 1) -> torch.Tensor:
    x = torch.rand((n, *model.input_shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x


# --- agreement with the one-example references ---------------------------------------------------

@pytest.mark.parametrize("arch, likelihood, prior, batch_norm", [
    ("mlp", "bernoulli", "standard-normal", False),
    ("conv", "gaussian-learned", "standard-normal", True),
    ("mlp", "bernoulli", "vamp", False),
])
def test_likelihood_regret_matches_one_example_adam_reference(arch, likelihood, prior, batch_norm):
    model = tiny_model(arch, likelihood, prior, batch_norm)
    model.train()  # the score must switch to eval mode itself (batch norm: running statistics) and back
    n, samples, steps, lr = 5, 2, 12, 1e-2
    x = inputs_for(model, n)
    noise = example_noise(n, samples, model.latent_dim)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batched = likelihood_regret(model, x, steps=steps, lr=lr, num_samples=samples, noise=noise)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # weights and running statistics
    model.eval()
    expected = torch.tensor([reference_likelihood_regret(model, x[i:i + 1], steps, lr, samples, 100 + i)
                             for i in range(n)], dtype=torch.float64)
    assert batched.dtype == torch.float64 and batched.shape == (n,)
    assert (expected > 1e-3).all()  # the comparison is about real gains, not zeros
    torch.testing.assert_close(batched, expected, rtol=1e-6, atol=1e-10)
    # Alone, in chunks of 2 and in one chunk: every example gets its own noise, so the same numbers.
    alone = torch.cat([likelihood_regret(model, x[i:i + 1], steps=steps, lr=lr, num_samples=samples,
                                         noise=noise[i:i + 1]) for i in range(n)])
    chunked = likelihood_regret(model, x, steps=steps, lr=lr, num_samples=samples, noise=noise, chunk_size=2)
    torch.testing.assert_close(alone, expected, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(chunked, expected, rtol=1e-6, atol=1e-10)


def test_seed_draws_the_documented_noise_and_chunks_do_not_change_it():
    model = tiny_model()
    x = inputs_for(model, 4)
    noise = torch.randn((4, 3, model.latent_dim), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for score in SCORES:
        seeded = score(model, x, steps=5, lr=1e-2, num_samples=3, seed=7)
        assert torch.equal(seeded, score(model, x, steps=5, lr=1e-2, num_samples=3, noise=noise))
        torch.testing.assert_close(seeded, score(model, x, steps=5, lr=1e-2, num_samples=3, seed=7, chunk_size=3),
                                   rtol=1e-9, atol=1e-12)
        assert not torch.equal(seeded, score(model, x, steps=5, lr=1e-2, num_samples=3, seed=8))


def test_posterior_regret_matches_one_example_adam_reference():
    model = tiny_model()
    n, samples, steps, lr = 6, 2, 20, 5e-2
    x = inputs_for(model, n)
    noise = example_noise(n, samples, model.latent_dim)
    batched = posterior_regret(model, x, steps=steps, lr=lr, num_samples=samples, noise=noise)
    expected = torch.tensor([reference_posterior_regret(model, x[i:i + 1], steps, lr, noise[i]) for i in range(n)],
                            dtype=torch.float64)
    assert (expected > 1e-3).all()
    torch.testing.assert_close(batched, expected, rtol=1e-6, atol=1e-10)
    alone = torch.cat([posterior_regret(model, x[i:i + 1], steps=steps, lr=lr, num_samples=samples,
                                        noise=noise[i:i + 1]) for i in range(n)])
    torch.testing.assert_close(alone, expected, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stacked_adam_step_is_torch_adam_bit_for_bit(dtype):
    """Including moments that stay 0 or are tiny (the square root's floor must not change a bit)."""
    generator = torch.Generator().manual_seed(3)
    shape = (3, 5, 7)
    grads = [torch.randn(shape, generator=generator, dtype=dtype) * (torch.rand(shape, generator=generator) < 0.4)
             * torch.tensor([1.0, 1e-3, 1e-21], dtype=dtype)[:, None, None] for _ in range(6)]
    start = torch.randn(shape, generator=generator, dtype=dtype)
    theirs = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theirs], lr=3e-3, betas=ADAM_BETAS, eps=ADAM_EPS, foreach=False)
    ours, exp_avg, exp_avg_sq = start.clone(), torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
    scratch = _scratch_for([exp_avg_sq])
    for step, grad in enumerate(grads, start=1):
        theirs.grad = grad.clone()
        optimizer.step()
        _adam_update([ours], [grad], [exp_avg], [exp_avg_sq], step, 3e-3, scratch)
    assert not torch.equal(ours, start)
    assert torch.equal(ours, theirs.detach())


# --- properties -------------------------------------------------------------------------------------

@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_without_steps_or_learning_rate(score, dtype):
    model = tiny_model().to(dtype)
    x = inputs_for(model, 4).to(dtype)
    for settings in ({"steps": 0}, {"steps": 6, "lr": 0.0}):
        regret = score(model, x, num_samples=2, **settings)
        assert torch.equal(regret, torch.zeros(4, dtype=torch.float64)), settings


@pytest.mark.parametrize("score", SCORES)
def test_nonnegative_even_when_adam_diverges_and_model_untouched(score):
    model = tiny_model()
    model.train()
    x = inputs_for(model, 6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for lr in (1e-3, 0.5, 50.0):  # 50: the refit blows up; the best bound over the steps stays the first
        regret = score(model, x, steps=8, lr=lr)
        assert torch.isfinite(regret).all() and (regret >= 0).all(), lr
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def test_empty_input_gives_empty_scores():
    model = tiny_model()
    for score in SCORES:
        assert score(model, torch.zeros((0, 1, 8, 8))).shape == (0,)


def test_chunk_size_follows_the_memory_budget():
    model = VAEModel(ModelConfig(input_shape=(1, 28, 28), latent_dim=20, arch="mlp", hidden=(400,)))
    encoder_values = 784 * 400 + 400 + 2 * (400 * 20 + 20)  # body and the two heads
    # Four copies per example (weights, gradient, two moments) and the scratch for the first layer's weights.
    assert encoder_chunk_size(model) == MEMORY_BUDGET_BYTES // ((4 * encoder_values + 784 * 400) * 4) == 164
    assert encoder_chunk_size(model.double()) == MEMORY_BUDGET_BYTES // ((4 * encoder_values + 784 * 400) * 8)
    assert encoder_chunk_size(model, budget_bytes=10) == 1


# --- a trained model: noise gains more than the training digits ----------------------------------

@pytest.fixture(scope="module")
def trained(digits):
    """A tiny Bernoulli MLP trained briefly on 300 binarized digits, with 24 training digits and 24 noise images."""
    generator = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.as_tensor(digits.x_train[:300]).float(), generator=generator)
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_shape=(1, 8, 8), latent_dim=4, hidden=(64,)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        batch = x[torch.randint(0, len(x), (64,), generator=generator)]
        loss = model.elbo_terms(batch, generator=generator).neg_elbo.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    noise = torch.rand((24, 1, 8, 8), generator=generator)
    return model, x[:24], noise


@pytest.mark.parametrize("score", SCORES)
def test_noise_gains_more_than_training_digits(trained, score):
    model, digits_x, noise = trained
    on_digits, on_noise = score(model, digits_x), score(model, noise)  # the defaults
    assert (on_noise > 0).all()
    assert on_noise.mean() > 2 * on_digits.mean()
    # AUROC of noise against the digits.
    auroc = (on_noise[:, None] > on_digits[None, :]).double().mean().item()
    assert auroc > 0.9


# --- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("settings, match", [
    ({"steps": -1}, "steps must be an integer of at least 0"),
    ({"steps": 2.5}, "steps must be an integer"),
    ({"lr": -1e-3}, "lr must be a finite number"),
    ({"lr": math.nan}, "lr must be a finite number"),
    ({"num_samples": 0}, "num_samples must be an integer of at least 1"),
    ({"chunk_size": 0}, "chunk_size must be a positive integer"),
    ({"seed": "one"}, "seed must be an integer"),
    ({"seed": 2**64}, "seed must be an integer"),
])
def test_bad_settings_are_config_errors(score, settings, match):
    model = tiny_model()
    with pytest.raises(ConfigError, match=match):
        score(model, inputs_for(model, 2), **settings)


@pytest.mark.parametrize("score", SCORES)
def test_bad_inputs_are_data_errors(score):
    model = tiny_model()
    with pytest.raises(DataError, match=r"shape \(n, 1, 8, 8\).*got \(2, 64\)"):
        score(model, torch.rand(2, 64))
    with pytest.raises(DataError, match="leading batch axis"):
        score(model, torch.rand(1, 8, 8))
    bad = inputs_for(model, 3)
    bad[1, 0, 2, 2] = math.nan
    with pytest.raises(DataError, match="NaN"):
        score(model, bad)
    with pytest.raises(DataError, match=r"bernoulli likelihood needs data in \[0, 1\]"):
        score(model, inputs_for(model, 2) + 1)
    with pytest.raises(DataError, match="torch.Tensor"):
        score(model, [[0.0] * 64])
    with pytest.raises(DataError, match=r"noise must have shape .*\(2, 1, 3\)"):
        score(model, inputs_for(model, 2), noise=torch.zeros(2, 3))


@pytest.mark.parametrize("score", SCORES)
def test_two_layer_models_and_non_models_are_refused(score):
    two_layers = VAEModel(ModelConfig(input_shape=(16,), latent_dim=4, hidden=(8,), upper_latent_dims=(2,),
                                      upper_hidden=(8,)))
    with pytest.raises(ConfigError, match="one-layer models only; this model has 2 stochastic layers"):
        score(two_layers, torch.rand(3, 16))
    with pytest.raises(ConfigError, match="needs a vaekit VAEModel"):
        score(vaekit.VAE(), torch.rand(3, 16))
