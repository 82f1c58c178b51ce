"""Residual convolutional cells (``residual_blocks``): a new cell is the identity, the blocks train, and every
tool reads a run that has them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import vaekit
from vaekit.cli import main
from vaekit.config import ModelConfig
from vaekit.errors import ConfigError
from vaekit.models.model import VAEModel
from vaekit.models.networks import ResidualBlock

SHAPE = (1, 16, 16)


def conv_model(blocks: int, seed: int = 0, **options) -> VAEModel:
    torch.manual_seed(seed)
    return VAEModel(ModelConfig(input_shape=SHAPE, arch="conv", hidden=(4, 8), latent_dim=3, residual_blocks=blocks,
                                **options)).double()


def copy_plain_weights(plain: VAEModel, residual: VAEModel) -> None:
    """The residual model's non-residual layers get the plain model's weights, in order."""
    def layers(model):
        return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))
                and not any(m is c for b in model.modules() if isinstance(b, ResidualBlock) for c in b.modules())]

    ours, theirs = layers(residual), layers(plain)
    assert len(ours) == len(theirs)
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)


def test_a_new_residual_cell_is_the_identity_and_its_branch_computes_two_convolutions():
    torch.manual_seed(0)
    block = ResidualBlock(5, "relu").double()
    x = torch.randn(3, 5, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)
    with torch.no_grad():
        block.body[3].weight.normal_()
        block.body[3].bias.normal_()
    first, second = block.body[1], block.body[3]
    by_hand = x + torch.nn.functional.conv2d(torch.relu(torch.nn.functional.conv2d(
        torch.relu(x), first.weight, first.bias, padding=1)), second.weight, second.bias, padding=1)
    torch.testing.assert_close(block(x), by_hand)


@pytest.mark.parametrize("inference", ["bottom-up", "top-down"])
def test_a_fresh_residual_model_computes_the_plain_conv_model_given_its_weights(inference):
    options = dict(upper_latent_dims=(2,), upper_hidden=(5,), inference=inference)
    plain, residual = conv_model(0, **options), conv_model(2, seed=1, **options)
    copy_plain_weights(plain, residual)
    upper = dict(plain.named_parameters())
    with torch.no_grad():
        for name, p in residual.named_parameters():
            if name.startswith(("upper_layers", "prior")):
                p.copy_(upper[name])
    x = (torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64) > 0.5).double()
    z = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(residual.decoder_params(z), plain.decoder_params(z))
    for (m1, v1), (m2, v2) in zip(residual.bottom_up_params(x) if inference == "top-down" else
                                  [residual.first_layer_params(x)],
                                  plain.bottom_up_params(x) if inference == "top-down" else
                                  [plain.first_layer_params(x)]):
        torch.testing.assert_close(m1, m2)
        torch.testing.assert_close(v1, v2)
    assert sum(p.numel() for p in residual.parameters()) > sum(p.numel() for p in plain.parameters())


def test_residual_blocks_are_refused_where_they_do_not_apply():
    with pytest.raises(ConfigError, match="--arch conv"):
        ModelConfig(input_shape=(16,), arch="mlp", residual_blocks=1)
    with pytest.raises(ConfigError, match="zero or positive"):
        ModelConfig(input_shape=SHAPE, arch="conv", residual_blocks=-1)


def test_old_conv_configs_load_without_the_field_and_keep_their_layers():
    config = ModelConfig(input_shape=SHAPE, arch="conv", hidden=(4, 8), latent_dim=3)
    assert config.residual_blocks == 0
    names = [n for n, _ in VAEModel(config).named_parameters()]
    assert not any("body" in n for n in names)  # the layer names of runs saved before residual cells existed


def test_training_with_residual_cells_lowers_the_test_bound_and_round_trips(tmp_path, capsys):
    data = vaekit.load_dataset("digits", binarize="dynamic")
    x_test = data.split("test")
    vae = vaekit.VAE(arch="conv", hidden=(8, 16), residual_blocks=1, latent_dim=4, epochs=4, seed=0)
    before = vaekit.VAE(arch="conv", hidden=(8, 16), residual_blocks=1, latent_dim=4, epochs=1, lr=1e-9, seed=0)
    start = before.fit(data).evaluate(x_test, num_importance_samples=1).neg_elbo
    vae.fit(data, run_dir=tmp_path / "run")
    after = vae.evaluate(x_test, num_importance_samples=1).neg_elbo
    assert after < start - 5, (start, after)
    assert any(isinstance(m, ResidualBlock) for m in vae.model_.modules())
    loaded = vaekit.VAE.from_run(tmp_path / "run")
    assert loaded.residual_blocks == 1
    x = torch.as_tensor(np.asarray(x_test[:16]))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model_.decoder_params(torch.zeros(2, 4)),
                                   vae.model_.decoder_params(torch.zeros(2, 4)))
        torch.testing.assert_close(loaded.model_.posterior_params(x)[0], vae.model_.posterior_params(x)[0])
    assert main(["info", str(tmp_path / "run")]) == 0
    assert "1 residual blocks per resolution" in capsys.readouterr().out


def test_the_cli_trains_a_residual_ladder_and_eval_reads_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "digits", "--out", str(run), "--arch", "conv", "--hidden", "8,16", "--residual-blocks", "1",
                 "--latent-layers", "2", "--inference", "top-down", "--latent-dim", "4", "--epochs", "1",
                 "--binarize", "dynamic", "--no-progress", "--no-detector"]) == 0
    assert "1 residual blocks per resolution" in capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["residual_blocks"] == 1 and config["model"]["upper_latent_dims"] == [2]
    assert main(["eval", str(run), "-k", "5"]) == 0
    assert "-log p(x)" in capsys.readouterr().out
    assert main(["train", "digits", "--out", str(tmp_path / "bad"), "--arch", "mlp", "--residual-blocks", "1"]) == 2
    assert "--arch conv" in capsys.readouterr().err
