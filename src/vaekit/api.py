"""The scikit-learn style estimator: ``VAE(...).fit(X)``, ``transform``, ``decode``, ``sample``, ``save``/``load``."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError

from .training import checkpoint as ckpt
from .config import (DEFAULT_LADDER_FREE_BITS, DataConfig, default_latent_dim, default_schedule, ModelConfig, RunConfig,
                     TrainConfig)
from .data import Dataset, as_dataset, data_digest
from .data.labels import resolve_labels, training_classes
from .data.sources import check_finite
from .data.table import TableSchema, is_frame
from .data.transforms import to_model_units, to_original_units
from .errors import CheckpointError, ConfigError, DataError
from .fileio import atomic_write_json, read_json
from .evaluation.likelihood import DEFAULT_MEMORY_BUDGET_MB, Evaluation, log_likelihood
from .evaluation.likelihood import elbo as elbo_of
from .evaluation.likelihood import evaluate as evaluate_model
from .models.likelihoods import DiscretizedLogisticLikelihood, default_likelihood, detect_levels
from .models.model import VAEModel
from .models.networks import default_arch, default_hidden
from .training.device import resolve_device
from .training.trainer import train


def layer_sizes(latent_dim: int, latent_layers: int) -> tuple[int, ...]:
    """The sizes of ``latent_layers`` stochastic layers from ``latent_dim`` up, each half the one below (rounded up):
    D, ceil(D/2), ceil(D/4), ...; e.g. 20, 10, 5 for D = 20 and three layers."""
    if isinstance(latent_layers, bool) or not isinstance(latent_layers, (int, np.integer)) or latent_layers < 1:
        raise ConfigError(f"latent_layers must be a whole number of at least 1, got {latent_layers!r}")
    return tuple(max(1, math.ceil(latent_dim / 2**i)) for i in range(int(latent_layers)))


def resolve_upper_latent_dims(latent_dim: int, upper_latent_dims: tuple[int, ...] = (),
                              latent_layers: int | None = None) -> tuple[int, ...]:
    """The layers above the first: ``upper_latent_dims`` when given (it wins), else from ``latent_layers``."""
    upper = tuple(upper_latent_dims)
    if latent_layers is None:
        return upper
    if upper:
        if len(upper) + 1 != latent_layers:
            raise ConfigError(f"latent_layers {latent_layers} disagrees with upper_latent_dims {upper} "
                              f"({len(upper) + 1} layers); give one of them")
        return upper
    return layer_sizes(latent_dim, latent_layers)[1:]


def latent_dim_for(dataset: Dataset) -> tuple[int, str]:
    """``config.default_latent_dim`` for this data (a table counts its columns, not their one-hot width), and the
    sentence saying why when it is not 20."""
    columns = (len(TableSchema.from_dict(dataset.config.table).model_columns())
               if dataset.config.table is not None else None)
    return default_latent_dim(tuple(dataset.shape), columns)


def make_run_config(dataset: Dataset, *, latent_dim: int | None = None, hidden: tuple[int, ...] | None = None,
                    arch: str = "auto", likelihood: str = "auto", activation: str = "relu",
                    gaussian_std: float = 1.0, upper_latent_dims: tuple[int, ...] = (),
                    upper_hidden: tuple[int, ...] = (100, 100), prior: str = "standard-normal",
                    vamp_components: int = 500, inference: str = "bottom-up", latent_layers: int | None = None,
                    objective_samples: int | None = None, conditional: bool = False, residual_blocks: int = 0,
                    **train_options: Any) -> RunConfig:
    """The full configuration for training on ``dataset``, with 'auto' choices resolved from its shape and kind.

    ``objective_samples`` defaults to 1 for the elbo objective and 5 for iwae; the discretized
    likelihood's number of levels is read off the data (256 for 8-bit images). ``latent_layers`` L gives
    L stochastic layers of sizes latent_dim, ceil(latent_dim/2), ... unless ``upper_latent_dims`` names them.
    ``latent_dim`` None: ``config.default_latent_dim`` (20 for images, half the columns for vectors and tables).
    ``conditional``: a conditional VAE on the data set's labels, its classes the data set's class names (or the
    distinct labels, sorted).
    """
    if latent_dim is None:
        latent_dim = latent_dim_for(dataset)[0]
    upper_latent_dims = resolve_upper_latent_dims(latent_dim, upper_latent_dims, latent_layers)
    if train_options.get("epochs") is None or train_options.get("batch_size") is None:
        train_options["batch_size"], train_options["epochs"], _ = default_schedule(
            dataset.num_train, train_options.get("batch_size"), train_options.get("epochs"))
    arch = default_arch(dataset.shape) if arch == "auto" else arch
    hidden = tuple(hidden) if hidden else default_hidden(arch, dataset.kind, dataset.shape)
    likelihood = default_likelihood(dataset.kind) if likelihood == "auto" else likelihood
    table_columns = None
    if dataset.config.table is not None:
        if likelihood != "table":
            raise ConfigError(f"a mixed table is modelled column by column (likelihood 'table'); {likelihood!r} "
                              "applies to arrays and images")
        table_columns = TableSchema.from_dict(dataset.config.table).model_columns()
    elif likelihood == "table":
        raise ConfigError("the table likelihood needs a table (a .csv/.tsv/.parquet file or a pandas DataFrame)")
    num_levels = 256
    if likelihood == DiscretizedLogisticLikelihood.name:
        num_levels = detect_levels(dataset.x_train) if dataset.config.binarize == "none" else 2
        if num_levels is None:
            raise DataError(f"the discretized-logistic likelihood models images whose values are k/255 (or another "
                            f"grid of at most 256 levels) in [0, 1]; {dataset.name} holds other values")
    if objective_samples is None:
        objective_samples = 5 if train_options.get("objective") == "iwae" else 1
    classes = None
    if conditional:
        if dataset.y_train is None or dataset.y_test is None:
            raise DataError(f"{dataset.name} has no labels, and a conditional model needs them: image folders give "
                            "one subfolder per class, tables a label column (--label-column), arrays a y "
                            "(VAE(conditional=True).fit(X, y))")
        classes = training_classes(np.concatenate([np.asarray(dataset.y_train, dtype=object),
                                                   np.asarray(dataset.y_test, dtype=object)]), dataset.class_names)
    model = ModelConfig(input_shape=dataset.shape, latent_dim=latent_dim, arch=arch, hidden=hidden,
                        residual_blocks=residual_blocks, activation=activation, likelihood=likelihood, gaussian_std=gaussian_std, num_levels=num_levels,
                        upper_latent_dims=tuple(upper_latent_dims), upper_hidden=tuple(upper_hidden), prior=prior,
                        vamp_components=vamp_components, inference=inference, table_columns=table_columns,
                        table_outputs="used" if table_columns is not None else "all",
                        num_classes=None if classes is None else len(classes), class_names=classes)
    if train_options.get("free_bits") is None:  # the default: free bits where a hierarchy's upper layers need them
        train_options["free_bits"] = default_free_bits(model, train_options.get("objective") or "elbo")
    return RunConfig(model=model, data=dataclasses.replace(dataset.config),
                     train=TrainConfig(objective_samples=objective_samples, **train_options))


def default_free_bits(model: ModelConfig, objective: str) -> float:
    """``DEFAULT_LADDER_FREE_BITS`` for a top-down hierarchy trained with the elbo objective, else 0 (off): one
    layer has no upper layers to lose, the iwae objective has no separate KL term, and the bottom-up hierarchy was
    not measured with them."""
    ladder = model.inference == "top-down" and len(model.upper_latent_dims) > 0
    return DEFAULT_LADDER_FREE_BITS if ladder and objective == "elbo" else 0.0


LABEL_COLUMN = "__vaekit_label__"
"""The column a DataFrame's ``y`` is held in while a conditional model is fitted on it."""


