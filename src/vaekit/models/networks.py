"""Encoder and decoder bodies: a multilayer perceptron, and a convolutional pair for images.

An encoder body maps a batch of examples to a feature vector; the model puts the mean and
log-variance heads on top. A decoder maps latent vectors to the likelihood's parameters, shaped
``(batch, params_per_value, *data_shape)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import ModelConfig

ACTIVATION_LAYERS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}

DEFAULT_HIDDEN = {"mlp": (400,), "conv": (32, 64)}
# Narrow vectors of real numbers (a numeric table's standardized columns, an array, of at most NARROW_COLUMNS
# values): two hidden layers of 128. Chosen against 400, (64, 64) and (256, 256) by the default anomaly detector's
# AUROC on labelled tables that the anomaly benchmark does not use (benchmarks/vector_network.py; the numbers are in
# docs/benchmarks.md): best on six tables of 4 to 9 columns, worst of the three on four of 28 to 129 columns, where
# one layer of 400 stays the best.
VECTOR_HIDDEN = (128, 128)
NARROW_COLUMNS = 16


def default_hidden(arch: str, kind: str, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The hidden sizes vaekit picks: ``VECTOR_HIDDEN`` for real-valued vectors of at most ``NARROW_COLUMNS``
    values, else ``DEFAULT_HIDDEN[arch]`` (images, [0, 1] vectors, wider vectors and mixed tables)."""
    if arch == "mlp" and kind == "real" and len(input_shape) == 1 and input_shape[0] <= NARROW_COLUMNS:
        return VECTOR_HIDDEN
    return DEFAULT_HIDDEN.get(arch, (400,))


def default_arch(input_shape: tuple[int, ...]) -> str:
    """Convolutional for images of at least 16x16 pixels, MLP otherwise (vectors, tiny images)."""
    if len(input_shape) == 3 and min(input_shape[1:]) >= 16:
        return "conv"
    return "mlp"


