"""Data: sources -> a ``Dataset`` with train/test tensors, shape, kind and optional labels.

A data specification is a built-in name (``digits``, ``fashion-mnist``) or a path (``.npy``, ``.npz``,
``.csv`` or a folder of images), optionally followed by ``:train``, ``:test`` or ``:all``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..config import DataConfig
from ..errors import DataError
from . import streaming
from .dataset import SPLITS, Dataset, _split_indices, parse_spec  # noqa: F401  (SPLITS: re-exported)
from .sources import BUILTIN_NAMES, RawData, check_finite, load_source
from .transforms import standardize_stats, to_model_units, to_original_units

__all__ = ["Dataset", "load_dataset", "parse_spec", "BUILTIN_NAMES", "to_original_units", "to_model_units"]

def load_dataset(
    spec: str,
    *,
    data_dir: str | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    label_column: str | None = None,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    binarize: str = "none",
    binarize_threshold: float | None = None,
    standardize: bool | None = None,
    like: DataConfig | None = None,
    in_memory: str = "auto",
    memory_budget_mb: float | None = None,
    loader_workers: int = streaming.DEFAULT_LOADER_WORKERS,
    categorical: list[str] | None = None,
    continuous: list[str] | None = None,
    drop_columns: list[str] | None = None,
    as_table: bool = True,
    skip_bad_files: bool = False,
) -> Dataset:
    """Load a data set by specification (a trailing ``:split`` is ignored here; see ``parse_spec``).

    With ``like`` (a trained run's ``DataConfig``) the data is prepared exactly as that run's was:
    same image size and channels, same split, same binarization, same standardization statistics.

    ``in_memory``: ``auto`` holds the data in memory when it fits ``memory_budget_mb`` (default: half the
    available memory) and otherwise streams the training split of a ``.npy`` file, a folder of ``.npy``
    shards or a folder of images from disk (``Dataset.train_stream``, read by ``loader_workers`` DataLoader
    worker processes); ``yes`` always loads it whole, ``no`` always streams.

    A table (``.csv``, ``.tsv``, ``.txt``, ``.parquet``) is read as a mixed table (``vaekit.data.table``): column
    kinds inferred from the values, or forced with ``categorical``/``continuous``, columns left out with
    ``drop_columns``; missing cells are kept (NaN) for the model to mask. ``as_table=False`` reads a table of
    numbers as a standardized numeric array instead, for the array likelihoods (``--likelihood gaussian-learned``).

    ``skip_bad_files``: images (and ``.npy`` shards) that cannot be read are left out instead of stopping with an
    error: those found while loading are listed in ``Dataset.skipped_files`` as (path, reason); a streamed training
    split finds the rest as it reads them, replaces each by the next readable example and lists them in
    ``Dataset.train_stream.bad_files``. Every file keeps the split it has when all can be read.
    """
    source, _ = parse_spec(spec)
    if like is not None:
        image_size, channels, label_column = like.image_size, like.channels, label_column or like.label_column
        test_fraction, split_seed = like.test_fraction, like.split_seed
        binarize, binarize_threshold = like.binarize, like.binarize_threshold
    config = DataConfig(source=source, binarize=binarize, binarize_threshold=binarize_threshold,
                        test_fraction=test_fraction, split_seed=split_seed, image_size=image_size,
                        channels=channels, label_column=label_column)
    if in_memory not in streaming.IN_MEMORY_CHOICES:
        raise DataError(f"in_memory must be one of {', '.join(streaming.IN_MEMORY_CHOICES)}, got {in_memory!r}")
    if memory_budget_mb is not None and not memory_budget_mb > 0:
        raise DataError(f"the memory budget must be a positive number of MiB, got {memory_budget_mb}")
    if loader_workers < 0:
        raise DataError(f"loader_workers must be zero or more, got {loader_workers}")
    if as_table and _is_table_source(source, like):
        from .table import read_table
        from .table_data import table_dataset

        frame = read_table(Path(source).expanduser())
        return table_dataset(frame, source, config, like=like, label_column=label_column,
                             categorical=categorical, continuous=continuous, drop=drop_columns)
    sources = None
    if in_memory != "yes":
        budget = memory_budget_mb if memory_budget_mb is not None else streaming.default_memory_budget_mb()
        sources = streaming.open_streamable(source, image_size, channels, skip_bad_files=skip_bad_files)
        if sources is None and in_memory == "no":
            raise DataError(f"{source} cannot be streamed from disk; streaming reads a .npy file, a folder of .npy "
                            "shards or a folder of images (save large arrays with numpy.save)")
        if sources is not None:
            needed_mb = streaming.LOADING_OVERHEAD * sum(streaming.float32_bytes(s) for s in sources if s) / 2**20
            if in_memory == "no" or needed_mb > budget:
                return streaming.load_streamed(source, sources, config, like=like, standardize=standardize,
                                               memory_budget_mb=budget, num_workers=loader_workers,
                                               skip_bad_files=skip_bad_files)
    # None unless a folder of .npy shards (those opened above are read, not opened again)
    raw = streaming.load_shard_folder(source, skip_bad_files=skip_bad_files, sources=sources)
    if raw is None:
        raw = load_source(source, data_dir=data_dir, image_size=image_size, channels=channels,
                          label_column=label_column, skip_bad_files=skip_bad_files)
    check_finite(raw.x, source)
    if raw.x_test is not None:
        check_finite(raw.x_test, f"{source} (test part)")
    x_train, y_train, x_test, y_test, order = _split(raw, test_fraction, split_seed)

    unit = raw.unit_range or bool(x_train.min() >= 0 and x_train.max() <= 1 and x_test.min() >= 0 and x_test.max() <= 1)
    if like is not None:
        if like.standardize_mean is not None:
            x_train, x_test = to_model_units(x_train, like), to_model_units(x_test, like)
            config.standardize_mean, config.standardize_std = like.standardize_mean, like.standardize_std
        config.kind = like.kind
    else:
        if standardize is None:
            standardize = raw.standardize
        if standardize:
            mean, std = standardize_stats(x_train.reshape(len(x_train), -1).astype(np.float64))
            config.standardize_mean, config.standardize_std = mean.tolist(), std.tolist()
            x_train, x_test = to_model_units(x_train, config), to_model_units(x_test, config)
            unit = False
        config.kind = "unit" if unit else "real"
    if config.binarize != "none" and config.kind != "unit":
        raise DataError(f"binarization needs data in [0, 1], but {source} holds real values; use --binarize none")
    config.image_size = raw.image_size or config.image_size
    config.channels = raw.channels or config.channels
    config.columns = raw.columns
    return Dataset(name=source, x_train=torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)),
                   x_test=torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32)),
                   y_train=y_train, y_test=y_test, config=config, class_names=raw.class_names, order=order,
                   files=raw.extra.get("files"), skipped_files=list(raw.extra.get("skipped", [])))


def _is_table_source(source: str, like: DataConfig | None) -> bool:
    """Whether ``source`` is read as a mixed table: a table file, unless it is read for a run trained on other data
    (numeric arrays, or a numeric CSV read by a vaekit from before mixed tables): then as numbers."""
    from .table import TABLE_SUFFIXES

    if Path(source).suffix.lower() not in TABLE_SUFFIXES or not Path(source).expanduser().is_file():
        return False
    return like is None or like.table is not None


def _split(raw: RawData, test_fraction: float, seed: int):
    if raw.x_test is not None:
        return raw.x, raw.y, raw.x_test, raw.y_test, None
    kept = raw.extra.get("kept")
    if kept is None:
        train_idx, test_idx, order = _split_indices(len(raw.x), test_fraction, seed)
    else:
        train_idx, test_idx, order = split_without_skipped(kept, raw.extra["total"], test_fraction, seed, raw.extra)
    y = raw.y
    return (raw.x[train_idx], None if y is None else y[train_idx],
            raw.x[test_idx], None if y is None else y[test_idx], order)


def split_without_skipped(kept: np.ndarray, total: int, test_fraction: float, seed: int, extra: dict):
    """The split of all ``total`` files as if every one could be read, less the skipped ones: a file keeps its split
    whichever others are damaged (and the split it has when the folder is streamed). Returns rows of the kept
    examples (train, test) and the file number of each (train then test)."""
    all_train, all_test, _ = _split_indices(total, test_fraction, seed)
    row_of = np.full(total, -1, dtype=np.int64)
    row_of[kept] = np.arange(len(kept))
    train_idx, test_idx = row_of[all_train], row_of[all_test]
    train_idx, test_idx = train_idx[train_idx >= 0], test_idx[test_idx >= 0]
    for name, rows in (("training", train_idx), ("test", test_idx)):
        if not len(rows):
            raise DataError(f"every file of the {name} split is unreadable ({len(extra['skipped'])} of {total} files "
                            "skipped); add readable files or change --test-fraction")
    return train_idx, test_idx, kept[np.concatenate([train_idx, test_idx])]


def as_dataset(x, y=None, *, test_fraction: float = 0.1, split_seed: int = 0, binarize: str = "none",
               binarize_threshold: float | None = None, name: str = "array", standardize: bool | str = "auto",
               label_column: str | None = None, categorical: list[str] | None = None,
               continuous: list[str] | None = None, drop_columns: list[str] | None = None) -> Dataset:
    """Wrap in-memory data (the Python API's ``fit(X)``) as a ``Dataset``.

    A pandas DataFrame is a mixed table (``vaekit.data.table``; ``label_column`` and the column overrides apply).
    An array is prepared as ``vaekit train`` prepares the same values in a ``.npy`` file: real-valued feature
    vectors (values outside [0, 1]) are standardized per column with the training split's mean and standard
    deviation (``standardize="auto"``; ``True``/``False`` to force it), and images never are.
    """
    from .sources import _array_to_raw
    from .table import is_frame
    from .table_data import table_dataset

    config = DataConfig(source=name, binarize=binarize, binarize_threshold=binarize_threshold,
                        test_fraction=test_fraction, split_seed=split_seed)
    if is_frame(x):
        if y is not None:
            raise DataError("with a DataFrame, name the label column (label_column=...) instead of passing y")
        if binarize != "none":
            raise DataError("binarization applies to images, not to tables")
        return table_dataset(x, name, config, label_column=label_column, categorical=categorical,
                             continuous=continuous, drop=drop_columns)
    if standardize not in ("auto", True, False):
        raise DataError(f"standardize must be 'auto', True or False, got {standardize!r}")
    array = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    raw = _array_to_raw(array, None if y is None else np.asarray(y), name)
    check_finite(raw.x, name)
    x_train, y_train, x_test, y_test, order = _split(raw, test_fraction, split_seed)
    if standardize is True and raw.x.ndim != 2:
        raise DataError("standardize=True applies to feature vectors (n, features), not to images")
    if raw.standardize if standardize == "auto" else standardize:
        mean, std = standardize_stats(x_train.astype(np.float64))
        config.standardize_mean, config.standardize_std = mean.tolist(), std.tolist()
        x_train, x_test = to_model_units(x_train, config), to_model_units(x_test, config)
        unit = False
    else:
        unit = bool(raw.x.min() >= 0 and raw.x.max() <= 1)
    config.kind = "unit" if unit else "real"
    if binarize != "none" and not unit:
        raise DataError("binarization needs data in [0, 1]; these values are outside it")
    return Dataset(name=name, x_train=torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)),
                   x_test=torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32)), y_train=y_train,
                   y_test=y_test, config=config, order=order)


def data_digest(x) -> str | None:
    """A SHA-256 digest of in-memory data (an array, a tensor or a DataFrame): equal for equal contents, so that
    ``AnomalyDetector.fit`` can tell whether it was handed the very rows a ``VAE`` was fitted on. ``None`` for
    anything else (a ``Dataset``, a path)."""
    import hashlib

    from .table import is_frame

    digest = hashlib.sha256()
    if is_frame(x):
        import pandas as pd

        digest.update(repr([(str(c), str(t)) for c, t in x.dtypes.items()]).encode())
        digest.update(np.ascontiguousarray(pd.util.hash_pandas_object(x, index=False).to_numpy()).tobytes())
        return digest.hexdigest()
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, (str, Path)) or not isinstance(x, (np.ndarray, list, tuple)):
        return None
    try:
        array = np.asarray(x)
    except (ValueError, TypeError):
        return None
    if array.dtype == object:
        return None
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
