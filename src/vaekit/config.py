"""Configuration as data: the dataclasses that fully describe a model, its data and its training.

A run directory's ``config.json`` is ``RunConfig.to_dict()``; ``RunConfig.from_dict`` validates it
field by field (names, types, ranges, format version) so that a foreign or damaged file is refused
with a message naming the bad field, never half-loaded.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

FORMAT_VERSION = 1
"""Version of the run-directory format (config.json, checkpoint.json, tensor names)."""

ARCHITECTURES = ("mlp", "conv")
# The p(x|z) families of vaekit.models.likelihoods (its registry is checked against this list by the tests).
LIKELIHOOD_NAMES = ("bernoulli", "gaussian", "gaussian-learned", "gaussian-decoder", "discretized-logistic", "table")
PRIOR_NAMES = ("standard-normal", "vamp")
# How q(z|x) runs through several stochastic layers: bottom-up (Burda et al. 2016) or top-down (Ladder VAE,
# Sønderby et al. 2016). The generative model is the same Markov chain for both.
INFERENCE_NAMES = ("bottom-up", "top-down")
OBJECTIVE_NAMES = ("elbo", "iwae")
ACTIVATIONS = ("relu", "tanh", "elu", "gelu", "silu")
BINARIZATIONS = ("none", "static", "dynamic")
TABLE_OUTPUTS = ("used", "all")  # ModelConfig.table_outputs
DATA_KINDS = ("unit", "real", "table")  # unit: every value in [0, 1] (intensities); real: any real number;
# table: a mixed table encoded by vaekit.data.table (DataConfig.table describes its columns)
LR_SCHEDULES = ("cosine", "constant")
DEFAULT_BATCH_SIZE = 256
# Free bits for a top-down hierarchy trained with the elbo objective when none are given: without them the layers
# above the first carry almost nothing (benchmarks/pythae_side_by_side.py: 28+1+0 active units in a 32-16-8 ladder
# after 10 epochs, 30+16+8 with 0.1, and a likelihood 1.37 nats better).
DEFAULT_LADDER_FREE_BITS = 0.1
DEFAULT_LR = 6e-3  # at DEFAULT_BATCH_SIZE; tuned for time to a test ELBO on Fashion-MNIST (benchmarks/speed.py)


def default_lr(batch_size: int) -> float:
    """The learning rate used unless one is given: 6e-3 at batch 256, scaled by sqrt(batch / 256) for Adam."""
    return DEFAULT_LR * math.sqrt(batch_size / DEFAULT_BATCH_SIZE)
# Without --epochs / --batch-size, training takes at least this many optimizer steps: ten epochs of a large data
# set, more epochs (and batches of at least 8 per epoch) for a small one, which 10 epochs would barely move.
MIN_DEFAULT_STEPS = 2000
SMALL_DATA = 8 * DEFAULT_BATCH_SIZE


def default_schedule(num_train: int, batch_size: int | None = None, epochs: int | None = None) -> tuple[int, int, str]:
    """Batch size and epochs for ``num_train`` training examples where not given, and a sentence saying what was
    chosen: batch 256 (for fewer than 2,048 examples one eighth of them, at least 16), and 10 epochs or as many
    as give ``MIN_DEFAULT_STEPS`` steps."""
    chosen = []
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE if num_train >= SMALL_DATA else max(16, math.ceil(num_train / 8))
        batch_size = max(1, min(batch_size, num_train))
        if batch_size != DEFAULT_BATCH_SIZE:
            chosen.append(f"batch {batch_size}")
    if epochs is None:
        steps_per_epoch = max(1, math.ceil(num_train / batch_size))
        epochs = max(10, math.ceil(MIN_DEFAULT_STEPS / steps_per_epoch))
        if epochs != 10:
            chosen.append(f"{epochs} epochs")
    reason = (f"{' and '.join(chosen)} chosen for {num_train:,} training examples (at least {MIN_DEFAULT_STEPS:,} "
              "optimizer steps; give --epochs / --batch-size to choose yourself)") if chosen else ""
    return batch_size, epochs, reason


DEFAULT_LATENT_DIM = 20


def default_latent_dim(input_shape: tuple[int, ...], num_columns: int | None = None) -> tuple[int, str]:
    """The latent size used unless one is given, and a sentence saying why when it is not the usual 20.

    Images: 20. Vectors and tables: half their number of columns (rounded up), between 2 and 20. A latent space
    larger than the data's own dimension has nothing to hold, and on small tables it costs: with 20 latent
    dimensions for iris's 4 columns, -log p(x) ranked a held-out species below chance (``benchmarks/anomaly_tabular.py``).
    ``num_columns`` is a table's column count (its one-hot encoding is wider); else the vector's length.
    """
    if len(input_shape) >= 2 and num_columns is None:
        return DEFAULT_LATENT_DIM, ""
    columns = num_columns if num_columns is not None else math.prod(input_shape)
    latent = max(2, min(DEFAULT_LATENT_DIM, math.ceil(columns / 2)))
    if latent == DEFAULT_LATENT_DIM:
        return latent, ""
    return latent, (f"latent size {latent} chosen for {columns} columns (half of them, 2 to {DEFAULT_LATENT_DIM}; "
                    "give --latent-dim to choose yourself)")


DEVICE_TYPES = ("cpu", "cuda", "mps")
# fp32: everything in float32; bf16/fp16: the networks run under torch.autocast in that type (fp16 with
# gradient scaling), densities and sums stay in float32.
PRECISIONS = ("fp32", "bf16", "fp16")
OUTPUT_INITS = ("auto", "marginal", "pytorch")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class ModelConfig:
    """The network and the probabilistic model; with the weights it rebuilds the model exactly."""

    input_shape: tuple[int, ...]
    latent_dim: int = 20
    arch: str = "mlp"
    hidden: tuple[int, ...] = (400,)
    # Convolutional networks: residual cells (x + conv(act(conv(act(x)))), 3x3, the second conv starting at zero)
    # after each stride-2 stage of the encoder and before each transposed one of the decoder; 0: none.
    residual_blocks: int = 0
    activation: str = "relu"
    likelihood: str = "bernoulli"
    gaussian_std: float = 1.0
    # Intensity levels of the discretized-logistic likelihood: 256 for 8-bit images.
    num_levels: int = 256
    # Stochastic layers above the first (Burda et al.'s two-layer model: latent_dim 100, upper (50,)),
    # each joined to the one below by MLPs with hidden sizes upper_hidden, in both directions.
    upper_latent_dims: tuple[int, ...] = ()
    upper_hidden: tuple[int, ...] = (100, 100)
    prior: str = "standard-normal"
    vamp_components: int = 500
    # With upper layers: "bottom-up" q(z_1|x) q(z_2|z_1) ..., or "top-down" (Ladder VAE) q(z_L|x) q(z_{L-1}|x, z_L) ...;
    # a one-layer model is the same model either way.
    inference: str = "bottom-up"
    # The table likelihood's columns (vaekit.data.table.TableSchema.model_columns): kind, width, missing, scale.
    table_columns: list[dict] | None = None
    # A table decoder's last layer: "used" gives only the parameters the column likelihoods read (a location or
    # logit per value, a log-scale per continuous or integer value, a missingness logit per column with missing
    # cells); "all" (runs made before it, read back unchanged) gives three per value, most of them unread.
    table_outputs: str = "all"
    # A conditional VAE (Sohn et al. 2015): q(z|x, y) and p(x|z, y) see the one-hot label y of num_classes classes,
    # named class_names (index order); None: an unconditional model.
    num_classes: int | None = None
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        _check_field_types(self, "model")
        self.input_shape = tuple(self.input_shape)
        self.hidden = tuple(self.hidden)
        self.upper_latent_dims = tuple(self.upper_latent_dims)
        self.upper_hidden = tuple(self.upper_hidden)
        _check(len(self.input_shape) in (1, 3) and all(s > 0 for s in self.input_shape),
               f"input_shape must be (features,) or (channels, height, width), got {self.input_shape}")
        _check(self.latent_dim >= 1, f"latent_dim must be at least 1, got {self.latent_dim}")
        _check(self.arch in ARCHITECTURES, f"arch must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}")
        _check(self.arch != "conv" or len(self.input_shape) == 3,
               f"arch 'conv' needs image data (channels, height, width), got shape {self.input_shape}")
        _check(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden),
               f"hidden must hold one or more positive sizes, got {self.hidden}")
        _check(self.residual_blocks >= 0, f"residual_blocks must be zero or positive, got {self.residual_blocks}")
        _check(self.residual_blocks == 0 or self.arch == "conv",
               "residual blocks are convolutional cells: they need --arch conv (image data)")
        _check(self.activation in ACTIVATIONS,
               f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        _check(self.likelihood in LIKELIHOOD_NAMES,
               f"likelihood must be one of {', '.join(LIKELIHOOD_NAMES)}, got {self.likelihood!r}")
        _check(math.isfinite(self.gaussian_std) and self.gaussian_std > 0,
               f"gaussian_std must be a positive number, got {self.gaussian_std}")
        _check(2 <= self.num_levels <= 65536, f"num_levels must lie in [2, 65536], got {self.num_levels}")
        _check(all(d >= 1 for d in self.upper_latent_dims),
               f"upper_latent_dims must hold positive sizes, got {self.upper_latent_dims}")
        _check(all(h >= 1 for h in self.upper_hidden), f"upper_hidden must hold positive sizes, got {self.upper_hidden}")
        _check(self.prior in PRIOR_NAMES, f"prior must be one of {', '.join(PRIOR_NAMES)}, got {self.prior!r}")
        _check(self.vamp_components >= 1, f"vamp_components must be at least 1, got {self.vamp_components}")
        _check(self.inference in INFERENCE_NAMES,
               f"inference must be one of {', '.join(INFERENCE_NAMES)}, got {self.inference!r}")
        _check(not (self.inference == "top-down" and self.upper_latent_dims and self.prior == "vamp"),
               "the VampPrior is not supported with top-down inference over several stochastic layers (its "
               "components would need the whole top-down pass of every pseudo-input); use --prior standard-normal "
               "or --inference bottom-up")
        _check((self.likelihood == "table") == (self.table_columns is not None),
               "the table likelihood and table_columns go together (a model of a mixed table)")
        if self.table_columns is not None:
            _check(isinstance(self.table_columns, list) and all(isinstance(c, dict) and isinstance(c.get("width"), int)
                                                                and c["width"] >= 1 for c in self.table_columns),
                   "table_columns must be a list of column descriptions with a positive width")
            _check(len(self.input_shape) == 1 and sum(c["width"] for c in self.table_columns) == self.input_shape[0],
                   f"table_columns encode to {sum(c['width'] for c in self.table_columns)} values, but input_shape is "
                   f"{self.input_shape}")
            _check(self.arch == "mlp", "a table model uses the mlp architecture")
            _check(self.table_outputs in TABLE_OUTPUTS,
                   f"table_outputs must be one of {', '.join(TABLE_OUTPUTS)}, got {self.table_outputs!r}")
            _check(self.prior != "vamp", "the VampPrior is not available for tables (its pseudo-inputs would need "
                                         "one-hot categories and missing cells); use --prior standard-normal")
        if self.num_classes is not None or self.class_names is not None:
            _check(isinstance(self.num_classes, int) and self.num_classes >= 2,
                   f"a conditional model needs at least two classes, got num_classes={self.num_classes}")
            _check(isinstance(self.class_names, list) and len(self.class_names) == self.num_classes
                   and all(isinstance(n, str) for n in self.class_names)
                   and len(set(self.class_names)) == len(self.class_names),
                   f"class_names must list {self.num_classes} distinct names, got {self.class_names!r}")
            _check(self.prior != "vamp", "the VampPrior is not available for conditional models (its pseudo-inputs "
                                         "would need labels too); use --prior standard-normal")


@dataclass
class DataConfig:
    """Where the data came from and how it was turned into tensors, so the same steps apply later."""

    source: str = "digits"
    kind: str = "unit"
    binarize: str = "none"
    binarize_threshold: float | None = None
    test_fraction: float = 0.1
    split_seed: int = 0
    image_size: tuple[int, ...] | None = None
    channels: int | None = None
    label_column: str | None = None
    columns: list[str] | None = None
    standardize_mean: list[float] | None = None
    standardize_std: list[float] | None = None
    # A mixed table's columns (vaekit.data.table.TableSchema.to_dict): kinds, labels, scales, missing rates.
    table: dict | None = None

    def __post_init__(self) -> None:
        _check_field_types(self, "data")
        _check((self.kind == "table") == (self.table is not None), "data kind 'table' and a table description go together")
        if self.image_size is not None:
            self.image_size = tuple(self.image_size)
            _check(len(self.image_size) == 2 and all(s >= 1 for s in self.image_size),
                   f"image_size must be (height, width), got {self.image_size}")
        _check(self.kind in DATA_KINDS, f"data kind must be one of {', '.join(DATA_KINDS)}, got {self.kind!r}")
        _check(self.binarize in BINARIZATIONS,
               f"binarize must be one of {', '.join(BINARIZATIONS)}, got {self.binarize!r}")
        _check(self.binarize_threshold is None or 0.0 <= self.binarize_threshold <= 1.0,
               f"binarize threshold must lie in [0, 1], got {self.binarize_threshold}")
        _check(0.0 < self.test_fraction < 1.0, f"test_fraction must lie strictly between 0 and 1, got {self.test_fraction}")
        _check(self.channels in (None, 1, 3), f"channels must be 1 or 3, got {self.channels}")
        _check((self.standardize_mean is None) == (self.standardize_std is None),
               "standardize_mean and standardize_std must be given together")
        if self.standardize_std is not None:
            _check(all(math.isfinite(s) and s > 0 for s in self.standardize_std),
                   "standardize_std must hold positive finite numbers")


@dataclass
class TrainConfig:
    """Optimisation settings. Epoch-level settings are counted in full passes over the training split."""

    epochs: int = 10
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float | None = None  # None: default_lr(batch_size), resolved on construction
    lr_schedule: str = "cosine"  # cosine: warm-up, then from lr down to 0 over the run's steps; constant: lr throughout
    weight_decay: float = 0.0
    # Adam's second-moment decay: 0.99 adapts faster than PyTorch's 0.999 and reached a given test ELBO sooner
    # (benchmarks/speed.py); 0.999 is what the published VAE/IWAE results used.
    adam_beta2: float = 0.99
    kl_weight: float = 1.0
    warmup_epochs: int = 0
    # Free bits (Kingma et al. 2016): the KL of each latent dimension, averaged over the batch, counts as at least this.
    free_bits: float = 0.0
    objective: str = "elbo"
    # Samples per example in the objective (Burda et al.'s k): iwae takes their log-mean-exp, elbo their mean.
    objective_samples: int = 1
    patience: int | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    checkpoint_every: int | None = None
    eval_batch_size: int = 1024
    # Gradients are scaled down to this total 2-norm when it is exceeded (None: no clipping).
    clip_grad_norm: float | None = None
    # NaN/inf loss or gradient: roll back to the last good state with half the learning rate, at most this
    # many times in a row before giving up (0: give up at the first one).
    max_rollbacks: int = 3
    # Training inputs perturbed on the fly (Ren et al. 2019): each value replaced by a random one with this
    # probability, a fresh draw every step. For the background model of the likelihood-ratio anomaly score.
    perturb_rate: float = 0.0
    # Where the decoder's output bias starts (``VAEModel.initialize_output_bias``): "marginal", the z-independent
    # best fit to the training data; "pytorch", PyTorch's default initialization; "auto", marginal under the
    # VampPrior (which otherwise collapses with a tanh network, docs/benchmarks.md) and pytorch otherwise.
    output_init: str = "auto"

    def __post_init__(self) -> None:
        _check_field_types(self, "train")
        _check(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        if self.lr is None:
            self.lr = default_lr(self.batch_size)
        _check(math.isfinite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr}")
        _check(self.lr_schedule in LR_SCHEDULES,
               f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        _check(0 <= self.adam_beta2 < 1, f"adam_beta2 must be in [0, 1), got {self.adam_beta2}")
        _check(0 <= self.perturb_rate < 1, f"perturb_rate must be in [0, 1), got {self.perturb_rate}")
        _check(math.isfinite(self.weight_decay) and self.weight_decay >= 0,
               f"weight_decay must be zero or positive, got {self.weight_decay}")
        _check(math.isfinite(self.kl_weight) and self.kl_weight >= 0,
               f"kl_weight must be zero or positive, got {self.kl_weight}")
        _check(self.warmup_epochs >= 0, f"warmup_epochs must be zero or positive, got {self.warmup_epochs}")
        _check(math.isfinite(self.free_bits) and self.free_bits >= 0,
               f"free_bits must be zero or positive (nats per latent dimension), got {self.free_bits}")
        _check(self.objective in OBJECTIVE_NAMES,
               f"objective must be one of {', '.join(OBJECTIVE_NAMES)}, got {self.objective!r}")
        _check(self.objective_samples >= 1, f"objective_samples must be at least 1, got {self.objective_samples}")
        _check(not (self.free_bits > 0 and self.objective == "iwae"),
               "free bits apply to the elbo objective, whose KL term they bound; the iwae objective has no "
               "separate KL term (use --warmup-epochs against posterior collapse instead)")
        _check(self.patience is None or self.patience >= 1, f"patience must be at least 1, got {self.patience}")
        _check(self.checkpoint_every is None or self.checkpoint_every >= 1,
               f"checkpoint_every must be at least 1 step, got {self.checkpoint_every}")
        _check(self.device == "auto" or self.device.split(":")[0] in DEVICE_TYPES,
               f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        _check(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        _check(self.eval_batch_size >= 1, f"eval_batch_size must be at least 1, got {self.eval_batch_size}")
        _check(self.clip_grad_norm is None or (math.isfinite(self.clip_grad_norm) and self.clip_grad_norm > 0),
               f"clip_grad_norm must be a positive number, got {self.clip_grad_norm}")
        _check(self.max_rollbacks >= 0, f"max_rollbacks must be zero or positive, got {self.max_rollbacks}")
        _check(self.output_init in OUTPUT_INITS,
               f"output_init must be one of {', '.join(OUTPUT_INITS)}, got {self.output_init!r}")


@dataclass
class RunConfig:
    """Everything that describes a run: model, data and training settings."""

    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        from ._version import __version__

        return {
            "format_version": FORMAT_VERSION,
            "vaekit_version": __version__,
            "model": _to_plain(dataclasses.asdict(self.model)),
            "data": _to_plain(dataclasses.asdict(self.data)),
            "train": _to_plain(dataclasses.asdict(self.train)),
        }

    @classmethod
    def from_dict(cls, raw: Any) -> "RunConfig":
        _check(isinstance(raw, dict), "the configuration must be a JSON object")
        version = raw.get("format_version")
        _check(version is not None, "the configuration has no format_version: it was not written by vaekit")
        _check(isinstance(version, int) and not isinstance(version, bool), f"format_version must be an integer, got {version!r}")
        _check(version <= FORMAT_VERSION,
               f"the run was written in format version {version}, newer than this vaekit reads "
               f"({FORMAT_VERSION}); upgrade vaekit")
        _check(version >= FORMAT_VERSION,
               f"the run was written in format version {version}, older than this vaekit reads ({FORMAT_VERSION})")
        unknown = set(raw) - {"format_version", "vaekit_version", "model", "data", "train"}
        _check(not unknown, f"unknown configuration section(s): {', '.join(sorted(unknown))}")
        _check("model" in raw, "the configuration has no 'model' section")
        return cls(
            model=dataclass_from_dict(ModelConfig, raw["model"], "model"),
            data=dataclass_from_dict(DataConfig, raw.get("data", {}), "data"),
            train=dataclass_from_dict(TrainConfig, raw.get("train", {}), "train"),
        )


def _check_field_types(config: Any, where: str) -> None:
    """Check (and normalize: tuples, floats) every field's type, as ``from_dict`` does for JSON, so that a
    config built in Python (``VAE(latent_dim="3")``) is refused with the field named, not by a TypeError later."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        plain = list(value) if isinstance(value, tuple) else value
        # NaN and inf pass here: each field's range check names them in its own words.
        setattr(config, f.name, _coerce(plain, hints[f.name], f"{where}.{f.name}", require_finite=False))


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def dataclass_from_dict(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a JSON object, checking every field's presence and type."""
    _check(isinstance(raw, dict), f"configuration section '{where}' must be a JSON object")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    _check(not unknown, f"unknown field(s) in '{where}': {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            _check(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING,
                   f"missing field '{where}.{name}'")
            continue
        kwargs[name] = _coerce(raw[name], hints[name], f"{where}.{name}")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"in '{where}': {err}") from None


def _is_bool(value: Any) -> bool:
    """A Python or numpy bool (numpy is not imported for this: the command line reads this module's names at startup)."""
    np = sys.modules.get("numpy")  # without numpy imported there is no numpy bool
    return isinstance(value, bool) or (np is not None and isinstance(value, np.bool_))


def _coerce(value: Any, hint: Any, where: str, require_finite: bool = True) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            _check(type(None) in args, f"'{where}' must not be null")
            return None
        non_null = [a for a in args if a is not type(None)]
        return _coerce(value, non_null[0], where, require_finite)
    if hint is bool:
        _check(isinstance(value, bool), f"'{where}' must be true or false, got {value!r}")
        return value
    if hint is int:
        _check(isinstance(value, numbers.Integral) and not _is_bool(value),
               f"'{where}' must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        _check(isinstance(value, numbers.Real) and not _is_bool(value),
               f"'{where}' must be a number, got {value!r}")
        _check(not require_finite or math.isfinite(value), f"'{where}' must be finite, got {value!r}")
        return float(value)
    if hint is str:
        _check(isinstance(value, str), f"'{where}' must be a string, got {value!r}")
        return value
    if origin in (tuple, list):
        _check(isinstance(value, list), f"'{where}' must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]", require_finite) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    return value