def mlp(sizes: list[int], activation: str, final_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if final_activation or i < len(sizes) - 2:
            layers.append(ACTIVATION_LAYERS[activation]())
    return nn.Sequential(*layers)


def _conv_sizes(height: int, width: int, stages: int) -> list[tuple[int, int]]:
    """Spatial sizes after each stride-2 stage (kernel 3, padding 1 halves, rounding up)."""
    sizes = [(height, width)]
    for _ in range(stages):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


class TableInput(nn.Module):
    """The encoder's view of a table row: NaN (missing) values as 0, plus one 0/1 input per column saying whether
    its cell is missing (the masked input of HI-VAE / MIWAE)."""

    def __init__(self, columns: list[dict]) -> None:
        super().__init__()
        first, at = [], 0
        for c in columns:
            first.append(at)
            at += int(c["width"])
        self.register_buffer("missing_pos", torch.tensor(first, dtype=torch.long), persistent=False)
        self.extra = len(first)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        missing = torch.isnan(x)
        values = torch.where(missing, torch.zeros_like(x), x)
        if not self.extra:
            return values
        return torch.cat([values, missing.index_select(-1, self.missing_pos).to(values.dtype)], -1)


class TableOutput(nn.Module):
    """A table decoder's last layer: a linear map to only the parameters the column likelihoods read (positions
    in the flattened ``shape``, from ``TableLikelihood.read_positions``), placed into that layout with zeros
    elsewhere. For a table of mostly categories this is about a third of the outputs of one linear layer to all
    three per value: the largest matrix product of a table model's training step shrinks by as much."""

    def __init__(self, n_in: int, positions: Tensor, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.linear = nn.Linear(n_in, len(positions))
        self.register_buffer("positions", positions.clone(), persistent=False)

    def forward(self, h: Tensor) -> Tensor:
        y = self.linear(h)
        full = y.new_zeros(*y.shape[:-1], math.prod(self.shape)).index_copy(-1, self.positions, y)
        return full.reshape(*y.shape[:-1], *self.shape)


# Per output parity (0 even, 1 odd), in rows and alike in columns: (tap, shift in input pixels) of each term; even
# coordinates take tap 1 of the same pixel, odd ones tap 2 of the same pixel and tap 0 of the next.
_PARITY_TAPS = {0: [(1, 0)], 1: [(2, 0), (0, 1)]}


def _transposed_conv_by_products(h: Tensor, weight: Tensor, bias: Tensor | None, size: tuple[int, int]) -> Tensor:
    """``F.conv_transpose2d(h, weight, bias, stride=2, padding=1)`` cropped to ``size`` (2H-1 or 2H by 2W-1 or 2W),
    computed as one matrix product and a few shifted additions (no autograd: see ``_NarrowTransposedConv``).

    With kernel 3, stride 2 and padding 1, output pixel (2m + a, 2n + b) receives from input pixel (m, n) through
    tap 1 of an even coordinate, and through taps 2 at m and 0 at m + 1 of an odd one. The product
    P = weight^T h gives every input pixel's contribution through every tap (9 per output channel); each of the
    four output parities is then the sum of one to four of P's tap planes, shifted by at most one pixel, written
    straight into its strided view of the output."""
    batch, n_in, height, width = h.shape
    n_out = weight.shape[1]
    taps = torch.matmul(weight.reshape(n_in, n_out * 9).t(), h.reshape(batch, n_in, height * width))
    taps = taps.view(batch, n_out, 3, 3, height, width)
    out = h.new_empty(batch, n_out, height, 2, width, 2)
    for row in (0, 1):
        for col in (0, 1):
            plane = out[:, :, :, row, :, col]
            # the unshifted term (listed first) covers the whole plane; the shifted ones all but its last row or column
            plane.copy_(taps[:, :, _PARITY_TAPS[row][0][0], _PARITY_TAPS[col][0][0]])
            for tap_r, down in _PARITY_TAPS[row]:
                for tap_c, right in _PARITY_TAPS[col]:
                    if down or right:
                        plane[:, :, :height - down, :width - right].add_(taps[:, :, tap_r, tap_c, down:, right:])
    out = out.view(batch, n_out, 2 * height, 2 * width)
    if bias is not None:
        out.add_(bias.view(1, -1, 1, 1))
    return out[..., :size[0], :size[1]]


class _NarrowTransposedConv(torch.autograd.Function):
    """``_transposed_conv_by_products`` forward; the backward pass by products too. Output pixel y = 2i - 1 + k
    takes input pixel i through tap k, so with the output's gradient g gathered per tap, G[k, i] = g[2i - 1 + k]
    (0 outside the output), the input's gradient is weight G and the weight's gradient the sum over the batch of
    h G^T: two batched matrix products where oneDNN's transposed-convolution backward took twice as long."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None, size: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(h, weight)  # (the forward of an autograd.Function runs without autograd)
        ctx.has_bias = bias is not None
        return _transposed_conv_by_products(h, weight, bias, size)

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, weight = ctx.saved_tensors
        batch, n_in, height, width = h.shape
        n_out = weight.shape[1]
        # g shifted by one (the padding) and padded to 2H + 1 rows and 2W + 1 columns; then every (i, j) and tap.
        padded = nn.functional.pad(grad, (1, 2 * width - grad.shape[3], 1, 2 * height - grad.shape[2]))
        gathered = padded.unfold(2, 3, 2).unfold(3, 3, 2)  # (batch, out, H, W, 3, 3): padded[2i + r, 2j + c]
        gathered = gathered.permute(0, 1, 4, 5, 2, 3).reshape(batch, n_out * 9, height * width)
        grad_h = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.matmul(weight.reshape(n_in, n_out * 9), gathered).view_as(h)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.matmul(h.reshape(batch, n_in, height * width), gathered.transpose(1, 2)).sum(0)
            grad_weight = grad_weight.view_as(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_h, grad_weight, grad_bias, None


class NarrowOutputConvTranspose2d(nn.ConvTranspose2d):
    """The decoder's last transposed convolution (kernel 3, stride 2, padding 1) onto a few output planes (an image's
    channels times the likelihood's parameters per value: 1 for grayscale Bernoulli, 3 for colour).

    On the CPU, oneDNN's kernel for a transposed convolution with one to three output channels ran at a tenth of
    the speed of the layers before it: 4.0 ms of a 30 ms training step of the default Fashion-MNIST model at batch
    256, against 1.3 ms for the same numbers computed as one matrix product (``_transposed_conv_by_products``),
    and its gradient likewise (``_NarrowTransposedConv``). The same parameters and state-dict keys as
    ``nn.ConvTranspose2d``; anything else (more output channels, an accelerator, autocast, vmap, tracing and
    export) takes ``nn.ConvTranspose2d``'s path."""

    MAX_CHANNELS = 3  # measured: faster up to 3 output planes, slower from 6 (batch 256, 32 input channels)

    def _by_products(self, h: Tensor) -> bool:
        return (h.device.type == "cpu" and h.dim() == 4 and self.out_channels <= self.MAX_CHANNELS
                and self.kernel_size == (3, 3) and self.stride == (2, 2) and self.padding == (1, 1)
                and self.dilation == (1, 1) and self.groups == 1 and h.dtype in (torch.float32, torch.float64)
                and not torch.is_autocast_enabled("cpu") and not torch.jit.is_tracing()
                and not torch.jit.is_scripting() and not torch.onnx.is_in_onnx_export()
                and not torch._C._are_functorch_transforms_active())  # vmap, grad: PyTorch's own path

    def forward(self, h: Tensor, output_size: list[int] | None = None) -> Tensor:
        if output_size is not None or not self._by_products(h):
            return super().forward(h, output_size)
        size = (2 * h.shape[2] - 1 + self.output_padding[0], 2 * h.shape[3] - 1 + self.output_padding[1])
        if torch.is_grad_enabled() and (h.requires_grad or self.weight.requires_grad or (
                self.bias is not None and self.bias.requires_grad)):
            return _NarrowTransposedConv.apply(h, self.weight, self.bias, size)
        return _transposed_conv_by_products(h, self.weight, self.bias, size)  # nothing to differentiate


class ResidualBlock(nn.Module):
    """A residual convolutional cell, x + conv(act(conv(act(x)))) with 3x3 kernels keeping the size and channels
    (the pre-activation form of He et al. 2016). The second convolution starts at zero, so a new block is the
    identity and a deeper network starts as the shallow one (as NVAE and VDVAE scale their cells' last layers)."""

    def __init__(self, channels: int, activation: str) -> None:
        super().__init__()
        act = ACTIVATION_LAYERS[activation]
        self.body = nn.Sequential(act(), nn.Conv2d(channels, channels, 3, padding=1), act(),
                                  nn.Conv2d(channels, channels, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _residual(channels: int, config: ModelConfig) -> list[nn.Module]:
    return [ResidualBlock(channels, config.activation) for _ in range(config.residual_blocks)]


def join_label(x: Tensor, one_hot: Tensor, planes: bool) -> Tensor:
    """A conditional encoder's input: the one-hot labels (batch, classes) beside the examples, as constant extra
    channels of an image (``planes``, for convolutional encoders) or as extra values after the flattened example
    (Sohn et al. 2015's concatenation)."""
    if planes:
        return torch.cat([x, one_hot.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])], 1)
    return torch.cat([x.flatten(1), one_hot.to(x.dtype)], 1)


def build_encoder(config: ModelConfig) -> tuple[nn.Module, int]:
    """The encoder body and the size of the features it hands to the mean and variance heads."""
    labels = config.num_classes or 0  # a conditional model's encoder also reads the one-hot label (join_label)
    if config.arch == "mlp":
        n_in = math.prod(config.input_shape) + labels
        if config.table_columns is not None:  # a table: missing cells zeroed, a 0/1 missingness input per column
            table_input = TableInput(config.table_columns)
            body = nn.Sequential(table_input, mlp([n_in + table_input.extra, *config.hidden], config.activation,
                                                  final_activation=True))
            return body, config.hidden[-1]
        body = nn.Sequential(nn.Flatten(), mlp([n_in, *config.hidden], config.activation, final_activation=True))
        return body, config.hidden[-1]
    channels, height, width = config.input_shape
    act = ACTIVATION_LAYERS[config.activation]
    layers: list[nn.Module] = []
    n_in = channels + labels
    for n_out in config.hidden:
        layers += [nn.Conv2d(n_in, n_out, kernel_size=3, stride=2, padding=1), *_residual(n_out, config), act()]
        n_in = n_out
    h, w = _conv_sizes(height, width, len(config.hidden))[-1]
    layers.append(nn.Flatten())
    return nn.Sequential(*layers), config.hidden[-1] * h * w


class _Reshape(nn.Module):
    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)


def build_decoder(config: ModelConfig, params_per_value: int, read_positions: Tensor | None = None) -> nn.Module:
    """Decoder from ``latent_dim`` to ``(batch, params_per_value, *input_shape)`` parameters. ``read_positions``
    (MLP only): the flattened positions the likelihood reads, the only ones the last layer computes."""
    n_z = config.latent_dim + (config.num_classes or 0)  # a conditional decoder reads [z, one-hot y]
    if config.arch == "mlp":
        n_out = params_per_value * math.prod(config.input_shape)
        if read_positions is not None:
            body = mlp([n_z, *reversed(config.hidden)], config.activation, final_activation=True)
            return nn.Sequential(body, TableOutput(config.hidden[0], read_positions,
                                                   (params_per_value, *config.input_shape)))
        sizes = [n_z, *reversed(config.hidden), n_out]
        return nn.Sequential(mlp(sizes, config.activation, final_activation=False),
                             _Reshape(params_per_value, *config.input_shape))
    channels, height, width = config.input_shape
    act = ACTIVATION_LAYERS[config.activation]
    sizes = _conv_sizes(height, width, len(config.hidden))
    h, w = sizes[-1]
    widths = list(reversed(config.hidden))
    layers: list[nn.Module] = [nn.Linear(n_z, widths[0] * h * w), act(), _Reshape(widths[0], h, w)]
    layers += _residual(widths[0], config)
    targets = list(reversed(sizes[:-1]))
    outs = widths[1:] + [params_per_value * channels]
    n_in = widths[0]
    for i, (n_out, (th, tw)) in enumerate(zip(outs, targets)):
        current_h, current_w = sizes[len(sizes) - 1 - i]
        # Transposed conv (k=3, s=2, p=1) gives 2*size - 1 + output_padding: pick the padding that lands on the target.
        padding = (th - (2 * current_h - 1), tw - (2 * current_w - 1))
        last = i == len(outs) - 1
        layer = NarrowOutputConvTranspose2d if last else nn.ConvTranspose2d
        layers.append(layer(n_in, n_out, kernel_size=3, stride=2, padding=1, output_padding=padding))
        if not last:
            layers += [*_residual(n_out, config), act()]
        n_in = n_out
    layers.append(_Reshape(params_per_value, channels, height, width))
    return nn.Sequential(*layers)
