"""``Dataset``: examples as float32 tensors split into train and test, with their config and labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ..config import DataConfig
from ..errors import DataError
from .transforms import binarize, split_generator, to_original_units

if TYPE_CHECKING:
    from .streaming import StreamedSplit

SPLITS = ("train", "test", "all")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split ``'source:split'`` into the source and the split (``None`` when no split is named)."""
    for split in SPLITS:
        if spec.endswith(":" + split):
            return spec[: -len(split) - 1], split
    return spec, None


@dataclass
class Dataset:
    """Examples as float32 tensors ``(n, *shape)`` in model units, split into train and test.

    ``x_train``/``x_test`` hold the values before binarization; ``split()`` gives what a model
    sees for evaluation (binarized as configured, with a fixed draw for stochastic binarization).
    """

    name: str
    x_train: Tensor
    x_test: Tensor
    y_train: np.ndarray | None
    y_test: np.ndarray | None
    config: DataConfig
    class_names: list[str] | None = None
    # Position of each example in the source (train then test), so that ``split('all')`` keeps file order.
    order: np.ndarray | None = None
    # Data bigger than memory: the training split read from disk batch by batch (``x_train`` is then empty,
    # shape (0, *shape)); see ``data.streaming``.
    train_stream: "StreamedSplit | None" = None
    # The file of each example in source order, for data read from a folder of images.
    files: list[str] | None = None
    # Files left out because they cannot be read (``skip_bad_files``), as (path, reason), found while loading;
    # a streamed training split adds those it meets during training to ``train_stream.bad_files``.
    skipped_files: list[tuple[str, str]] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        """Examples in the training split, streamed or in memory."""
        return len(self.train_stream) if self.train_stream is not None else len(self.x_train)

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def split(self, which: str = "test", units: str = "original"):
        """The examples of split ``which`` ('train', 'test' or 'all'), binarized as the config says.

        ``units="original"`` (the default): in the data's own units, what the estimator's methods take (a
        standardized array is un-standardized; a table comes back as a DataFrame in its own form).
        ``units="model"``: the values the model sees (standardized; a table's encoded values, NaN where missing).
        """
        if units not in ("original", "model"):
            raise DataError(f"units must be 'original' or 'model', got {units!r}")
        if self.train_stream is not None and which in ("train", "all"):
            raise DataError(f"the training split of {self.name} is streamed from disk (it does not fit the memory "
                            "budget), so it cannot be returned whole; use its test split, or load it with "
                            "in_memory='yes' (--data-in-memory yes)")
        if which == "all":
            x = torch.cat([self.x_train, self.x_test])
            if self.order is not None:
                x = x[torch.as_tensor(np.argsort(self.order))]
        elif which in ("train", "test"):
            x = self.x_train if which == "train" else self.x_test
        else:
            raise DataError(f"unknown split {which!r}; use one of {', '.join(SPLITS)}")
        if self.config.binarize != "none":
            x = binarize(x, self.config.binarize_threshold, generator=split_generator(self.config.split_seed, which))
        if units == "model":
            return x
        if self.config.table is not None:
            from .table import TableSchema

            return TableSchema.from_dict(self.config.table).decode(x.numpy())
        if self.config.standardize_mean is not None:
            return torch.from_numpy(to_original_units(x.numpy(), self.config))
        return x

    def source_positions(self, which: str = "test") -> np.ndarray | None:
        """Where each example of split ``which`` sits in its source (row or file number, 0-based), in the order
        ``split(which)`` gives them; ``None`` for data with train and test parts of their own."""
        if self.order is None:
            return None
        n_train = self.num_train
        if which == "train":
            return self.order[:n_train]
        if which == "test":
            return self.order[n_train:]
        return np.sort(self.order)  # file order (with gaps where unreadable files were skipped)

    def example_ids(self, which: str = "test") -> list[str] | None:
        """The file of each example of split ``which`` (image folders), else its row in the source, else ``None``."""
        positions = self.source_positions(which)
        if positions is None:
            return None
        if self.files is not None:
            return [self.files[int(i)] for i in positions]
        return [str(int(i)) for i in positions]

    def labels(self, which: str = "test") -> np.ndarray | None:
        if self.y_train is None or self.y_test is None:
            return None
        if which == "train":
            return self.y_train
        if which == "test":
            return self.y_test
        y = np.concatenate([self.y_train, self.y_test])
        return y[np.argsort(self.order)] if self.order is not None else y

    def __repr__(self) -> str:
        streamed = ", train streamed from disk" if self.train_stream is not None else ""
        skipped = f", {len(self.skipped_files)} unreadable file(s) skipped" if self.skipped_files else ""
        return (f"Dataset({self.name!r}, train={self.num_train}, test={len(self.x_test)}, shape={self.shape}, "
                f"kind={self.kind!r}, labels={self.y_train is not None}{streamed}{skipped})")


def _split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seeded held-out split of n examples: (train indices, test indices, source position of train then test)."""
    if n < 2:
        raise DataError(f"the data holds {n} example(s); vaekit needs at least 2 to hold one out for testing")
    n_test = min(n - 1, max(1, int(round(n * test_fraction))))
    perm = np.random.default_rng(seed).permutation(n)
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return train_idx, test_idx, np.concatenate([train_idx, test_idx])
