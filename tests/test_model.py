"""The model as the theory states it: closed-form KL, likelihoods, reparameterization, shapes."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

from vaekit.config import ModelConfig
from vaekit.models.likelihoods import LIKELIHOODS, MIN_LOG_STD, soft_clamp, soft_clamp_inverse

# Likelihoods of arrays and images; the table likelihood, built from a table's columns, is checked against
# torch.distributions column kind by column kind in test_table.py.
ARRAY_LIKELIHOODS = sorted(set(LIKELIHOODS) - {"table"})
from vaekit.models.model import VAEModel


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


@pytest.mark.parametrize("name", ARRAY_LIKELIHOODS)
def test_likelihood_log_prob_matches_torch_distributions(name):
    shape = (2, 3, 4)
    lik = LIKELIHOODS[name](shape) if name != "gaussian" else LIKELIHOODS[name](shape, std=0.7)
    lik = lik.double()
    if name == "gaussian-learned":
        with torch.no_grad():
            lik.log_std.copy_(torch.randn(shape, dtype=torch.float64) * 0.3)
    params = torch.randn(5, lik.params_per_value, *shape, dtype=torch.float64)
    x = torch.rand(5, *shape, dtype=torch.float64)
    if name == "discretized-logistic":
        x = torch.randint(0, 256, x.shape, dtype=torch.float64) / 255
        x.view(-1)[:4] = torch.tensor([0.0, 1.0, 0.0, 1.0])  # both end values, which take the tails
        base = lik(params).base_dist
        reference = discretized_logistic_reference(base.loc, base.log_scale.exp(), x)
        torch.testing.assert_close(base.loc, params[:, 0] + 0.5)
    elif name == "bernoulli":
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


@pytest.mark.parametrize("name", ARRAY_LIKELIHOODS)
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


def discretized_logistic_reference(loc, scale, x, levels=256):
    """Bin masses from the CDF of torch's logistic distribution (a sigmoid-transformed uniform)."""
    from torch.distributions import AffineTransform, SigmoidTransform, TransformedDistribution, Uniform

    logistic = TransformedDistribution(Uniform(torch.zeros_like(loc), torch.ones_like(loc)),
                                       [SigmoidTransform().inv, AffineTransform(loc, scale)])
    half = 0.5 / (levels - 1)
    upper = torch.where(x > 1 - half, torch.ones_like(x), logistic.cdf((x + half).clamp(max=1 - 1e-12)))
    lower = torch.where(x < half, torch.zeros_like(x), logistic.cdf((x - half).clamp(min=1e-12)))
    return torch.log(upper - lower)


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
    # Its inverse, near the bounds too, where the clamp is far from the identity.
    y = torch.tensor([-29.99, -29.0, -3.0, 0.0, 19.0, 19.99], dtype=torch.float64)
    torch.testing.assert_close(soft_clamp(soft_clamp_inverse(y, -30.0, 20.0), -30.0, 20.0), y)


def test_sampling_uses_only_the_decoder():
    model = make_model()
    z = model.sample_latent(10, generator=torch.Generator().manual_seed(0))
    assert z.shape == (10, 3)
    for module in (model.encoder, model.mean_head, model.logvar_head):
        module.register_forward_hook(lambda *a: (_ for _ in ()).throw(AssertionError("encoder used")))
    assert model.decode(z.double()).mean.shape == (10, 6)


# --- several stochastic layers and the VampPrior ---------------------------------------------------

ONE_LAYER_KEYS = ["encoder.1.0.weight", "encoder.1.0.bias", "mean_head.weight", "mean_head.bias",
                  "logvar_head.weight", "logvar_head.bias", "decoder.0.0.weight", "decoder.0.0.bias",
                  "decoder.0.2.weight", "decoder.0.2.bias"]


