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


def test_default_latent_dim_follows_the_data():
    from vaekit.config import default_latent_dim

    assert default_latent_dim((1, 28, 28)) == (20, "")  # images keep 20, whatever their size
    assert default_latent_dim((1, 8, 8))[0] == 20
    assert default_latent_dim((4,))[0] == 2  # half the columns ...
    assert default_latent_dim((13,))[0] == 7
    assert default_latent_dim((1,))[0] == 2  # ... at least 2
    assert default_latent_dim((64,)) == (20, "")  # ... at most 20, said only when it is not 20
    latent, reason = default_latent_dim((40,), num_columns=5)  # a table: its columns, not its one-hot width
    assert latent == 3 and "5 columns" in reason and "--latent-dim" in reason


def test_estimator_and_cli_choose_the_latent_size_from_the_data(tmp_path):
    import numpy as np
    import pandas as pd

    import vaekit
    from vaekit.cli import main

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(120, 6)).astype(np.float32)
    assert vaekit.VAE(epochs=1, hidden=(8,), device="cpu").fit(vectors).latent_dim_ == 3
    assert vaekit.VAE(latent_dim=5, epochs=1, hidden=(8,), device="cpu").fit(vectors).latent_dim_ == 5
    table = pd.DataFrame({"a": rng.normal(size=120), "city": rng.choice(["rome", "oslo", "lima", "kyiv"], 120)})
    assert vaekit.VAE(epochs=1, hidden=(8,), device="cpu").fit(table).latent_dim_ == 2  # 2 columns, 5 encoded values
    np.save(tmp_path / "v.npy", vectors)
    out = tmp_path / "run"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        assert main(["train", str(tmp_path / "v.npy"), "--out", str(out), "--epochs", "1", "--hidden", "8"]) == 0
    assert "latent size 3 chosen for 6 columns" in printed.getvalue()
    assert vaekit.load(out).latent_dim_ == 3
