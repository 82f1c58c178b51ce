"""The networks' own computations against PyTorch's modules: the decoder's narrow last transposed convolution."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vaekit.config import ModelConfig
from vaekit.models.model import VAEModel
from vaekit.models.networks import NarrowOutputConvTranspose2d, _NarrowTransposedConv


def pair(n_in: int, n_out: int, output_padding: tuple[int, int]) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(n_out + 10 * output_padding[0] + 100 * output_padding[1])
    fast = NarrowOutputConvTranspose2d(n_in, n_out, 3, stride=2, padding=1, output_padding=output_padding).double()
    plain = nn.ConvTranspose2d(n_in, n_out, 3, stride=2, padding=1, output_padding=output_padding).double()
    plain.load_state_dict(fast.state_dict())  # the same parameters under the same keys
    return fast, plain


@pytest.mark.parametrize("n_out", [1, 2, 3])
@pytest.mark.parametrize("output_padding", [(0, 0), (1, 1), (0, 1), (1, 0)])
def test_narrow_transposed_conv_equals_pytorchs_in_value_and_gradient(n_out, output_padding):
    fast, plain = pair(4, n_out, output_padding)
    h = torch.randn(3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    out = fast(h)
    assert type(out.grad_fn).__name__ == "_NarrowTransposedConvBackward"  # the products, not PyTorch's kernel
    expected = plain(h)
    assert out.shape == expected.shape == (3, n_out, 9 + output_padding[0], 11 + output_padding[1])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    g = torch.randn_like(out)
    ours = torch.autograd.grad(out, [h, fast.weight, fast.bias], g)
    theirs = torch.autograd.grad(expected, [h, plain.weight, plain.bias], g)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    with torch.no_grad():  # inference: the products without an autograd node
        torch.testing.assert_close(fast(h), expected.detach(), rtol=0, atol=1e-12)


def test_narrow_transposed_conv_passes_gradcheck():
    fast, _ = pair(3, 2, (1, 0))
    h = torch.randn(2, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h, w, b: _NarrowTransposedConv.apply(h, w, b, (8, 5)),
                                    (h, fast.weight, fast.bias))


def test_narrow_transposed_conv_takes_pytorchs_path_under_vmap_wider_outputs_and_tracing():
    fast, plain = pair(4, 2, (1, 1))
    h = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    per_example = torch.func.vmap(lambda t: fast(t.unsqueeze(0)).squeeze(0))(h)  # as likelihood regret calls it
    torch.testing.assert_close(per_example, plain(h), rtol=0, atol=1e-12)
    traced = torch.jit.trace(fast, h)
    assert "conv_transpose" in str(traced.inlined_graph) or "_convolution" in str(traced.inlined_graph)
    torch.testing.assert_close(traced(h), plain(h))
    wide = NarrowOutputConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1).double()
    assert wide(h.requires_grad_()).grad_fn.name() != "_NarrowTransposedConvBackward"


def test_the_conv_decoder_ends_in_the_narrow_layer_and_old_weights_load():
    config = ModelConfig(input_shape=(1, 28, 28), arch="conv", hidden=(8, 16), latent_dim=4, likelihood="bernoulli")
    model = VAEModel(config)
    layers = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [type(m) for m in layers] == [nn.ConvTranspose2d, NarrowOutputConvTranspose2d]
    # a decoder as earlier versions built it, with a plain ConvTranspose2d last: its weights load unchanged
    old = VAEModel(config)
    last = max(i for i, m in enumerate(old.decoder) if isinstance(m, nn.ConvTranspose2d))
    narrow = old.decoder[last]
    old.decoder[last] = nn.ConvTranspose2d(narrow.in_channels, narrow.out_channels, 3, stride=2, padding=1,
                                           output_padding=narrow.output_padding)
    model.load_state_dict(old.state_dict())  # strict: the same keys and shapes
    z = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(model.decoder(z), old.decoder(z), rtol=1e-5, atol=1e-6)
