"""Configuration: validation of the model and training options, and runs written before they existed."""

from __future__ import annotations

import pytest

from vaekit import ConfigError
from vaekit.config import FORMAT_VERSION, ModelConfig, RunConfig, TrainConfig


@pytest.mark.parametrize("options,match", [
    (dict(prior="gaussian-mixture"), "prior must be one of standard-normal, vamp"),
    (dict(vamp_components=0), "vamp_components must be at least 1"),
    (dict(upper_latent_dims=(5, 0)), "upper_latent_dims must hold positive sizes"),
    (dict(upper_hidden=(-1,)), "upper_hidden must hold positive sizes"),
    (dict(num_levels=1), "num_levels must lie in"),
])
def test_model_options_are_validated(options, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(input_shape=(4,), **options)


@pytest.mark.parametrize("options,match", [
    (dict(objective="vae"), "objective must be one of elbo, iwae"),
    (dict(objective_samples=0), "objective_samples must be at least 1"),
    (dict(free_bits=-0.5), "free_bits must be zero or positive"),
    (dict(free_bits=float("nan")), "free_bits must be zero or positive"),
])
def test_training_options_are_validated(options, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**options)


def test_a_configuration_written_before_the_new_options_loads_with_their_defaults():
    old = {"format_version": FORMAT_VERSION, "vaekit_version": "0.1.0",
           "model": {"input_shape": [1, 8, 8], "latent_dim": 4, "arch": "mlp", "hidden": [64], "activation": "relu",
                     "likelihood": "bernoulli", "gaussian_std": 1.0},
           "train": {"epochs": 3, "kl_weight": 1.0}}
    config = RunConfig.from_dict(old)
    assert config.model.upper_latent_dims == () and config.model.prior == "standard-normal"
    assert config.train.objective == "elbo" and config.train.objective_samples == 1 and config.train.free_bits == 0.0


def test_round_trip_of_the_new_options():
    config = RunConfig(model=ModelConfig(input_shape=(784,), latent_dim=100, hidden=(200, 200), upper_latent_dims=(50,),
                                         prior="vamp", vamp_components=7, likelihood="discretized-logistic"),
                       train=TrainConfig(objective="iwae", objective_samples=50))
    again = RunConfig.from_dict(config.to_dict())
    assert again == config
