"""The model as the theory states it: closed-form KL, likelihoods, reparameterization, shapes."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

from vaekit.config import ModelConfig
from vaekit.likelihoods import LIKELIHOODS, MIN_LOG_STD, soft_clamp
from vaekit.model import VAEModel


def make_model(**overrides) -> VAEModel:
    torch.manual_seed(0)
    config = dict(input_shape=(6,), latent_dim=3, hidden=(16,), likelihood="gaussian-learned")
    config.update(overrides)
    return VAEModel(ModelConfig(**config)).double()


def test_closed_form_kl_matches_monte_carlo():
    model = make_model()
    x = torch.randn(5, 6, dtype=torch.float64)
    q = model.encode(x)
    terms = model.elbo_terms(x)
    z = q.sample((200_000,))
    prior = Independent(Normal(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)), 1)
    monte_carlo = (q.log_prob(z) - prior.log_prob(z)).mean(0)
    standard_error = (q.log_prob(z) - prior.log_prob(z)).std(0) / math.sqrt(len(z))
    assert torch.all((terms.kl - monte_carlo).abs() < 5 * standard_error + 1e-6)
    # and the textbook formula: 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2)
    mu, logvar = model.posterior_params(x)
    textbook = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)
    torch.testing.assert_close(terms.kl, textbook)
    torch.testing.assert_close(terms.kl_per_dim.sum(-1), terms.kl)


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_likelihood_log_prob_matches_torch_distributions(name):
    shape = (2, 3, 4)
    lik = LIKELIHOODS[name](shape) if name != "gaussian" else LIKELIHOODS[name](shape, std=0.7)
    lik = lik.double()
    if name == "gaussian-learned":
        with torch.no_grad():
            lik.log_std.copy_(torch.randn(shape, dtype=torch.float64) * 0.3)
    params = torch.randn(5, lik.params_per_value, *shape, dtype=torch.float64)
    x = torch.rand(5, *shape, dtype=torch.float64)
    if name == "bernoulli":
        x = (x > 0.5).double()
        reference = Bernoulli(logits=params[:, 0]).log_prob(x)
    elif name == "gaussian":
        reference = Normal(params[:, 0], 0.7).log_prob(x)
    elif name == "gaussian-learned":
        reference = Normal(params[:, 0], lik.log_std.exp()).log_prob(x)
    else:
        reference = Normal(params[:, 0], (0.5 * params[:, 1]).exp()).log_prob(x)
    got = lik(params).log_prob(x)
    assert got.shape == (5,)
    torch.testing.assert_close(got, reference.flatten(1).sum(-1))


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_negative_log_prob_equals_the_distributions_log_prob_with_its_gradient(name):
    """The training loss (a fused formula for Bernoulli) against torch.distributions, broadcasting x over samples."""
    shape = (1, 3, 4)
    lik = LIKELIHOODS[name](shape).double()
    params = torch.randn(7, 5, lik.params_per_value, *shape, dtype=torch.float64, requires_grad=True)
    x = torch.rand(5, *shape, dtype=torch.float64)
    if name == "bernoulli":
        x[:3] = (x[:3] > 0.5).double()  # binary examples and [0, 1] intensities
    fused = lik.negative_log_prob(params, x)
    reference = -lik(params).log_prob(x)
    assert fused.shape == (7, 5)
    torch.testing.assert_close(fused, reference)
    (fused_grad,) = torch.autograd.grad(fused.sum(), params)
    (reference_grad,) = torch.autograd.grad(reference.sum(), params)
    torch.testing.assert_close(fused_grad, reference_grad)
    if name == "bernoulli":  # and the textbook formula, -sum x log p + (1 - x) log(1 - p), p = sigmoid(logit)
        p = torch.sigmoid(params[:, :, 0].detach())
        textbook = -(x * p.log() + (1 - x) * (1 - p).log()).sum((-3, -2, -1))
        torch.testing.assert_close(fused.detach(), textbook)


def test_fixed_gaussian_is_squared_error_up_to_a_constant():
    lik = LIKELIHOODS["gaussian"]((10,), std=1.0)
    mean, x = torch.randn(4, 1, 10), torch.randn(4, 10)
    nll = -lik(mean).log_prob(x)
    expected = 0.5 * ((x - mean[:, 0]) ** 2).sum(-1) + 0.5 * 10 * math.log(2 * math.pi)
    torch.testing.assert_close(nll, expected)


def test_gradients_flow_through_the_reparameterized_sample():
    model = make_model()
    x = torch.randn(8, 6, dtype=torch.float64)
    mu, logvar = model.posterior_params(x)
    mu.retain_grad()
    logvar.retain_grad()
    std = torch.exp(0.5 * logvar)
    z = model.reparameterize(mu, std)
    model.decode(z).log_prob(x).sum().backward()
    assert mu.grad is not None and mu.grad.abs().sum() > 0
    assert logvar.grad is not None and logvar.grad.abs().sum() > 0
    assert model.mean_head.weight.grad.abs().sum() > 0 and model.logvar_head.weight.grad.abs().sum() > 0


def test_reparameterization_has_the_posterior_moments():
    mu, std = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])
    z = VAEModel.reparameterize(mu, std, num_samples=200_000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(z.mean(0), mu, atol=0.03, rtol=0)
    torch.testing.assert_close(z.std(0), std, atol=0.03, rtol=0)


@pytest.mark.parametrize("shape,arch", [((1, 8, 8), "mlp"), ((1, 8, 8), "conv"), ((1, 28, 28), "conv"),
                                        ((3, 17, 9), "conv"), ((3, 32, 32), "conv"), ((13,), "mlp")])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian-decoder"])
def test_decoder_output_matches_data_shape(shape, arch, likelihood):
    model = VAEModel(ModelConfig(input_shape=shape, latent_dim=5, arch=arch,
                                 hidden=(8, 16) if arch == "conv" else (32,), likelihood=likelihood))
    x = torch.rand(4, *shape)
    dist = model.decode(model.encode(x).rsample())
    assert dist.mean.shape == x.shape
    assert dist.log_prob(x).shape == (4,)
    # several samples per example keep their own axis
    weights = model.log_importance_weights(x, num_samples=7)
    assert weights.shape == (7, 4)


def test_iwae_weights_with_one_sample_average_to_the_elbo():
    """E_q[log p(x, z) - log q(z|x)] is the ELBO; with the KL in closed form the two estimates must agree."""
    model = make_model()
    x = torch.randn(3, 6, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    log_w = model.log_importance_weights(x, num_samples=200_000, generator=gen)
    stderr_w = log_w.std(0) / math.sqrt(log_w.shape[0])
    reconstructions = model.elbo_terms(x.repeat(50_000, 1), generator=gen).reconstruction.view(50_000, len(x))
    stderr_r = reconstructions.std(0) / math.sqrt(len(reconstructions))
    elbo_closed_form_kl = -(reconstructions.mean(0) + model.elbo_terms(x).kl)
    assert torch.all((log_w.mean(0) - elbo_closed_form_kl).abs() < 5 * (stderr_w + stderr_r))


def test_soft_clamp_is_identity_inside_and_bounded_outside():
    x = torch.linspace(-5, 5, 11)
    torch.testing.assert_close(soft_clamp(x, -30.0, 20.0), x, atol=1e-6, rtol=0)
    extreme = soft_clamp(torch.tensor([-1e4, 1e4], requires_grad=True), -30.0, 20.0)
    assert extreme[0] >= -30.0 and extreme[1] <= 20.0
    assert math.exp(MIN_LOG_STD) == pytest.approx(1e-3)


def test_sampling_uses_only_the_decoder():
    model = make_model()
    z = model.sample_latent(10, generator=torch.Generator().manual_seed(0))
    assert z.shape == (10, 3)
    for module in (model.encoder, model.mean_head, model.logvar_head):
        module.register_forward_hook(lambda *a: (_ for _ in ()).throw(AssertionError("encoder used")))
    assert model.decode(z.double()).mean.shape == (10, 6)