def test_one_layer_model_keeps_the_tensor_names_of_saved_runs():
    """Run directories written before stochastic layers and priors existed must load unchanged."""
    model = VAEModel(ModelConfig(input_shape=(1, 8, 8), latent_dim=4, hidden=(64,)))
    assert list(model.state_dict()) == ONE_LAYER_KEYS
    # Its initial weights are those a seed gave before: the plain VAE's layers, drawn in order, and nothing else.
    torch.manual_seed(0)
    plain = [torch.nn.Linear(64, 64), torch.nn.Linear(64, 4), torch.nn.Linear(64, 4), torch.nn.Linear(4, 64),
             torch.nn.Linear(64, 64)]
    after = torch.rand(1)
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_shape=(1, 8, 8), latent_dim=4, hidden=(64,)))
    assert torch.equal(torch.rand(1), after)
    expected = [t for layer in plain for t in (layer.weight, layer.bias)]
    for got, want in zip(model.state_dict().values(), expected):
        assert torch.equal(got, want)


def make_two_layer(prior: str = "standard-normal") -> VAEModel:
    torch.manual_seed(0)
    return VAEModel(ModelConfig(input_shape=(6,), latent_dim=4, hidden=(16,), likelihood="bernoulli",
                                upper_latent_dims=(3,), upper_hidden=(8,), prior=prior, vamp_components=5)).double()


def normal(mu, logvar):
    return Independent(Normal(mu, (0.5 * logvar).exp()), 1)


@pytest.mark.parametrize("prior", ["standard-normal", "vamp"])
def test_two_layer_importance_weights_follow_the_factorization(prior):
    """log w = log p(x|z1) + log p(z1|z2) + log p(z2) - log q(z1|x) - log q(z2|z1), written out by hand."""
    model = make_two_layer(prior)
    x = (torch.rand(5, 6, dtype=torch.float64) > 0.5).double()
    noise = [torch.randn(7, 5, 4, dtype=torch.float64), torch.randn(7, 5, 3, dtype=torch.float64)]
    z1, log_pz, log_qz = model.latent_log_densities(x, 7, noise=noise)
    log_w = model.decode(z1).log_prob(x) + log_pz - log_qz

    layer = model.upper_layers[0]
    mu1, logvar1 = model.posterior_params(x)
    z1_hand = mu1 + (0.5 * logvar1).exp() * noise[0]
    mu2, logvar2 = layer.inference(z1_hand)
    z2 = mu2 + (0.5 * logvar2).exp() * noise[1]
    if prior == "vamp":
        u = torch.sigmoid(model.prior.pseudo_inputs)
        m1, _ = model.posterior_params(u)
        m2, lv2 = layer.inference(m1)
        components = Normal(m2, (0.5 * lv2).exp()).log_prob(z2.unsqueeze(-2)).sum(-1)  # (7, 5, K)
        log_p_top = torch.logsumexp(components, -1) - math.log(5)
    else:
        log_p_top = Normal(0.0, 1.0).log_prob(z2).sum(-1)
    logits = model.decoder(z1_hand.reshape(-1, 4)).reshape(7, 5, 6)
    expected = (Bernoulli(logits=logits).log_prob(x).sum(-1) + normal(*layer.generative(z2)).log_prob(z1_hand)
                + log_p_top - normal(mu1, logvar1).log_prob(z1_hand) - normal(mu2, logvar2).log_prob(z2))
    torch.testing.assert_close(log_w, expected)


@pytest.mark.parametrize("prior", ["standard-normal", "vamp"])
def test_two_layer_elbo_terms_are_unbiased_for_the_mean_log_weight(prior):
    model = make_two_layer(prior)
    x = (torch.rand(3, 6, dtype=torch.float64) > 0.5).double()
    log_w = model.log_importance_weights(x, 100_000, generator=torch.Generator().manual_seed(0))
    terms = model.elbo_terms(x, generator=torch.Generator().manual_seed(1), num_samples=100_000)
    stderr = log_w.std(0) / math.sqrt(log_w.shape[0])
    assert torch.all((log_w.mean(0) + terms.neg_elbo).abs() < 5 * stderr + 1e-3)
    assert terms.kl_per_dim.shape == (3, 7)
    if prior == "standard-normal":  # a factorized prior: the per-dimension terms add up to the KL
        torch.testing.assert_close(terms.kl_per_dim.sum(-1), terms.kl)