TRAINING_ROWS_FILE = "training_rows.json"


@dataclasses.dataclass(frozen=True)
class TrainingRows:
    """Which rows of the in-memory data handed to ``VAE.fit`` trained the weights (``train``) and which the fit held
    out for its validation loss (``held_out``), as positions in that data; ``digest`` is ``data.data_digest`` of it.
    ``AnomalyDetector.fit`` uses it to calibrate on rows the weights have not seen when given the same data."""

    digest: str
    rows: int
    train: np.ndarray
    held_out: np.ndarray

    @classmethod
    def of(cls, dataset: Dataset, digest: str | None) -> "TrainingRows | None":
        train, held_out = dataset.source_positions("train"), dataset.source_positions("test")
        if digest is None or train is None or held_out is None:
            return None
        rows = len(train) + len(held_out)
        if not np.array_equal(np.sort(np.concatenate([train, held_out])), np.arange(rows)):  # rows left out: unclear
            return None
        return cls(digest=digest, rows=rows, train=np.asarray(train), held_out=np.asarray(held_out))

    def to_dict(self) -> dict[str, Any]:
        return {"format": 1, "digest": self.digest, "rows": self.rows, "held_out": [int(i) for i in self.held_out]}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "TrainingRows":
        """The record ``to_dict`` wrote; anything else is a ``CheckpointError`` naming ``where``."""
        ok = (isinstance(d, dict) and d.get("format") == 1 and isinstance(d.get("digest"), str)
              and _is_count(d.get("rows")) and isinstance(d.get("held_out"), list)
              and all(_is_count(i) and 0 <= i < d["rows"] for i in d["held_out"])
              and len(set(d["held_out"])) == len(d["held_out"]))
        if not ok:
            raise CheckpointError(f"{where} is not a record of training rows that vaekit wrote; delete it, or fit again")
        held_out = np.asarray(sorted(d["held_out"]), dtype=np.int64)
        train = np.setdiff1d(np.arange(d["rows"]), held_out)
        return cls(digest=d["digest"], rows=int(d["rows"]), train=train, held_out=held_out)

    def matches(self, X: Any) -> bool:
        """Whether ``X`` holds exactly the rows the VAE was fitted on (same contents, same order)."""
        try:
            rows = len(X)
        except TypeError:  # a Dataset, a path: not in-memory rows
            return False
        return rows == self.rows and data_digest(X) == self.digest


