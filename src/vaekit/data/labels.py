"""Class labels of a conditional model: the classes a run was trained on, and labels turned into their indices.

A run stores its classes by name (``ModelConfig.class_names``, index order), so that labels are matched by name
whatever form they come in: the indices of a built-in data set or an image folder (named by its
``class_names``), a table's label column (text or numbers), or what a user types (``--label Sneaker``, or an
index). A label that is missing, or not one of the run's classes, is an error that names the known ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DataError


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and np.isnan(value))


def label_names(labels: Any, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Every label as its class name (text): an integer label ``i`` is ``class_names[i]`` when names are given."""
    values = np.asarray(labels, dtype=object).reshape(-1)
    names = []
    for i, value in enumerate(values):
        if _is_missing(value):
            raise DataError(f"example {i} has no label; a conditional model needs the label of every example")
        if isinstance(value, np.generic):
            value = value.item()
        if class_names is not None and isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < len(class_names):
                raise DataError(f"example {i} has label {value}, but the data set has {len(class_names)} classes")
            value = class_names[value]
        elif isinstance(value, float) and value.is_integer():
            value = int(value)  # a numeric label column read as floats: 3.0 is the class '3'
        names.append(str(value))
    return np.asarray(names, dtype=object)


def training_classes(labels: Any, class_names: Sequence[str] | None = None) -> list[str]:
    """The classes of a conditional model trained on ``labels``: the data set's own class names when it has them
    (every class, in its order), else the distinct labels in sorted order (numbers as numbers)."""
    if class_names is not None:
        label_names(labels, class_names)  # every label must be one of them
        return [str(n) for n in class_names]
    names = sorted(set(label_names(labels)), key=lambda n: (0, int(n), n) if _is_int(n) else (1, 0, n))
    if len(names) < 2:
        raise DataError(f"a conditional model needs at least two classes; the labels hold {len(names)} "
                        f"({', '.join(names) or 'none'})")
    return names


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def label_indices(labels: Any, classes: Sequence[str], class_names: Sequence[str] | None = None) -> np.ndarray:
    """``labels`` (named by ``class_names`` when they are integers) as indices into the run's ``classes``, int64."""
    names = label_names(labels, class_names)
    position = {name: i for i, name in enumerate(classes)}
    unknown = sorted({n for n in names if n not in position})
    if unknown:
        raise DataError(f"label(s) {', '.join(map(repr, unknown[:5]))}{' ...' if len(unknown) > 5 else ''} are not "
                        f"classes of this model, which knows {_listing(classes)}")
    return np.fromiter((position[n] for n in names), dtype=np.int64, count=len(names))


def resolve_label(value: Any, classes: Sequence[str]) -> int:
    """A label a user names, as the index of one of ``classes``: by name first, then as an index."""
    text = str(value.item() if isinstance(value, np.generic) else value).strip()
    if text in classes:
        return list(classes).index(text)
    if _is_int(text) and 0 <= int(text) < len(classes):
        return int(text)
    raise DataError(f"unknown label {text!r}; this model knows {_listing(classes)} (or their indices 0 to "
                    f"{len(classes) - 1})")


def resolve_labels(values: Any, classes: Sequence[str], n: int | None = None) -> np.ndarray:
    """One label or one per example, as indices: a single name or index is repeated ``n`` times."""
    if isinstance(values, (str, int, np.integer)):
        if n is None:
            raise DataError("say how many examples the label is for")
        return np.full(n, resolve_label(values, classes), dtype=np.int64)
    array = np.asarray(values, dtype=object).reshape(-1)
    if n is not None and len(array) != n:
        raise DataError(f"got {len(array)} labels for {n} examples; give one label, or one per example")
    return np.fromiter((resolve_label(v, classes) for v in array), dtype=np.int64, count=len(array))


def _listing(classes: Sequence[str]) -> str:
    shown = ", ".join(map(str, classes[:12]))
    return f"{len(classes)} classes: {shown}{' ...' if len(classes) > 12 else ''}"


def split_label_indices(dataset: Any, which: str, classes: Sequence[str]) -> np.ndarray:
    """The labels of split ``which`` of a ``Dataset`` as indices into a conditional model's ``classes``."""
    labels = dataset.labels(which)
    if labels is None:
        raise DataError(f"{dataset.name} has no labels, and a conditional model needs them: image folders give "
                        "one subfolder per class, tables a --label-column, arrays a y (VAE().fit(X, y))")
    return label_indices(labels, classes, dataset.class_names)
