"""pythae models with vaekit's MLP, and their weights loaded into the equivalent ``VAEModel``.

The networks here are pythae ``BaseEncoder``/``BaseDecoder`` subclasses laid out exactly like vaekit's MLP
(``vaekit.models.networks``): encoder 784-H_1-...-H_n with the activation after every layer, mean and
log-variance heads on top; decoder latent-H_n-...-H_1-784 with Bernoulli probabilities (a sigmoid, since
pythae's ``"bce"`` loss takes probabilities). ``vaekit_model_from_pythae`` copies a trained pythae ``VAE``,
``IWAE`` or ``VAMP`` into a ``VAEModel`` (as ``benchmarks/speed.py``'s ``vaekit_model_from_reference`` does
for a plain PyTorch VAE), so that vaekit's importance-sampling code scores both libraries' models;
``compare_densities`` checks that the copy gives pythae's own log p(x|z), log q(z|x) and log p(z).

pythae's VAMP pseudo-inputs are ``hardtanh(W e_k + b)`` in [0, 1]; vaekit keeps them as ``sigmoid(u)``, so
``u = logit(clamp(., 1e-12, 1 - 1e-12))``: exact to float rounding (a pixel clipped to 0 becomes 1e-12).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder

from vaekit.config import ModelConfig
from vaekit.models.model import VAEModel
from vaekit.models.networks import mlp as _mlp  # vaekit's own layer layout, so the weights copy one to one

INPUT_SHAPE = (1, 28, 28)
PSEUDO_INPUT_EPS = 1e-12


class MLPEncoder(BaseEncoder):
    """q(z|x) for pythae: ``body`` (784-H...-H_n, activation after each layer), ``mean_head``, ``logvar_head``."""

    def __init__(self, input_shape: tuple[int, ...], hidden: tuple[int, ...], latent_dim: int, activation: str):
        BaseEncoder.__init__(self)
        self.body = nn.Sequential(nn.Flatten(), _mlp([math.prod(input_shape), *hidden], activation, True))
        self.mean_head = nn.Linear(hidden[-1], latent_dim)
        self.logvar_head = nn.Linear(hidden[-1], latent_dim)

    def forward(self, x: Tensor) -> ModelOutput:
        features = self.body(x)
        return ModelOutput(embedding=self.mean_head(features), log_covariance=self.logvar_head(features))


class MLPDecoder(BaseDecoder):
    """p(x|z) for pythae: latent-H_n-...-H_1-784 logits, returned as Bernoulli probabilities of ``input_shape``."""

    def __init__(self, input_shape: tuple[int, ...], hidden: tuple[int, ...], latent_dim: int, activation: str):
        BaseDecoder.__init__(self)
        self.input_shape = tuple(input_shape)
        self.net = _mlp([latent_dim, *reversed(hidden), math.prod(input_shape)], activation, False)

    def forward(self, z: Tensor) -> ModelOutput:
        return ModelOutput(reconstruction=torch.sigmoid(self.net(z)).reshape(z.shape[0], *self.input_shape))


def pythae_networks(hidden: tuple[int, ...], latent_dim: int, activation: str,
                    input_shape: tuple[int, ...] = INPUT_SHAPE) -> tuple[MLPEncoder, MLPDecoder]:
    return (MLPEncoder(input_shape, hidden, latent_dim, activation),
            MLPDecoder(input_shape, hidden, latent_dim, activation))


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def vaekit_model_from_pythae(model, activation: str) -> VAEModel:
    """The ``VAEModel`` with the weights of a pythae VAE/IWAE/VAMP built on ``MLPEncoder``/``MLPDecoder``."""
    encoder, decoder = model.encoder, model.decoder
    if not isinstance(encoder, MLPEncoder) or not isinstance(decoder, MLPDecoder):
        raise TypeError("only pythae models built on pythae_adapter.MLPEncoder/MLPDecoder can be converted")
    hidden = tuple(layer.out_features for layer in _linears(encoder.body))
    vamp = getattr(model, "model_name", "") == "VAMP"
    config = ModelConfig(input_shape=tuple(decoder.input_shape), latent_dim=encoder.mean_head.out_features,
                         hidden=hidden, arch="mlp", activation=activation, likelihood="bernoulli",
                         prior="vamp" if vamp else "standard-normal",
                         vamp_components=model.number_components if vamp else 500)
    ours = VAEModel(config)
    pairs = list(zip(_linears(ours.encoder) + [ours.mean_head, ours.logvar_head] + _linears(ours.decoder),
                     _linears(encoder.body) + [encoder.mean_head, encoder.logvar_head] + _linears(decoder.net)))
    assert len(pairs) == len(_linears(ours)) and all(
        a.weight.shape == b.weight.shape for a, b in pairs), "architectures differ"
    with torch.no_grad():
        for mine, theirs in pairs:
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
        if vamp:
            ours.prior.pseudo_inputs.copy_(torch.logit(pythae_pseudo_inputs(model).double().clamp(
                PSEUDO_INPUT_EPS, 1 - PSEUDO_INPUT_EPS)).reshape(ours.prior.pseudo_inputs.shape))
    return ours.eval()


def pythae_pseudo_inputs(model) -> Tensor:
    """A pythae VAMP's pseudo-inputs as its encoder sees them, shape (components, pixels)."""
    linear = model.pseudo_inputs[0]
    eye = torch.eye(model.number_components, dtype=linear.weight.dtype, device=linear.weight.device)
    return model.pseudo_inputs(eye)


