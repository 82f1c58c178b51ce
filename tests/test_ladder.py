"""Top-down (Ladder VAE) inference and the hierarchical score LLR^{>k}, each against an independent computation.

The tiny model: 16 binary inputs, stochastic layers of 4, 3 and 2 units, float64. "By hand" means written
out here with torch.distributions from the model's individual modules, not through the model's methods.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

import vaekit
from vaekit.anomaly import anomaly_scores, available_scores, bound_above, llr_above
from vaekit.api import layer_sizes, make_run_config
from vaekit.cli import main
from vaekit.config import ModelConfig, RunConfig
from vaekit.errors import ConfigError
from vaekit.evaluation.likelihood import active_units, elbo, log_likelihood
from vaekit.models.model import LOGVAR_MAX, LOGVAR_MIN, VAEModel
from vaekit.models.likelihoods import soft_clamp
from vaekit.training import checkpoint as ckpt
from vaekit.training.trainer import train

DIMS = (4, 3, 2)


def tiny(inference: str = "top-down", dims: tuple[int, ...] = DIMS, seed: int = 0) -> VAEModel:
    torch.manual_seed(seed)
    return VAEModel(ModelConfig(input_shape=(16,), latent_dim=dims[0], hidden=(8,), upper_latent_dims=dims[1:],
                                upper_hidden=(6,), inference=inference)).double()


def binary(n: int = 5, seed: int = 1) -> torch.Tensor:
    return (torch.rand(n, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) > 0.5).double()


def normal(mu, logvar):
    return Normal(mu, (0.5 * logvar).exp())


def hand_bottom_up(model, x):
    """(mu_hat_i, logvar_hat_i) of every layer from the modules: d_1 = encoder(x), d_{i+1} = body_i(d_i)."""
    d = model.encoder(x)
    out = [(model.mean_head(d), soft_clamp(model.logvar_head(d), LOGVAR_MIN, LOGVAR_MAX))]
    for layer in model.upper_layers:
        d = layer.inference.body(d)
        out.append((layer.inference.mean_head(d), soft_clamp(layer.inference.logvar_head(d), LOGVAR_MIN, LOGVAR_MAX)))
    return out


def hand_top_down(model, x, eps):
    """Draws from the top with the formula of Sønderby et al. (eq. 17-18): z, q_i and p(z_i|z_{i+1}) per layer."""
    hat = hand_bottom_up(model, x)
    top = len(hat) - 1
    q = {top: normal(*hat[top])}
    z = {top: q[top].loc + q[top].scale * eps[top]}
    p = {}
    for i in reversed(range(top)):
        mu_p, logvar_p = model.upper_layers[i].generative(z[i + 1])
        p[i] = normal(mu_p, logvar_p)
        var_hat, var_p = hat[i][1].exp(), logvar_p.exp()
        var_q = 1.0 / (1.0 / var_hat + 1.0 / var_p)
        mu_q = var_q * (hat[i][0] / var_hat + mu_p / var_p)
        q[i] = Normal(mu_q, var_q.sqrt())
        z[i] = mu_q + var_q.sqrt() * eps[i]
    return z, q, p


def log_px(model, x, z1):
    logits = model.decoder(z1.reshape(-1, z1.shape[-1])).reshape(*z1.shape[:-1], -1)
    return Bernoulli(logits=logits).log_prob(x).sum(-1)


def test_precision_weighted_posterior_matches_the_formula():
    model, x = tiny(), binary()
    eps = [torch.randn(5, d, dtype=torch.float64) for d in DIMS]
    drawn = model.infer(x, noise=eps)
    z, q, _ = hand_top_down(model, x, eps)
    for i, (z_model, q_model) in enumerate(drawn):
        torch.testing.assert_close(q_model.base_dist.loc, q[i].loc)
        torch.testing.assert_close(q_model.base_dist.scale, q[i].scale)
        torch.testing.assert_close(z_model, z[i])
    # The combined variance is below both of its parts.
    hat = hand_bottom_up(model, x)
    assert (drawn[0][1].base_dist.scale ** 2 < hat[0][1].exp()).all()


def test_top_down_elbo_is_the_closed_form_kl_elbo_on_the_same_noise():
    """elbo_terms draws top layer first, then down; by hand: log p(x|z_1) - sum_i KL(q_i || p_i) with the analytic
    KL from torch.distributions (against N(0, I) at the top)."""
    model, x = tiny(), binary()
    terms = model.elbo_terms(x, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    eps = {i: torch.randn(5, DIMS[i], generator=g, dtype=torch.float64) for i in reversed(range(3))}
    z, q, p = hand_top_down(model, x, eps)
    kl = kl_divergence(q[2], Normal(torch.zeros(2, dtype=torch.float64), 1.0)).sum(-1)
    kl_layers = [kl_divergence(q[i], p[i]).sum(-1) for i in range(2)]
    torch.testing.assert_close(terms.reconstruction, -log_px(model, x, z[0]))
    torch.testing.assert_close(terms.kl, kl + sum(kl_layers))
    # kl_per_dim: one column per unit, bottom layer first.
    torch.testing.assert_close(terms.kl_per_dim[:, :4].sum(-1), kl_layers[0])
    torch.testing.assert_close(terms.kl_per_dim[:, 4:7].sum(-1), kl_layers[1])
    torch.testing.assert_close(terms.kl_per_dim[:, 7:].sum(-1), kl)


def test_closed_form_elbo_agrees_with_the_monte_carlo_elbo_in_expectation():
    """E_q[log p(x|z_1) + log p(z_1|z_2) + log p(z_2|z_3) + log p(z_3) - log q] by hand over many draws."""
    model, x = tiny(), binary()
    n = 20000
    g = torch.Generator().manual_seed(3)
    eps = [torch.randn(n, 5, d, generator=g, dtype=torch.float64) for d in DIMS]
    with torch.no_grad():
        z, q, p = hand_top_down(model, x, eps)
        log_w = (log_px(model, x, z[0]) + p[0].log_prob(z[0]).sum(-1) + p[1].log_prob(z[1]).sum(-1)
                 + Normal(0.0, 1.0).log_prob(z[2]).sum(-1) - sum(q[i].log_prob(z[i]).sum(-1) for i in range(3)))
        analytic = -model.elbo_terms(x, generator=torch.Generator().manual_seed(4), num_samples=n).neg_elbo
    stderr = log_w.std(0) / math.sqrt(n)
    assert (abs(log_w.mean(0) - analytic) < 4 * stderr + 1e-3).all()


def test_log_importance_weights_are_log_p_x_z_minus_log_q_by_hand():
    model, x = tiny(), binary()
    eps = [torch.randn(7, 5, d, dtype=torch.float64) for d in DIMS]
    z1, log_pz, log_qz = model.latent_log_densities(x, 7, noise=eps)
    log_w = model.decode(z1).log_prob(x) + log_pz - log_qz
    z, q, p = hand_top_down(model, x, eps)
    expected = (log_px(model, x, z[0]) + p[0].log_prob(z[0]).sum(-1) + p[1].log_prob(z[1]).sum(-1)
                + Normal(0.0, 1.0).log_prob(z[2]).sum(-1) - sum(q[i].log_prob(z[i]).sum(-1) for i in range(3)))
    torch.testing.assert_close(log_w, expected)


def test_a_one_layer_model_is_the_same_whatever_the_inference():
    bottom, top = tiny("bottom-up", dims=(4,)), tiny("top-down", dims=(4,))
    assert list(bottom.state_dict()) == list(top.state_dict())
    for name, value in bottom.state_dict().items():
        assert torch.equal(value, top.state_dict()[name]), name
    x = binary()
    a = bottom.elbo_terms(x, generator=torch.Generator().manual_seed(0))
    b = top.elbo_terms(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.neg_elbo, b.neg_elbo) and torch.equal(a.kl_per_dim, b.kl_per_dim)
    wa = bottom.log_importance_weights(x, 5, generator=torch.Generator().manual_seed(1))
    wb = top.log_importance_weights(x, 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(wa, wb)
    assert all(torch.equal(u, v) for u, v in zip(bottom.posterior_params(x), top.posterior_params(x)))


def test_bottom_up_models_keep_their_tensor_names_and_shapes_and_old_configs_load():
    model = tiny("bottom-up")
    assert tuple(model.state_dict()["upper_layers.0.inference.body.0.weight"].shape) == (6, 4)  # from z_1
    assert tuple(tiny("top-down").state_dict()["upper_layers.0.inference.body.0.weight"].shape) == (6, 8)  # from d_1
    assert list(model.state_dict()) == list(tiny("top-down").state_dict())
    raw = RunConfig(model=ModelConfig(input_shape=(16,))).to_dict()
    del raw["model"]["inference"]  # a config.json from before the option
    assert RunConfig.from_dict(json.loads(json.dumps(raw))).model.inference == "bottom-up"


def test_posterior_params_follow_the_mean_path_and_posterior_means_are_exact_at_the_top():
    model, x = tiny(), binary()
    hat = hand_bottom_up(model, x)
    zero = [torch.zeros(5, d, dtype=torch.float64) for d in DIMS]
    _, q, _ = hand_top_down(model, x, zero)  # zero noise: every layer at its mean
    mu, logvar = model.posterior_params(x)
    torch.testing.assert_close(mu, q[0].loc)
    torch.testing.assert_close(logvar, 2 * q[0].scale.log())
    means = model.posterior_means(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(means[2], hat[2][0])
    assert [m.shape for m in means] == [(5, d) for d in DIMS]


def test_bad_configurations_are_refused():
    with pytest.raises(ConfigError, match="inference must be one of"):
        ModelConfig(input_shape=(16,), inference="sideways")
    with pytest.raises(ConfigError, match="VampPrior is not supported with top-down"):
        ModelConfig(input_shape=(16,), upper_latent_dims=(3,), inference="top-down", prior="vamp")
    ModelConfig(input_shape=(16,), inference="top-down", prior="vamp")  # one layer: the same model either way
    assert layer_sizes(20, 3) == (20, 10, 5) and layer_sizes(5, 3) == (5, 3, 2) and layer_sizes(1, 3) == (1, 1, 1)
    data = vaekit.load_dataset("digits")
    assert make_run_config(data, latent_dim=8, latent_layers=3).model.upper_latent_dims == (4, 2)
    assert make_run_config(data, latent_dim=8, latent_layers=2, upper_latent_dims=(5,)).model.upper_latent_dims == (5,)
    with pytest.raises(ConfigError, match="disagrees"):
        make_run_config(data, latent_dim=8, latent_layers=3, upper_latent_dims=(5,))
    with pytest.raises(ConfigError, match="latent_layers"):
        make_run_config(data, latent_dim=8, latent_layers=0)


def test_free_bits_floor_every_unit_of_every_layer():
    """sum over all 9 units (3 layers) of max(lambda, batch-mean KL_d), with KL_d the closed-form terms by hand."""
    from vaekit.models.objectives import elbo_objective

    model, x = tiny(), binary(6)
    loss, _, _ = elbo_objective(model, x, 1.0, torch.Generator().manual_seed(9), free_bits=0.5)
    g = torch.Generator().manual_seed(9)
    eps = {i: torch.randn(6, DIMS[i], generator=g, dtype=torch.float64) for i in reversed(range(3))}
    z, q, p = hand_top_down(model, x, eps)
    kl = torch.cat([kl_divergence(q[0], p[0]), kl_divergence(q[1], p[1]),
                    kl_divergence(q[2], Normal(torch.zeros(2, dtype=torch.float64), 1.0))], dim=-1)
    assert kl.shape == (6, 9)
    expected = (-log_px(model, x, z[0])).mean() + torch.clamp(kl.mean(0), min=0.5).sum()
    torch.testing.assert_close(loss, expected)


# --- the hierarchical bounds --------------------------------------------------------------------

@pytest.mark.parametrize("inference", ["top-down", "bottom-up"])
def test_llr_above_zero_is_exactly_zero_and_the_bound_at_zero_is_the_elbo(inference):
    model, x = tiny(inference), binary(200)
    assert torch.equal(llr_above(model, x, 0, num_samples=3, seed=5), torch.zeros(200, dtype=torch.float64))
    # L^{>0} is the ELBO: its average over many draws matches elbo_terms' (other noise; the bottom-up lower layers'
    # single-sample KL terms are noisier: about 0.05 nats of standard error per example here).
    bound = bound_above(model, x[:5], 0, num_samples=4000, seed=1)
    with torch.no_grad():
        terms = model.elbo_terms(x[:5], generator=torch.Generator().manual_seed(2), num_samples=4000)
    torch.testing.assert_close(bound, -terms.neg_elbo, atol=0.05 if inference == "top-down" else 0.25, rtol=0)


def test_bound_above_k_by_hand():
    """L^{>1}: z_3 ~ q(z_3|x), z_2 ~ q(z_2|x, z_3), z_1 = mean of p(z_1|z_2); log p(x|z_1) - KL_2 - KL_3 (no KL_1)."""
    model, x = tiny(), binary()
    g = torch.Generator().manual_seed(11)
    eps = [torch.randn(1, 5, d, generator=g, dtype=torch.float64) for d in DIMS]  # bound_above's noise, bottom first
    with torch.no_grad():
        z, q, p = hand_top_down(model, x, [e[0] for e in eps])
        kl3 = kl_divergence(q[2], Normal(torch.zeros(2, dtype=torch.float64), 1.0)).sum(-1)
        kl2 = kl_divergence(q[1], p[1]).sum(-1)
        expected_1 = log_px(model, x, p[0].loc) - kl2 - kl3
        z1_from_3 = model.upper_layers[0].generative(model.upper_layers[1].generative(z[2])[0])[0]
        expected_2 = log_px(model, x, z1_from_3) - kl3
        full = log_px(model, x, z[0]) - kl_divergence(q[0], p[0]).sum(-1) - kl2 - kl3
    torch.testing.assert_close(bound_above(model, x, 1, seed=11), expected_1)
    torch.testing.assert_close(bound_above(model, x, 2, seed=11), expected_2)
    torch.testing.assert_close(llr_above(model, x, 2, seed=11), full - expected_2)


def test_bad_k_and_one_layer_models_are_refused():
    model, x = tiny(), binary()
    for k in (3, -1, 1.5, True):
        with pytest.raises(ConfigError, match="k must be a whole number from 0 to 2"):
            llr_above(model, x, k)
    with pytest.raises(ConfigError, match="two or more stochastic layers"):
        llr_above(tiny(dims=(4,)), x, 0)
    assert bound_above(tiny(dims=(4,)), x, 0).shape == (5,)  # the ELBO of a one-layer model
    with pytest.raises(ConfigError, match="num_samples"):
        bound_above(model, x, 1, num_samples=0)


# --- trained on digits: learning, per-layer activity, evaluation, checkpoints, API and CLI --------------

@pytest.fixture(scope="module")
def ladder_run(tmp_path_factory):
    """Three top-down layers (8, 4, 2) trained ~300 steps on digits with free bits, through the CLI."""
    run = tmp_path_factory.mktemp("ladder") / "run"
    assert main(["train", "digits", "--out", str(run), "--latent-dim", "8", "--latent-layers", "3", "--inference",
                 "top-down", "--hidden", "64", "--upper-hidden", "32", "--epochs", "12", "--batch-size", "64",
                 "--free-bits", "0.1", "--seed", "0", "--no-progress"]) == 0
    return run


def test_training_lowers_the_test_elbo_and_keeps_every_layer_active(ladder_run):
    vae = vaekit.load(ladder_run)
    config = vae.config_
    assert config.model.inference == "top-down" and config.model.upper_latent_dims == (4, 2)
    x = vaekit.load_dataset("digits").split("test")
    torch.manual_seed(config.train.seed)
    untrained = VAEModel(config.model)
    before, after = elbo(untrained, x).neg_elbo.mean().item(), elbo(vae.model_, x).neg_elbo.mean().item()
    assert after < before - 10
    counts, _ = active_units(vae.model_, x)
    assert len(counts) == 3 and min(counts) >= 1, counts
    result = vae.evaluate(x[:200].numpy(), num_importance_samples=50)
    assert result.active_units_per_layer == active_units(vae.model_, x[:200])[0]
    assert len(result.kl_per_dim) == 14 and min(result.kl_per_dim) > 0.0
    # Importance sampling: a tighter bound than the ELBO on average.
    ll = log_likelihood(vae.model_, x[:200], num_importance_samples=100)
    assert ll.mean().item() >= -elbo(vae.model_, x[:200]).neg_elbo.mean().item()
    assert abs(ll.mean().item() + result.nll) < 2.0


def test_resume_of_a_top_down_run_equals_an_uninterrupted_run(tmp_path):
    data = vaekit.load_dataset("digits")
    options = dict(latent_dim=4, hidden=(32,), latent_layers=3, inference="top-down", upper_hidden=(16,),
                   batch_size=128, seed=3, device="cpu", lr_schedule="constant", free_bits=0.05)
    full, _ = train(make_run_config(data, epochs=2, **options), data, run_dir=tmp_path / "full", progress=False)
    train(make_run_config(data, epochs=1, **options), data, run_dir=tmp_path / "split", progress=False)
    resumed, history = train(make_run_config(data, epochs=2, **options), data, run_dir=tmp_path / "split",
                             resume=True, progress=False)
    assert len(history) == 2
    for name, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)
    loaded, config = ckpt.load_model(tmp_path / "split")
    assert config.model.inference == "top-down"
    x = data.split("test")[:50]
    torch.testing.assert_close(elbo(loaded, x).neg_elbo, elbo(full, x).neg_elbo, rtol=0, atol=0)


def test_api_and_cli_use_a_top_down_run(ladder_run, tmp_path, capsys):
    vae = vaekit.load(ladder_run)
    assert vae.get_params()["inference"] == "top-down"
    x = vaekit.load_dataset("digits").split("test")[:40].numpy()
    mean, var = vae.encode(x)
    assert mean.shape == (40, 8) and (var > 0).all()
    assert vae.decode(mean).shape == (40, 1, 8, 8) and vae.sample(6, seed=0).shape == (6, 1, 8, 8)
    scores = anomaly_scores(vae, x, ["llr", "neg_elbo"], llr_k=2)
    assert scores["llr"].shape == (40,) and np.isfinite(scores["llr"]).all()
    assert "llr" in available_scores(vae)
    with pytest.raises(ConfigError, match="k must be a whole number from 0 to 2"):
        anomaly_scores(vae, x, ["llr"], llr_k=3)
    assert main(["eval", str(ladder_run), "digits:test", "-k", "20"]) == 0
    assert main(["sample", str(ladder_run), "-n", "8", "-o", str(tmp_path / "s.npy")]) == 0
    assert main(["encode", str(ladder_run), "digits:test", "-o", str(tmp_path / "z.npy")]) == 0
    assert main(["score", str(ladder_run), "digits:test", "--scores", "llr", "--llr-k", "1",
                 "-o", str(tmp_path / "scores.csv")]) == 0
    header = (tmp_path / "scores.csv").read_text().splitlines()[0].split(",")
    assert "llr" in header
    capsys.readouterr()
    assert main(["score", str(ladder_run), "digits:test", "--scores", "llr", "--llr-k", "5",
                 "-o", str(tmp_path / "bad.csv")]) == 2
    assert "k must be a whole number" in capsys.readouterr().err


def test_llr_is_higher_for_noise_than_for_digits(ladder_run):
    """Havtorn et al.: out-of-distribution data get a larger LLR^{>k} (the top layers explain them worse)."""
    from sklearn.metrics import roc_auc_score

    model = vaekit.load(ladder_run).model_
    x = vaekit.load_dataset("digits").split("test")
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    for k in (1, 2):
        s_x, s_noise = llr_above(model, x, k, num_samples=4), llr_above(model, noise, k, num_samples=4)
        assert s_noise.mean() > s_x.mean()
        auroc = roc_auc_score(np.r_[np.zeros(len(x)), np.ones(len(noise))], torch.cat([s_x, s_noise]).numpy())
        assert auroc > 0.7, (k, auroc)


def test_one_layer_runs_offer_no_llr(trained_run):
    vae = vaekit.load(trained_run)
    assert "llr" not in available_scores(vae)
    with pytest.raises(ConfigError, match="two or more stochastic layers"):
        anomaly_scores(vae, np.zeros((2, 1, 8, 8), dtype=np.float32), ["llr"])


def test_free_bits_default_to_a_tenth_of_a_nat_for_top_down_hierarchies_trained_with_the_elbo(tmp_path, capsys):
    from vaekit.config import DEFAULT_LADDER_FREE_BITS

    data = vaekit.load_dataset("digits")
    ladder = dict(latent_dim=4, hidden=(32,), latent_layers=3, inference="top-down", epochs=1)
    assert DEFAULT_LADDER_FREE_BITS == 0.1
    assert make_run_config(data, **ladder).train.free_bits == 0.1
    assert make_run_config(data, **ladder, free_bits=0.0).train.free_bits == 0.0  # asked for: kept
    assert make_run_config(data, **ladder, free_bits=0.3).train.free_bits == 0.3
    assert make_run_config(data, **ladder, objective="iwae").train.free_bits == 0.0  # no separate KL term
    assert make_run_config(data, **{**ladder, "inference": "bottom-up"}).train.free_bits == 0.0
    assert make_run_config(data, **{**ladder, "latent_layers": 1}).train.free_bits == 0.0  # one layer
    assert make_run_config(data, latent_dim=4, epochs=1).train.free_bits == 0.0
    assert vaekit.VAE(**ladder, device="cpu").fit(data).config_.train.free_bits == 0.1
    assert vaekit.VAE().get_params()["free_bits"] is None  # the estimator's parameter says "the default"
    run = tmp_path / "run"
    assert main(["train", "digits", "--out", str(run), "--latent-dim", "4", "--latent-layers", "3", "--inference",
                 "top-down", "--hidden", "32", "--epochs", "1", "--no-progress", "--no-detector"]) == 0
    assert "free bits 0.1" in capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["train"]["free_bits"] == 0.1  # saved resolved
    # A run saved before the default (free bits 0 written in its config) keeps them at 0 on resume.
    raw = json.loads((run / "config.json").read_text())
    raw["train"]["free_bits"] = 0.0
    assert RunConfig.from_dict(raw).train.free_bits == 0.0
