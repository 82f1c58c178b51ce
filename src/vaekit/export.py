"""Shipping a trained model without vaekit: the decoder (by default) or the encoder as ONNX, TorchScript or torch.export.

    decoder   z (batch, latent_dim) float32        -> x_mean (batch, *input_shape): the mean of p(x|z), original units
    encoder   x (batch, *input_shape) float32      -> z_mean, z_log_variance (batch, latent_dim): q(z|x)

Formats, chosen by the file suffix:

    .onnx          ONNX through ``torch.onnx.export`` (needs ``pip install 'vaekit[export]'``: onnx, onnxscript;
                   onnxruntime for the parity check); run it with onnxruntime or any ONNX runtime
    .pt / .ts      TorchScript (``torch.jit.trace``), for ``torch.jit.load`` in Python or libtorch (C++).
                   PyTorch marks TorchScript as deprecated; prefer ONNX or .pt2 for new deployments.
    .pt2           a ``torch.export`` program, for ``torch.export.load(path).module()``

The batch axis is dynamic. The data's standardization (CSV data) is folded into the graph, so inputs and
outputs are in the data's own units, as with ``VAE.decode`` and ``VAE.encode``. After writing, the file is
loaded back and run on a seeded batch, and the largest absolute difference from PyTorch is reported.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ._version import __version__
from .api import VAE
from .errors import ConfigError, VaekitError
from .fileio import atomic_write_bytes
from .names import EXPORT_FORMATS as FORMATS

PARTS = ("decoder", "encoder")
PARITY_TOLERANCE = 1e-4  # absolute and relative; float32 kernels of two runtimes differ by a few ulps, far below this


class MissingDependencyError(VaekitError, ImportError):
    """An optional package that a feature needs is not installed."""


def require(*modules: str, feature: str, extra: str = "export") -> None:
    """Import-check optional packages, raising one clear error that names all missing ones and the fix."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependencyError(f"{feature} needs the package(s) {', '.join(missing)}, which are not installed; "
                                     f"install them with: pip install 'vaekit[{extra}]'")


# The model's submodules that only one direction needs: a shipped decoder carries no encoder weights.
ENCODER_MODULES = ("encoder", "mean_head", "logvar_head")
DECODER_MODULES = ("decoder",)


def _without(model: nn.Module, names: tuple[str, ...]) -> nn.Module:
    """A copy of ``model`` with the named submodules replaced by empty ``Identity`` modules."""
    pruned = copy.deepcopy(model).cpu().eval()
    for name in names:
        if isinstance(getattr(pruned, name, None), nn.Module):
            setattr(pruned, name, nn.Identity())
    return pruned


def _add_standardization(graph: nn.Module, vae: VAE) -> None:
    """Buffers ``mean`` and ``std`` of the data's standardization (CSV data), shaped like one example."""
    data = vae.config_.data
    graph.standardized = data.standardize_mean is not None
    if graph.standardized:
        shape = tuple(vae.input_shape_)
        graph.register_buffer("mean", torch.tensor(data.standardize_mean, dtype=torch.float32).reshape(shape))
        graph.register_buffer("std", torch.tensor(data.standardize_std, dtype=torch.float32).reshape(shape))


class DecoderGraph(nn.Module):
    """z -> mean of p(x|z), in the data's original units."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.model = _without(vae.model_, ENCODER_MODULES)
        _add_standardization(self, vae)

    def forward(self, z: Tensor) -> Tensor:
        x = self.model.decode(z).mean
        return x * self.std + self.mean if self.standardized else x


class EncoderGraph(nn.Module):
    """x in the data's original units -> mean and log-variance of q(z|x)."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.model = _without(vae.model_, DECODER_MODULES)
        _add_standardization(self, vae)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.standardized:
            x = (x - self.mean) / self.std
        return self.model.posterior_params(x)


@dataclass
class ExportResult:
    """What was written and how closely the exported graph matches PyTorch."""

    path: Path
    part: str
    format: str
    input_names: list[str]
    output_names: list[str]
    max_abs_error: float | None  # largest |exported - PyTorch| over a seeded batch; None when not checked

    def summary(self) -> str:
        check = "" if self.max_abs_error is None else f"; parity check: max |difference| {self.max_abs_error:.3g}"
        return (f"{self.part} as {self.format} ({', '.join(self.input_names)} -> {', '.join(self.output_names)})"
                f" to {self.path}{check}")


