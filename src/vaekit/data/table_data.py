"""A ``Dataset`` from a mixed table (``vaekit.data.table`` encodes the rows; ``vaekit.data.dataset`` holds them)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..errors import DataError
from .dataset import Dataset, _split_indices
from .table import TableSchema, _mean, _pandas, _scale, infer_schema, named_columns


def table_dataset(frame, name: str, config, *, like=None, label_column: str | None = None,
                  categorical: list[str] | None = None, continuous: list[str] | None = None,
                  drop: list[str] | None = None):
    """A ``Dataset`` of a mixed table: its rows encoded by the schema of ``like`` (a trained run's ``DataConfig``),
    or by one inferred from the rows, with scales and missing rates taken from the training split."""
    if len(frame) == 0:
        raise DataError(f"{name} holds no rows")
    frame = named_columns(frame, name)  # columns by their names as text; several of one name are refused
    saved = like is not None and like.table is not None  # read for a trained run: its schema, scales and all
    if saved:
        schema = TableSchema.from_dict(like.table)
        label_column = schema.label_column if label_column is None else label_column
    else:
        schema = infer_schema(frame, label_column=label_column, categorical=categorical, continuous=continuous,
                              drop=drop, where=name)
    train_idx, test_idx, order = _split_indices(len(frame), config.test_fraction, config.split_seed)
    if not saved:
        _fit_scales(schema, frame.iloc[train_idx])
    x = schema.encode(frame, where=name)
    y, class_names = _labels(frame, schema.label_column if schema.label_column in frame.columns else None)
    config = dataclasses.replace(config, kind="table", table=schema.to_dict(), columns=schema.names,
                                 label_column=schema.label_column, standardize_mean=None, standardize_std=None)
    return Dataset(name=name, x_train=torch.from_numpy(np.ascontiguousarray(x[train_idx])),
                   x_test=torch.from_numpy(np.ascontiguousarray(x[test_idx])),
                   y_train=None if y is None else y[train_idx], y_test=None if y is None else y[test_idx],
                   config=config, class_names=class_names, order=order)


def _fit_scales(schema: TableSchema, rows) -> None:
    """Means, standard deviations and missing rates from the training rows (kinds and labels come from all rows)."""
    pd = _pandas()
    for c in schema.columns:
        values = rows[c.name]
        c.missing_rate = float(pd.isna(values).mean()) if len(rows) else 0.0
        if c.kind in ("continuous", "integer"):
            numbers = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=np.float64)
            if len(numbers):
                c.mean, c.std = _mean(numbers), _scale(numbers)


def _labels(frame, label_column: str | None):
    """The label column as integer labels (whole numbers) or class indices of sorted text labels."""
    if label_column is None:
        return None, None
    pd = _pandas()
    values = frame[label_column]
    if pd.isna(values).any():
        raise DataError(f"the label column {label_column!r} has empty cells; every row needs a label")
    numbers = pd.to_numeric(values, errors="coerce")
    if not pd.isna(numbers).any() and bool((numbers == numbers.round()).all()):
        return numbers.to_numpy(dtype=np.int64), None
    names = sorted({str(v).strip() for v in values})
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[str(v).strip()] for v in values], dtype=np.int64), names