class VAE(TransformerMixin, BaseEstimator):
    """A variational autoencoder with the scikit-learn estimator interface.

    ``fit(X)`` trains on an array of examples (``(n, features)`` or images ``(n, [channels,] h, w)``)
    or on a ``vaekit.data.Dataset``; ``transform(X)`` gives the posterior means; ``decode(z)`` and
    ``sample(n)`` use the decoder only; ``score_samples(X)`` estimates log p(x) by importance sampling
    and ``evaluate(X)`` reports -ELBO, -log p(x), bits/dim and active units with standard errors.
    Learned state ends in ``_``: ``model_``, ``config_``, ``history_``.

    Model options beyond a plain VAE: ``upper_latent_dims`` adds stochastic layers (Burda et al.'s
    two-layer model: ``latent_dim=100, hidden=(200, 200), upper_latent_dims=(50,), upper_hidden=(100, 100)``),
    ``latent_layers=L`` gives L layers of halving sizes instead, ``inference="top-down"`` infers them top-down
    (the Ladder VAE, Sønderby et al. 2016) instead of bottom-up,
    ``prior="vamp"`` a VampPrior with ``vamp_components`` pseudo-inputs, ``objective="iwae"`` the
    importance-weighted bound with ``objective_samples`` samples (default 5), ``free_bits`` a minimum KL
    per latent dimension (nats; None, the default: 0.1 for a top-down hierarchy trained with the elbo objective,
    against the collapse of its upper layers, else 0), ``likelihood="discretized-logistic"`` for 8-bit images.
    ``clip_grad_norm`` clips the total gradient norm; a NaN or infinite loss or gradient rolls training
    back to the last good state with half the learning rate, at most ``max_rollbacks`` times in a row.
    ``latent_dim`` None (the default) is 20 for images and half the number of columns (2 to 20) for vectors and
    tables (``config.default_latent_dim``).
    ``perturb_rate`` replaces that share of the training values with random ones at every step: the
    background model of the likelihood-ratio anomaly score (Ren et al. 2019).
    ``output_init`` is where the decoder's output bias starts: "marginal", the best fit to the training data
    that ignores z; "pytorch", PyTorch's default; "auto" (the default), marginal under the VampPrior only.
    ``conditional=True`` trains a conditional VAE (Sohn et al. 2015) on the labels: ``fit(X, y)`` (or a ``Dataset``
    with labels, or a DataFrame with ``y`` its label column's values), then ``sample(n, y=label)``, and every
    method that reads examples takes their labels as ``y`` (class names or indices; ``classes_`` lists them).
    """

    def __init__(self, latent_dim: int | None = None, hidden: tuple[int, ...] | None = None, arch: str = "auto",
                 likelihood: str = "auto", activation: str = "relu", gaussian_std: float = 1.0, epochs: int | None = None,
                 batch_size: int | None = None, lr: float | None = None, lr_schedule: str = "cosine",
                 adam_beta2: float = 0.99, weight_decay: float = 0.0, kl_weight: float = 1.0,
                 warmup_epochs: int = 0, patience: int | None = None, binarize: str = "none",
                 binarize_threshold: float | None = None, test_fraction: float = 0.1, seed: int = 0,
                 device: str = "auto", num_importance_samples: int = 100, progress: bool = False,
                 upper_latent_dims: tuple[int, ...] = (), upper_hidden: tuple[int, ...] = (100, 100),
                 prior: str = "standard-normal", vamp_components: int = 500, objective: str = "elbo",
                 objective_samples: int | None = None, free_bits: float | None = None,
                 clip_grad_norm: float | None = None, max_rollbacks: int = 3, precision: str = "fp32",
                 perturb_rate: float = 0.0, inference: str = "bottom-up", latent_layers: int | None = None,
                 standardize: bool | str = "auto", categorical: list[str] | None = None,
                 continuous: list[str] | None = None, drop_columns: list[str] | None = None,
                 conditional: bool = False, output_init: str = "auto", residual_blocks: int = 0) -> None:
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.arch = arch
        self.likelihood = likelihood
        self.activation = activation
        self.gaussian_std = gaussian_std
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.adam_beta2 = adam_beta2
        self.weight_decay = weight_decay
        self.kl_weight = kl_weight
        self.warmup_epochs = warmup_epochs
        self.patience = patience
        self.binarize = binarize
        self.binarize_threshold = binarize_threshold
        self.test_fraction = test_fraction
        self.seed = seed
        self.device = device
        self.num_importance_samples = num_importance_samples
        self.progress = progress
        self.upper_latent_dims = upper_latent_dims
        self.upper_hidden = upper_hidden
        self.prior = prior
        self.vamp_components = vamp_components
        self.objective = objective
        self.objective_samples = objective_samples
        self.free_bits = free_bits
        self.clip_grad_norm = clip_grad_norm
        self.max_rollbacks = max_rollbacks
        self.precision = precision
        self.perturb_rate = perturb_rate
        self.inference = inference
        self.latent_layers = latent_layers
        self.standardize = standardize
        self.categorical = categorical
        self.continuous = continuous
        self.drop_columns = drop_columns
        self.conditional = conditional
        self.output_init = output_init
        self.residual_blocks = residual_blocks

    # --- training ---------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, *, run_dir: str | Path | None = None, resume: bool = False) -> "VAE":
        """Train on ``X`` (array or ``Dataset``); with ``run_dir`` keep checkpoints, metrics and a loss curve there.

        ``y`` is used by a conditional model only (``conditional=True``): one label per example, or, for a
        ``Dataset``, taken from it."""
        digest = None if isinstance(X, Dataset) else data_digest(X)
        label_column = None
        if self.conditional and is_frame(X) and y is not None:
            label_column = LABEL_COLUMN
            if label_column in X.columns:
                raise DataError(f"the table has a column named {label_column!r}, which vaekit uses for y")
            if len(np.asarray(y, dtype=object).reshape(-1)) != len(X):
                raise DataError(f"y holds {len(np.asarray(y, dtype=object).reshape(-1))} labels for {len(X)} rows")
            X = X.assign(**{label_column: np.asarray(y, dtype=object).reshape(-1)})
        if isinstance(X, Dataset) and self.conditional and y is not None:
            raise DataError("a Dataset carries its own labels; fit(dataset) without y")
        dataset = X if isinstance(X, Dataset) else as_dataset(
            X, None if is_frame(X) or not self.conditional else y, test_fraction=self.test_fraction,
            split_seed=self.seed, binarize=self.binarize, binarize_threshold=self.binarize_threshold,
            standardize=self.standardize, label_column=label_column,
            categorical=self.categorical, continuous=self.continuous, drop_columns=self.drop_columns)
        config = make_run_config(
            dataset, latent_dim=self.latent_dim, hidden=self.hidden, arch=self.arch, likelihood=self.likelihood,
            activation=self.activation, gaussian_std=self.gaussian_std, epochs=self.epochs,
            batch_size=self.batch_size, lr=self.lr, lr_schedule=self.lr_schedule, adam_beta2=self.adam_beta2,
            weight_decay=self.weight_decay,
            kl_weight=self.kl_weight, warmup_epochs=self.warmup_epochs, patience=self.patience, seed=self.seed,
            device=self.device, upper_latent_dims=self.upper_latent_dims, upper_hidden=self.upper_hidden,
            prior=self.prior, vamp_components=self.vamp_components, objective=self.objective,
            objective_samples=self.objective_samples, free_bits=self.free_bits, clip_grad_norm=self.clip_grad_norm,
            max_rollbacks=self.max_rollbacks, precision=self.precision,
            perturb_rate=self.perturb_rate, inference=self.inference, latent_layers=self.latent_layers,
            conditional=self.conditional, output_init=self.output_init, residual_blocks=self.residual_blocks)
        out = None if run_dir is None else Path(run_dir)  # the directory the trainer writes (it expands no ~)
        entries_before = None if out is None else ckpt.entries_of(out)
        try:
            model, history = train(config, dataset, run_dir=out, resume=resume, progress=self.progress)
        except BaseException:  # failed (or interrupted) before its first checkpoint: leave no run-like directory
            if out is not None:
                ckpt.remove_unstarted_run(out, entries_before)
            raise
        self._set_fitted(model, config, history)
        self.training_rows_ = TrainingRows.of(dataset, digest)
        if out is not None:
            self._write_training_rows(out)
        return self

    def _write_training_rows(self, path: Path) -> None:
        """``TRAINING_ROWS_FILE`` in a run directory: which rows of the in-memory data trained the weights, so that
        a detector on the loaded run still knows them (an old record is removed when there is none)."""
        target = path / TRAINING_ROWS_FILE
        rows = getattr(self, "training_rows_", None)
        if rows is not None:
            atomic_write_json(target, rows.to_dict())
        elif target.exists():
            target.unlink()

    def _set_fitted(self, model: VAEModel, config: RunConfig, history: list[dict[str, Any]]) -> None:
        self.model_ = model.eval()
        self.config_ = config
        self.history_ = history
        self.input_shape_ = tuple(config.model.input_shape)
        self.n_features_in_ = math.prod(self.input_shape_)
        self.latent_dim_ = config.model.latent_dim
        self.schema_ = TableSchema.from_dict(config.data.table) if config.data.table is not None else None
        if config.model.class_names is not None:
            self.classes_ = np.asarray(config.model.class_names, dtype=object)
        elif hasattr(self, "classes_"):
            del self.classes_

    @property
    def is_table_(self) -> bool:
        """Whether the model was trained on a mixed table (DataFrame rows in, DataFrame rows out)."""
        self._check_fitted()
        return self.schema_ is not None

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("this VAE is not fitted yet; call fit(X) or load a trained run with vaekit.load")

    @property
    def data_config_(self) -> DataConfig:
        self._check_fitted()
        return self.config_.data

    # --- conversions ------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(self.model_.parameters()).device

    def _as_model_input(self, X: Any, units: str = "original") -> torch.Tensor:
        """``X`` as a float32 tensor of shape (n, *input_shape) in model units, validated."""
        self._check_fitted()
        if self.schema_ is not None:
            return self._table_input(X)
        if is_frame(X):
            X = X.to_numpy()
        array = _as_array(X, "X")
        if array.dtype.kind not in "buif":
            raise DataError(f"X has dtype {array.dtype}; it must hold numbers")
        shape = self.input_shape_
        if array.ndim == 1 and array.size == self.n_features_in_:
            array = array[None]
        if array.ndim == 2 and array.shape[1] == self.n_features_in_ and len(shape) > 1:
            array = array.reshape(len(array), *shape)
        elif array.ndim == len(shape) and len(shape) == 3 and shape[0] == 1 and array.shape[1:] == shape[1:]:
            array = array[:, None]
        elif array.ndim == 4 and len(shape) == 3 and array.shape[1:] == (shape[1], shape[2], shape[0]):
            array = array.transpose(0, 3, 1, 2)
        if array.shape[1:] != shape:
            raise DataError(f"X has examples of shape {array.shape[1:]} but the model expects {shape} "
                            f"({self.n_features_in_} values per example)")
        if len(array) == 0:
            raise DataError("X holds no examples; pass at least one")
        array = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
        check_finite(array, "X")
        if units == "original":
            array = to_model_units(array, self.config_.data)
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def _table_input(self, X: Any) -> torch.Tensor:
        """Rows of a table run: a DataFrame (encoded with the run's schema), or an array of the encoded values
        (what ``Dataset.split(units="model")`` gives, NaN for missing cells)."""
        schema = self.schema_
        if is_frame(X):
            array = schema.encode(X, where="X")
        else:
            array = _as_array(X, "X")
            if array.ndim == 1:
                array = array[None]
            if array.dtype.kind not in "buif" or array.ndim != 2 or array.shape[1] != schema.width:
                raise DataError(f"this model was trained on a table: pass its rows as a pandas DataFrame with the "
                                f"columns {', '.join(schema.names)} (got an array of shape {array.shape})")
            array = array.astype(np.float32)
            if np.isinf(array).any():
                raise DataError("X holds infinite values")
            cont = [at for c, at in zip(schema.columns, schema.offsets()) if c.kind in ("continuous", "integer")]
            if cont and np.nanmax(np.abs(array[:, cont]), initial=0.0) > 1e3:
                raise DataError("these values look like the table's own units, not its encoded (standardized) values; "
                                "pass the rows as a pandas DataFrame")
        if len(array) == 0:
            raise DataError("X holds no examples; pass at least one")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def _labels(self, y: Any, n: int) -> torch.Tensor | None:
        """A conditional model's labels for n examples (one label, or one per example; names or indices) as class
        indices; None for an unconditional model, which takes none."""
        if not self.model_.conditional:
            if y is not None:
                raise DataError("this model is not conditional, so it takes no labels (y); train with "
                                "conditional=True (vaekit train --conditional) to condition on them")
            return None
        if y is None:
            raise DataError(f"this model is conditional: give y, the label of each example (one of "
                            f"{', '.join(map(str, self.classes_[:10]))}{' ...' if len(self.classes_) > 10 else ''})")
        return torch.from_numpy(resolve_labels(y, list(self.classes_), n))

    def _labelled_batches(self, x: torch.Tensor, labels: torch.Tensor | None):
        """(examples, their labels or None) batch by batch, on the model's device."""
        size = self.config_.train.eval_batch_size
        for start in range(0, len(x), size):
            yield (x[start:start + size].to(self._device()),
                   None if labels is None else labels[start:start + size].to(self._device()))

    # --- using the model --------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, X: Any, y: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of q(z|x) (q(z|x, y) for a conditional model) for every example, each (n, latent_dim)."""
        x = self._as_model_input(X)
        labels = self._labels(y, len(x))
        means, variances = [], []
        for batch, batch_labels in self._labelled_batches(x, labels):
            mu, logvar = self.model_.posterior_params(batch, batch_labels)
            means.append(mu.float().cpu())
            variances.append(logvar.float().exp().cpu())
        return torch.cat(means).numpy(), torch.cat(variances).numpy()

    def transform(self, X: Any, y: Any = None) -> np.ndarray:
        """Latent means (the posterior mean of q(z|x)), shape (n, latent_dim); ``y``: a conditional model's labels."""
        return self.encode(X, y)[0]

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray:
        return self.fit(X, y, **fit_params).transform(X, y if self.conditional else None)

    def sample_posterior(self, X: Any, num_samples: int = 1, seed: int | None = None, y: Any = None) -> np.ndarray:
        """Draws z ~ q(z|x), shape (num_samples, n, latent_dim)."""
        mean, var = self.encode(X, y)
        if not _is_count(num_samples) or num_samples < 1:
            raise DataError(f"num_samples must be a whole number of at least 1, got {num_samples!r}")
        generator = _seeded(torch.device("cpu"), self.seed if seed is None else seed)
        eps = torch.randn((num_samples, *mean.shape), generator=generator).numpy()
        return mean[None] + np.sqrt(var)[None] * eps

    @torch.no_grad()
    def decode(self, Z: Any, *, y: Any = None, sample: bool = False, seed: int | None = None) -> np.ndarray:
        """The mean of p(x|z) (or a draw from it with ``sample=True``) in the data's original units; a conditional
        model decodes p(x|z, y) under labels ``y`` (one label for all codes, or one per code)."""
        x = self._decode_values(Z, y=y, sample=sample, seed=seed)
        if self.schema_ is not None:
            return self.schema_.decode(x)  # a DataFrame in the table's own form
        return to_original_units(x, self.config_.data)

    @torch.no_grad()
    def _decode_values(self, Z: Any, *, y: Any = None, sample: bool = False, seed: int | None = None) -> np.ndarray:
        """``decode`` in model units: the mean of p(x|z) (or a draw) as the model gives it, float32 of shape
        (n, *input_shape); for a table its encoded values (standardized numbers, P(second value), category
        probabilities), which pictures and reconstruction errors use."""
        self._check_fitted()
        array = _as_array(Z, "the latent vectors")
        if array.dtype.kind not in "buif":
            raise DataError(f"the latent vectors have dtype {array.dtype}; they must be numbers")
        z = torch.as_tensor(array.astype(np.float32))
        if z.ndim == 1:
            z = z[None]
        if z.ndim != 2 or z.shape[1] != self.latent_dim_:
            raise DataError(f"latent vectors must have shape (n, {self.latent_dim_}), got {tuple(z.shape)}")
        if not torch.isfinite(z).all():
            raise DataError("the latent vectors hold NaN or infinite values")
        labels = self._labels(y, len(z))
        generator = _seeded(self._device(), self.seed if seed is None else seed)
        outputs = []
        for batch, batch_labels in self._labelled_batches(z, labels):
            dist = self.model_.decode(batch, batch_labels)
            if sample:
                outputs.append(_sample(dist, generator).float().cpu())
            else:
                outputs.append(dist.mean.float().cpu())
        return torch.cat(outputs).numpy() if outputs else np.zeros((0, *self.input_shape_), dtype=np.float32)

    def inverse_transform(self, Z: Any) -> np.ndarray:
        return self.decode(Z)

    def sample(self, n: int = 1, *, y: Any = None, sampler: Any = "prior", seed: int | None = None,
               sample_output: bool | None = None) -> np.ndarray:
        """Generate ``n`` examples by decoding latent codes; the encoder is not used.

        ``sampler``: where the codes come from: "prior" (z ~ p(z), N(0, I) unless the model has another prior),
        the name of a sampler fitted on this estimator ("gmm": ``vaekit.generation.fit_sampler(vae, X)`` or a
        run's, ``vaekit.generation.load_sampler(RUN, vae)``), or any object with a
        ``sample_latent(vae, n, generator)`` method (see ``vaekit.generation.samplers``; a conditional model's gets
        ``y=`` too, the labels as class indices). A conditional model's fitted "gmm" holds one mixture per label
        and draws each code from its label's.
        ``sample_output``: draw x ~ p(x|z) instead of taking its mean; the default is False for images and arrays
        (the mean is the usual picture) and True for tables, whose synthetic rows must follow every column's
        distribution (a DataFrame in the table's own form, with missing cells at the learned rates).
        ``y``: a conditional model's label(s) to generate, one for all n examples or one per example (class names
        or indices, see ``classes_``)."""
        self._check_fitted()
        if sample_output is None:
            sample_output = self.schema_ is not None
        if not _is_count(n) or n < 1:
            raise DataError(f"the number of samples must be a whole number of at least 1, got {n!r}")
        labels = self._labels(y, n)  # checked before any drawing
        generator = _seeded(self._device(), self.seed if seed is None else seed)
        with torch.no_grad():
            z = self._sample_latent(sampler, n, generator, labels).float().cpu()
        return self.decode(z.numpy(), y=None if labels is None else labels.numpy(), sample=sample_output, seed=seed)

    def _sample_latent(self, sampler: Any, n: int, generator: torch.Generator,
                       labels: torch.Tensor | None = None) -> torch.Tensor:
        """n codes z_1 (n, latent_dim) from ``sampler``: "prior", a fitted sampler's name, or a sampler object;
        a conditional model's sampler also gets the labels the codes are drawn for (``y=``, class indices)."""
        if isinstance(sampler, str):
            if sampler == "prior":
                return self.model_.sample_latent(n, generator=generator)
            fitted = getattr(self, "samplers_", {})
            if sampler not in fitted:
                have = ", ".join(["prior", *fitted])
                raise ConfigError(f"this VAE has no {sampler!r} sampler (it has: {have}); fit one with "
                                  f"vaekit.generation.fit_sampler(vae, X, kind={sampler!r}), or load a run's with "
                                  f"vaekit.generation.load_sampler(RUN, vae) after `vaekit fit-sampler RUN`")
            sampler = fitted[sampler]
        if not callable(getattr(sampler, "sample_latent", None)):
            raise ConfigError(f"sampler must be 'prior', a fitted sampler's name or an object with a "
                              f"sample_latent(vae, n, generator) method, got {sampler!r}")
        z = (sampler.sample_latent(self, n, generator) if labels is None
             else sampler.sample_latent(self, n, generator, y=labels))
        if not isinstance(z, torch.Tensor) or tuple(z.shape) != (n, self.latent_dim_):
            raise DataError(f"the sampler gave codes of shape {tuple(getattr(z, 'shape', ()))}; the decoder needs "
                            f"({n}, {self.latent_dim_})")
        return z

    def reconstruct(self, X: Any, y: Any = None) -> np.ndarray:
        """Decode each example's latent mean: the mean of p(x | z = E[z|x]), in original units (a conditional
        model's under the examples' own labels ``y``)."""
        return self.decode(self.transform(X, y), y=y)

    def transfer(self, X: Any, y: Any, to: Any) -> np.ndarray:
        """A conditional model's latent transfer: encode each example under its label ``y``, decode the code under
        label(s) ``to`` (the style kept, the class changed); in original units."""
        z = self.transform(X, y)
        return self.decode(z, y=to)

    # --- scores -----------------------------------------------------------------------------------
    def elbo(self, X: Any, seed: int = 0, y: Any = None) -> dict[str, np.ndarray]:
        """Per-example negative ELBO, reconstruction and KL in nats (model units); -log p(x|y) bounds for a
        conditional model given labels ``y``."""
        x = self._as_model_input(X)
        result = elbo_of(self.model_, x, batch_size=self.config_.train.eval_batch_size, seed=seed,
                         labels=self._labels(y, len(x)))
        return {"neg_elbo": result.neg_elbo.cpu().numpy(), "reconstruction": result.reconstruction.cpu().numpy(),
                "kl": result.kl.cpu().numpy()}

    def _log_scale_of_units(self) -> float:
        """log |d(model units)/d(original units)|: what a density in model units gains in original units."""
        if self.config_.data.standardize_std is None:
            return 0.0
        return -float(np.log(np.asarray(self.config_.data.standardize_std)).sum())

    def score_samples(self, X: Any, num_importance_samples: int | None = None, seed: int = 0, *,
                      y: Any = None) -> np.ndarray:
        """Importance-weighted estimate of log p(x) per example, in nats, for data in its original units (log p(x|y)
        for a conditional model given labels ``y``)."""
        x = self._as_model_input(X)
        k = num_importance_samples or self.num_importance_samples
        log_px = log_likelihood(self.model_, x, num_importance_samples=k, seed=seed,
                                labels=self._labels(y, len(x))).numpy().astype(np.float64)
        return log_px + self._log_scale_of_units()  # change of variables back to the original units

    def evaluate(self, X: Any, num_importance_samples: int = 5000, seed: int = 0, *, y: Any = None,
                 memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB, progress: bool = False) -> Evaluation:
        """-ELBO (reconstruction + KL), importance-weighted -log p(x), bits/dim, active units and KL per latent
        dimension on ``X`` (original units), with standard errors over the examples; see ``vaekit.evaluation``.
        A conditional model is evaluated given the examples' labels ``y``: of log p(x|y)."""
        x = self._as_model_input(X)
        result = evaluate_model(self.model_, x, num_importance_samples, seed, labels=self._labels(y, len(x)),
                                memory_budget_mb=memory_budget_mb, progress=progress)
        shift = self._log_scale_of_units()
        if shift:  # -log densities of standardized values -> -log densities in the data's own units
            for name in ("neg_elbo", "reconstruction", "nll"):
                setattr(result, name, getattr(result, name) - shift)
                result.per_example[name] = result.per_example[name] - shift
        return result

    def column_nll(self, X: Any, num_importance_samples: int = 100, seed: int = 0) -> dict[str, float]:
        """A table run's mean -log p(x_c) per column (nats; importance-weighted marginals, see
        ``evaluation.column_log_likelihood``); continuous columns in their own units."""
        self._check_fitted()
        if self.schema_ is None:
            raise DataError("per-column log-likelihoods apply to runs trained on a table")
        if self.model_.conditional:
            raise ConfigError("per-column log-likelihoods are not available for conditional table models yet")
        from .evaluation.likelihood import column_log_likelihood

        values = column_log_likelihood(self.model_, self._as_model_input(X), num_importance_samples, seed)
        return {name: float(-values[:, i].double().mean()) for i, name in enumerate(self.schema_.names)}

    def impute(self, X: Any, *, draws: int | None = None, num_importance_samples: int = 100, seed: int = 0):
        """Fill a table's missing cells from the model given each row's observed cells; observed cells are kept.

        ``draws=None``: one table with the best single guess, the importance-weighted posterior mean of each
        missing value (most probable label for categories), as in MIWAE (Mattei and Frellsen 2019). ``draws=K``:
        K tables (multiple imputation), each missing cell drawn from p(x_miss | x_obs) by sampling-importance-
        resampling of z ~ q(z|x_obs). Returns a DataFrame (or a list of K)."""
        self._check_fitted()
        if self.schema_ is None:
            raise DataError("imputation applies to runs trained on a table")
        if self.model_.conditional:
            raise ConfigError("imputation is not available for conditional table models yet; train one without "
                              "conditional=True to impute")
        if draws is not None and (not _is_count(draws) or draws < 1):
            raise DataError(f"draws must be a whole number of at least 1, got {draws!r}")
        x = self._as_model_input(X)
        generator = _seeded(self._device(), seed)
        likelihood = self.model_.likelihood
        fills = [[] for _ in range(draws or 1)]
        with torch.no_grad():
            for batch, _ in self._labelled_batches(x, None):
                z, log_pz, log_qz = self.model_.latent_log_densities(batch, num_importance_samples, generator=generator)
                params = self.model_.decoder_params(z)  # (K, batch, 3, width)
                log_w = -likelihood.column_nll(params, batch).sum(-1) + log_pz - log_qz  # observed cells only
                weights = torch.softmax(log_w, 0)  # (K, batch)
                if draws is None:
                    means = likelihood.mean_values(params)  # probabilities for categories: their weighted mean
                    fills[0].append((weights.unsqueeze(-1) * means).sum(0))
                    continue
                for d in range(draws):
                    k = torch.multinomial(weights.T, 1, generator=generator).squeeze(1)  # one z per row
                    chosen = params[k, torch.arange(len(batch))]
                    fills[d].append(likelihood.draw(chosen, generator, missing=False))
        originals = x.numpy()
        observed = ~np.isnan(originals)
        tables = []
        for parts in fills:
            filled = torch.cat(parts).cpu().numpy()
            tables.append(self.schema_.decode(np.where(observed, originals, filled)))
        if is_frame(X):
            for table in tables:
                table.index = X.index
        return tables[0] if draws is None else tables

    def score(self, X: Any, y: Any = None) -> float:
        """Mean estimated log-likelihood (nats per example); higher is better."""
        return float(np.mean(self.score_samples(X, y=y if getattr(self, "model_", None) is not None
                                                and self.model_.conditional else None)))

    # --- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write a run directory (config.json + model.safetensors) that ``vaekit.load`` reads back."""
        self._check_fitted()
        ckpt.save_model(path, self.model_, self.config_)
        if self.history_:
            ckpt.write_metrics(path, self.history_)
        self._write_training_rows(Path(path))

    @classmethod
    def from_run(cls, path: str | Path, device: str = "cpu") -> "VAE":
        """A fitted estimator from a run directory (from ``vaekit train`` or ``VAE.save``)."""
        model, config = ckpt.load_model(path, device=resolve_device(device))
        t, m = config.train, config.model
        estimator = cls(latent_dim=m.latent_dim, hidden=m.hidden, arch=m.arch, likelihood=m.likelihood,
                        activation=m.activation, gaussian_std=m.gaussian_std, epochs=t.epochs,
                        batch_size=t.batch_size, lr=t.lr, lr_schedule=t.lr_schedule, adam_beta2=t.adam_beta2,
                        weight_decay=t.weight_decay,
                        kl_weight=t.kl_weight, warmup_epochs=t.warmup_epochs, patience=t.patience,
                        binarize=config.data.binarize,
                        binarize_threshold=config.data.binarize_threshold,
                        test_fraction=config.data.test_fraction, seed=t.seed, device=device,
                        upper_latent_dims=m.upper_latent_dims, upper_hidden=m.upper_hidden, prior=m.prior,
                        vamp_components=m.vamp_components, objective=t.objective,
                        objective_samples=t.objective_samples, free_bits=t.free_bits,
                        clip_grad_norm=t.clip_grad_norm, max_rollbacks=t.max_rollbacks, precision=t.precision,
                        perturb_rate=t.perturb_rate, inference=m.inference, conditional=m.num_classes is not None,
                        output_init=t.output_init, residual_blocks=m.residual_blocks)
        estimator._set_fitted(model, config, ckpt.read_metrics(path))
        record = Path(path) / TRAINING_ROWS_FILE
        estimator.training_rows_ = TrainingRows.from_dict(read_json(record), str(record)) if record.is_file() else None
        return estimator