def export_model(vae: VAE, path: str | Path, part: str = "decoder", *, verify: bool = True,
                 check_batch: int = 64, seed: int = 0) -> ExportResult:
    """Write the decoder (or encoder) of a fitted VAE to ``path``; the suffix picks the format (see module doc)."""
    vae._check_fitted()
    if vae.is_table_:
        raise ConfigError("exporting a model of a mixed table is not supported: its decoder's outputs are per-column "
                          "parameters (softmax logits, discretized Gaussians, missingness) that only vaekit turns into "
                          "rows; use the Python API or vaekit serve for it")
    if vae.model_.conditional:
        raise ConfigError("exporting a conditional model is not supported yet: its networks take the one-hot label "
                          "beside x and z; use the Python API or vaekit serve for it")
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"cannot export to {path}: use a file ending in {', '.join(FORMATS)}")
    if part not in PARTS:
        raise ConfigError(f"the part to export must be one of {', '.join(PARTS)}, got {part!r}")
    if fmt == "onnx":
        require("onnx", "onnxscript", feature="exporting to ONNX")
        if verify:
            require("onnxruntime", feature="checking the exported ONNX file (or pass verify=False / --no-verify)")
    graph = (DecoderGraph(vae) if part == "decoder" else EncoderGraph(vae)).cpu().eval()
    example = example_inputs(vae, part, check_batch, seed)
    input_names = ["z"] if part == "decoder" else ["x"]
    output_names = ["x_mean"] if part == "decoder" else ["z_mean", "z_log_variance"]
    metadata = _metadata(vae, part, input_names, output_names)
    with torch.no_grad(), _quiet_exporters():
        if fmt == "onnx":
            data = _onnx_bytes(graph, example, input_names, output_names, metadata)
        elif fmt == "torchscript":
            data = _torchscript_bytes(graph, example, metadata)
        else:
            data = _torch_export_bytes(graph, example, input_names[0])
    atomic_write_bytes(path, data)
    error = None
    if verify:
        with torch.no_grad():
            expected = graph(example)
        expected = [expected] if isinstance(expected, Tensor) else list(expected)
        outputs = run_exported(path, example.numpy())
        error = max(float(np.abs(o - e.numpy()).max()) for o, e in zip(outputs, expected))
        if not all(np.allclose(o, e.numpy(), rtol=PARITY_TOLERANCE, atol=PARITY_TOLERANCE) for o, e in zip(outputs, expected)):
            raise VaekitError(f"the exported {part} in {path} differs from PyTorch by up to {error:.3g} "
                              f"(tolerance {PARITY_TOLERANCE} absolute and relative); please report this")
    return ExportResult(path, part, fmt, input_names, output_names, error)


def example_inputs(vae: VAE, part: str, batch: int, seed: int) -> Tensor:
    """A seeded batch: prior draws for the decoder, decoded prior draws (data-like inputs) for the encoder."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, vae.latent_dim_, generator=generator)
    if part == "decoder":
        return z
    return torch.from_numpy(np.ascontiguousarray(vae.decode(z.numpy()), dtype=np.float32))


def _metadata(vae: VAE, part: str, inputs: list[str], outputs: list[str]) -> dict[str, str]:
    return {"producer": "vaekit", "vaekit_version": __version__, "part": part,
            "latent_dim": str(vae.latent_dim_), "input_shape": json.dumps(list(vae.input_shape_)),
            "likelihood": vae.config_.model.likelihood, "inputs": ",".join(inputs), "outputs": ",".join(outputs),
            "description": ("mean of p(x|z) in the data's units for latent vectors z" if part == "decoder" else
                            "mean and log-variance of q(z|x) for examples x in the data's units")}


@contextlib.contextmanager
def _quiet_exporters():
    """Silence the exporters' chatter (optional torchvision ops, upstream deprecation notices) during one export."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\..*")
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _dynamic_batch(name: str) -> dict:
    return {name: {0: torch.export.Dim("batch", min=1)}}


def _onnx_bytes(graph: nn.Module, example: Tensor, input_names: list[str], output_names: list[str],
                metadata: dict[str, str]) -> bytes:
    program = torch.onnx.export(graph, (example,), None, input_names=input_names, output_names=output_names,
                                dynamic_shapes=_dynamic_batch(input_names[0]),
                                dynamo=True, verbose=False, optimize=True)
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    import onnx

    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _torchscript_bytes(graph: nn.Module, example: Tensor, metadata: dict[str, str]) -> bytes:
    traced = torch.jit.trace(graph, (example,), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={"vaekit.json": json.dumps(metadata)})
    return buffer.getvalue()


def _torch_export_bytes(graph: nn.Module, example: Tensor, input_name: str) -> bytes:
    program = torch.export.export(graph, (example,), dynamic_shapes=_dynamic_batch(input_name))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def run_exported(path: str | Path, inputs: np.ndarray) -> list[np.ndarray]:
    """Run an exported file on one input batch with its own runtime (onnxruntime, TorchScript or torch.export)."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    array = np.ascontiguousarray(inputs, dtype=np.float32)
    if fmt == "onnx":
        require("onnxruntime", feature="running an ONNX file")
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: array})
    with torch.no_grad(), _quiet_exporters():
        if fmt == "torchscript":
            module = torch.jit.load(str(path), map_location="cpu")
        elif fmt == "torch.export":
            module = torch.export.load(str(path)).module()
        else:
            raise ConfigError(f"cannot run {path}: unknown format")
        out = module(torch.from_numpy(array))
    return [o.numpy() for o in ([out] if isinstance(out, Tensor) else out)]