def test_sampling_walks_down_the_chain():
    model = make_two_layer()
    gen = torch.Generator().manual_seed(0)
    z1 = model.sample_latent(200_000, generator=gen)
    # z1 = mu(z2) + sigma(z2) * eps with z2 ~ N(0, I): check the mean against an independent Monte Carlo.
    z2 = torch.randn(200_000, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    mu, _ = model.upper_layers[0].generative(z2)
    torch.testing.assert_close(z1.mean(0), mu.mean(0), atol=0.02, rtol=0)
    assert model.decode(z1[:4]).mean.shape == (4, 6)


def test_vamp_prior_samples_come_from_the_mixture():
    model = make_two_layer("vamp")
    mixture = model.prior_distribution()
    z = model.prior.sample_from(mixture, 200_000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), mixture.mean, atol=0.02, rtol=0)
    torch.testing.assert_close(z.var(0), mixture.variance, atol=0.03, rtol=0.03)


def test_mixture_log_prob_on_matrix_products_equals_the_distribution():
    from torch.distributions import Categorical, MixtureSameFamily

    from vaekit.models.priors import DiagonalGaussianMixture

    gen = torch.Generator().manual_seed(0)
    loc = torch.randn(50, 7, generator=gen, dtype=torch.float64) * 2
    scale = torch.rand(50, 7, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    z = torch.randn(3, 11, 7, generator=gen, dtype=torch.float64) * 2
    reference = MixtureSameFamily(Categorical(logits=torch.zeros(50, dtype=torch.float64)),
                                  Independent(Normal(loc, scale), 1)).log_prob(z)
    torch.testing.assert_close(DiagonalGaussianMixture(loc, scale).log_prob(z), reference)
    # float32, as models run: close to the float64 answer
    got32 = DiagonalGaussianMixture(loc.float(), scale.float()).log_prob(z.float())
    torch.testing.assert_close(got32.double(), reference, rtol=1e-5, atol=2e-3)


def test_mixture_marginals_per_dim_are_exact_and_computed_in_bounded_blocks(monkeypatch):
    from torch.distributions import Categorical, MixtureSameFamily

    from vaekit.models import priors

    gen = torch.Generator().manual_seed(1)
    loc = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    scale = torch.rand(40, 5, generator=gen, dtype=torch.float64) * 0.9 + 0.1
    mixture = MixtureSameFamily(Categorical(logits=torch.zeros(40, dtype=torch.float64)),
                                Independent(Normal(loc, scale), 1))
    z = torch.randn(3, 7, 5, generator=gen, dtype=torch.float64)
    # The marginal of dimension d: a one-dimensional mixture of the components' d-th normals.
    uniform = Categorical(logits=torch.zeros(40, dtype=torch.float64))
    reference = torch.stack([MixtureSameFamily(uniform, Normal(loc[:, d], scale[:, d])).log_prob(z[..., d])
                             for d in range(5)], dim=-1)
    torch.testing.assert_close(priors.log_prob_per_dim(mixture, z), reference)
    monkeypatch.setattr(priors, "MIXTURE_BLOCK_VALUES", 3 * 40 * 5)  # blocks of 3 rows: the same values
    seen = []
    original = Normal.log_prob
    monkeypatch.setattr(Normal, "log_prob", lambda self, value: seen.append(value.shape[0]) or original(self, value))
    torch.testing.assert_close(priors.log_prob_per_dim(mixture, z), reference)
    assert max(seen) == 3 and sum(seen) == 21


def _zero_last_weight(model: VAEModel) -> None:
    last = [m for m in model.decoder.modules() if isinstance(m, (torch.nn.Linear, torch.nn.ConvTranspose2d))][-1]
    with torch.no_grad():
        last.weight.zero_()


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "gaussian-learned"])
def test_output_bias_starts_the_decoder_at_the_datas_mean(likelihood):
    """With the last layer's weights zeroed, the decoder's distribution is the per-value mean of the data."""
    model = make_model(input_shape=(1, 4, 5), likelihood=likelihood)
    x = torch.rand(300, 1, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x[:, 0, 0, 0] = 0.0  # a value that never varies: a probability of 1e-3, not 0
    assert model.initialize_output_bias(x)
    _zero_last_weight(model)
    p = model.decode(torch.randn(7, 3, dtype=torch.float64))
    expected = x.mean(0).expand(7, 1, 4, 5).clone()
    if likelihood == "bernoulli":
        expected[:, 0, 0, 0] = 1e-3
    torch.testing.assert_close(p.mean, expected)


@pytest.mark.parametrize("name", ARRAY_LIKELIHOODS)
def test_every_array_likelihood_has_a_marginal_to_start_from(name):
    model = make_model(input_shape=(1, 4, 5), likelihood=name)
    assert model.likelihood.has_marginal
    x = (torch.rand(50, 1, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 255).round() / 255
    assert model.initialize_output_bias(x)


def test_output_bias_of_mean_and_variance_decoders_gives_the_datas_moments():
    x = 0.2 + 0.3 * torch.rand(500, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    model = make_model(input_shape=(1, 4, 4), likelihood="gaussian-decoder")
    model.initialize_output_bias(x)
    _zero_last_weight(model)
    p = model.decode(torch.zeros(1, 3, dtype=torch.float64))
    torch.testing.assert_close(p.mean[0], x.mean(0))
    torch.testing.assert_close(p.variance[0], x.var(0, correction=0))
    # The discretized logistic: location at the mean, scale s with the data's spread s * pi / sqrt(3).
    x = (x * 255).round() / 255
    model = make_model(input_shape=(1, 4, 4), likelihood="discretized-logistic")
    model.initialize_output_bias(x)
    _zero_last_weight(model)
    params = model.decoder_params(torch.zeros(1, 3, dtype=torch.float64))
    p = model.likelihood(params).base_dist
    torch.testing.assert_close(p.loc[0], x.mean(0))
    torch.testing.assert_close(p.log_scale[0].exp() * math.pi / math.sqrt(3), x.std(0, correction=0), rtol=1e-3, atol=0)


def test_output_bias_of_a_convolutional_decoder_is_per_channel():
    model = make_model(input_shape=(2, 8, 8), arch="conv", hidden=(8, 16), likelihood="bernoulli")
    x = torch.rand(200, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x[:, 1] *= 0.2
    assert model.initialize_output_bias(x)
    _zero_last_weight(model)
    logits = model.decoder_params(torch.zeros(1, 3, dtype=torch.float64))[0, 0]
    for channel in range(2):
        torch.testing.assert_close(torch.sigmoid(logits[channel]),
                                   x[:, channel].mean().expand(8, 8))


def test_the_closed_form_kl_to_the_standard_normal_equals_torch_distributions():
    from torch.distributions import Normal, kl_divergence

    from vaekit.models.priors import StandardNormalPrior

    g = torch.Generator().manual_seed(0)
    q = Normal(3 * torch.randn(64, 7, dtype=torch.float64, generator=g),
               torch.exp(2 * torch.randn(64, 7, dtype=torch.float64, generator=g)))
    expected = kl_divergence(q, Normal(torch.zeros(7, dtype=torch.float64), torch.ones(7, dtype=torch.float64)))
    torch.testing.assert_close(StandardNormalPrior.kl_from(q), expected, rtol=1e-12, atol=1e-12)


def test_soft_clamp_with_slope_gives_the_clamp_and_its_derivative():
    from vaekit.models.likelihoods import soft_clamp_with_slope

    x = torch.linspace(-12, 12, 97, dtype=torch.float64, requires_grad=True)
    value, slope = soft_clamp_with_slope(x.detach(), -4.6, 4.6)
    clamped = soft_clamp(x, -4.6, 4.6)
    (grad,) = torch.autograd.grad(clamped.sum(), x)
    torch.testing.assert_close(value, clamped.detach(), rtol=0, atol=0)
    torch.testing.assert_close(slope, grad, rtol=1e-12, atol=1e-14)