def _as_array(X: Any, name: str) -> np.ndarray:
    """``X`` (array, tensor, nested lists) as a NumPy array; ragged or non-numeric input is a DataError."""
    try:
        return X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    except (ValueError, TypeError) as err:
        raise DataError(f"{name} cannot be read as an array of numbers: {err}") from None


def _is_count(n: Any) -> bool:
    return isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_))


def _seeded(device: torch.device, seed: Any) -> torch.Generator:
    """A generator seeded with ``seed``, which must be a whole number in [0, 2**64)."""
    if not _is_count(seed) or not 0 <= int(seed) < 2**64:
        raise DataError(f"a seed must be a whole number in [0, 2**64), got {seed!r}")
    return torch.Generator(device=device).manual_seed(int(seed))


def _sample(dist, generator: torch.Generator) -> torch.Tensor:
    """A draw from p(x|z) using an explicit generator (``Distribution.sample`` takes none)."""
    base = getattr(dist, "base_dist", dist)
    if isinstance(base, torch.distributions.Bernoulli):
        return torch.bernoulli(base.probs, generator=generator)
    if isinstance(base, torch.distributions.Normal):
        return base.loc + base.scale * torch.randn(base.loc.shape, generator=generator, device=base.loc.device)
    if hasattr(base, "sample_with"):
        return base.sample_with(generator)
    return dist.sample()


def load(path: str | Path, device: str = "cpu") -> VAE:
    """Load a trained run directory as a fitted ``VAE``."""
    return VAE.from_run(path, device=device)