@torch.no_grad()
def pythae_densities(model, x: Tensor, z: Tensor) -> dict[str, Tensor]:
    """log p(x|z), log q(z|x) and log p(z) from pythae's own networks and formulas, for z of shape (samples, batch,
    latent). pythae leaves out the Gaussians' -d/2 log(2 pi) (it cancels in its losses); it is added back here."""
    samples, batch, dim = z.shape
    out = model.encoder(x)
    mu, log_var = out.embedding, out.log_covariance
    log_q = (-0.5 * (log_var + (z - mu) ** 2 / log_var.exp())).sum(-1)  # pythae's formula (iwae_model.py)
    probs = model.decoder(z.reshape(-1, dim))["reconstruction"].reshape(samples, batch, -1)
    targets = x.reshape(1, batch, -1).expand_as(probs)
    log_px_z = -F.binary_cross_entropy(probs, targets, reduction="none").sum(-1)
    constant = -0.5 * dim * math.log(2 * math.pi)
    if getattr(model, "model_name", "") == "VAMP":
        log_pz = model._log_p_z(z.reshape(-1, dim)).reshape(samples, batch)
    else:
        log_pz = -0.5 * (z ** 2).sum(-1)
    return {"log_px_z": log_px_z, "log_qz_x": log_q + constant, "log_pz": log_pz + constant}


@torch.no_grad()
def vaekit_densities(model: VAEModel, x: Tensor, z: Tensor) -> dict[str, Tensor]:
    """The same three from the ``VAEModel`` as vaekit's importance sampling computes them (its distributions)."""
    return {"log_px_z": model.decode(z).log_prob(x), "log_qz_x": model.encode(x).log_prob(z),
            "log_pz": model.prior_distribution().log_prob(z)}


@torch.no_grad()
def compare_densities(model, ours: VAEModel, x: Tensor, num_samples: int = 4, seed: int = 0,
                      dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """Largest absolute difference of each density between pythae's networks and the ``VAEModel`` at the same z
    (drawn from q(z|x)), in ``dtype`` (float64 by default, where pythae's sigmoid-then-log loses nothing)."""
    import copy

    theirs = copy.deepcopy(model).to(dtype).eval()
    if hasattr(theirs, "idle_input"):
        theirs.idle_input = theirs.idle_input.to(dtype)
    mine = copy.deepcopy(ours).to(dtype).eval()
    x = x.to(dtype)
    generator = torch.Generator().manual_seed(seed)
    out = theirs.encoder(x)
    std = torch.exp(0.5 * out.log_covariance)
    z = out.embedding + std * torch.randn((num_samples, *std.shape), generator=generator, dtype=dtype)
    a, b = pythae_densities(theirs, x, z), vaekit_densities(mine, x, z)
    return {name: float((a[name] - b[name]).abs().max()) for name in a}
