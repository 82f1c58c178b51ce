"""Training objectives: the ELBO, the IWAE bound, free bits, and the trainer using the configured one."""

from __future__ import annotations

import math

import pytest
import torch

import vaekit
from vaekit.api import make_run_config
from vaekit.config import ModelConfig, TrainConfig
from vaekit.models.model import VAEModel
from vaekit.models.objectives import elbo_objective, iwae_objective, make_objective
from vaekit.training.trainer import train


def make_model(**overrides) -> VAEModel:
    torch.manual_seed(0)
    config = dict(input_shape=(6,), latent_dim=3, hidden=(16,), likelihood="bernoulli")
    config.update(overrides)
    return VAEModel(ModelConfig(**config)).double()


def binary(n: int = 4) -> torch.Tensor:
    return (torch.rand(n, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) > 0.5).double()


def test_iwae_loss_is_minus_the_log_mean_exp_of_the_weights():
    model, x = make_model(), binary()
    loss, rec_sum, kl_sum = iwae_objective(model, x, 1.0, torch.Generator().manual_seed(0), num_samples=7)
    log_w = model.log_importance_weights(x, 7, generator=torch.Generator().manual_seed(0))
    expected = -(torch.logsumexp(log_w, 0) - math.log(7)).mean()
    torch.testing.assert_close(loss, expected)
    # The logged parts are the same draws' ELBO: their sum is minus the mean log weight, summed over the batch.
    torch.testing.assert_close(rec_sum + kl_sum, -log_w.mean(0).sum())


def test_iwae_bound_lies_between_the_elbo_and_the_likelihood_and_tightens_with_k():
    model, x = make_model(), binary(8).repeat(500, 1)  # 500 independent draws of the bound for each of 8 examples
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        bounds = {k: torch.logsumexp(model.log_importance_weights(x, k, generator=gen), 0) - math.log(k)
                  for k in (1, 5, 50)}  # per example what iwae_objective averages (see the test above)
        elbo = -model.elbo_terms(x, generator=gen).neg_elbo
    def mean_and_stderr(values):  # mean over draws and examples; the spread within each example only
        per_draw = values.view(500, 8)
        return per_draw.mean().item(), (per_draw.var(0) / 500).sum().sqrt().item() / 8

    (b1, s1), (b5, s5), (b50, s50), (e, se) = (mean_and_stderr(t) for t in (bounds[1], bounds[5], bounds[50], elbo))
    assert abs(b1 - e) < 4 * math.hypot(s1, se)  # k = 1 is the ELBO
    assert b5 > b1 + 4 * math.hypot(s1, s5)
    assert b50 > b5 + 4 * math.hypot(s5, s50)


def test_free_bits_remove_the_pull_on_dimensions_below_the_floor():
    """With a floor above every dimension's KL, the gradient is that of the reconstruction term alone."""
    model, x = make_model(), binary()
    loss, _, _ = elbo_objective(model, x, 1.0, torch.Generator().manual_seed(0), free_bits=100.0)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    terms = model.elbo_terms(x, generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(terms.reconstruction.mean().item() + 100.0 * 3)
    reconstruction_only = torch.autograd.grad(terms.reconstruction.mean(), list(model.parameters()), allow_unused=True)
    for got, want in zip(grads, reconstruction_only):
        torch.testing.assert_close(got, want)
    # A floor of zero is the plain ELBO.
    plain, _, _ = elbo_objective(model, x, 1.0, torch.Generator().manual_seed(0))
    zero, _, _ = elbo_objective(model, x, 1.0, torch.Generator().manual_seed(0), free_bits=0.0)
    assert plain.item() == zero.item()
    # A dimension above the floor keeps its full KL: loss = rec + sum_d max(lambda, KL_d).
    lam = 0.5 * terms.kl_per_dim.mean(0).min().item()
    loss, _, _ = elbo_objective(model, x, 1.0, torch.Generator().manual_seed(0), free_bits=lam)
    torch.testing.assert_close(loss, (terms.reconstruction + terms.kl).mean())


def test_k_sample_elbo_averages_the_draws():
    model, x = make_model(), binary()
    terms = model.elbo_terms(x, generator=torch.Generator().manual_seed(0), num_samples=5)
    drawn = model.infer(x, num_samples=5, generator=torch.Generator().manual_seed(0))
    z = drawn[0][0]
    torch.testing.assert_close(terms.reconstruction, -model.decode(z).log_prob(x).mean(0))
    torch.testing.assert_close(terms.kl, model.elbo_terms(x).kl)  # closed form: the same for every draw


def test_make_objective_binds_the_settings():
    config = TrainConfig(objective="iwae", objective_samples=3)
    model, x = make_model(), binary()
    loss, _, _ = make_objective(config)(model, x, 1.0, torch.Generator().manual_seed(0))
    expected, _, _ = iwae_objective(model, x, 1.0, torch.Generator().manual_seed(0), num_samples=3)
    assert loss.item() == expected.item()
    with pytest.raises(vaekit.ConfigError, match="free bits apply to the elbo objective"):
        TrainConfig(objective="iwae", free_bits=1.0)


def test_the_trainer_minimises_the_configured_objective(digits):
    data = vaekit.load_dataset("digits", binarize="static", binarize_threshold=0.5)
    common = dict(latent_dim=4, hidden=(32,), epochs=2, batch_size=64, seed=0, device="cpu")
    _, elbo_history = train(make_run_config(data, **common), data, progress=False)
    config = make_run_config(data, objective="iwae", **common)
    assert config.train.objective_samples == 5
    _, iwae_history = train(config, data, progress=False)
    # The IWAE loss is a tighter bound than the ELBO of the same draws, which the log also shows.
    for record in iwae_history:
        assert record["train_loss"] < record["train_reconstruction"] + record["train_kl"]
    assert iwae_history[0]["train_loss"] != elbo_history[0]["train_loss"]
    for record in elbo_history:
        assert record["train_loss"] == pytest.approx(record["train_reconstruction"] + record["train_kl"], rel=1e-6)
