"""Data bigger than memory: memory-mapped ``.npy`` files, folders of ``.npy`` shards, image folders read lazily.

``load_dataset`` keeps a data set in memory (the fast path) when it fits the memory budget and
otherwise streams its training split from disk: each training batch is read by ``DataLoader``
workers (``vaekit.training.batches.StreamedBatches``) while the model trains on the previous one. The test
split, which validation and the pictures need, is held in memory.

Streamable sources:

- ``data.npy``: one array, memory-mapped (``np.load(mmap_mode="r")``); a batch maps the file, copies
  its rows and unmaps it, so the resident memory is a batch, not the file.
- a folder of ``.npy`` shards (``part-00000.npy``, ...): arrays with the same example shape and type,
  read as one array in file-name order; with subfolders ``train/`` and ``test/`` it has its own split.
  NumPy's ``.npy`` is the standard binary array format: every array library writes it, it needs no
  extra package, and memory-mapping gives random access, so every epoch visits a true random
  permutation of all examples (what the in-memory path does, so both train on exactly the same
  batches), torchrun's ranks take their shards of it and a resumed run continues exactly. Sequential
  tar streams (WebDataset) would only shuffle within a buffer.
- a folder of images: the file list and the images' headers are read up front (sizes, modes), the
  pixels only when a batch needs them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from .dataset import Dataset, _split_indices
from .sources import (IMAGE_SUFFIXES, check_array_layout, choose_image_layout, folder_labels, image_to_array,
                      list_images, load_numpy_file, open_image, to_float_examples)
from .transforms import column_scale, to_model_units

IN_MEMORY_CHOICES = ("auto", "yes", "no")
DEFAULT_BUDGET_FRACTION = 0.5
"""Without --memory-budget-mb, data sets are held in memory when they fit in half the available memory."""
LOADING_OVERHEAD = 2.0
"""Loading into memory briefly holds about two float32 copies (the read array and the split tensors)."""
SCAN_CHUNK_BYTES = 32 * 2**20
DEFAULT_LOADER_WORKERS = 2


def available_memory_bytes() -> int | None:
    """Memory the system can give without swapping (Linux: MemAvailable), or ``None`` when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_memory_budget_mb() -> float:
    """Half of the available memory, in MiB (unbounded when the system does not say)."""
    available = available_memory_bytes()
    return math.inf if available is None else DEFAULT_BUDGET_FRACTION * available / 2**20


# --- sources: random access to examples on disk ---------------------------------------------------

class NpyArray:
    """One ``.npy`` file, memory-mapped; ``read`` copies the rows asked for and unmaps the file again."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        mapped = self._map()
        check_array_layout(mapped.shape, mapped.dtype, str(self.path))
        self.file_shape, self.dtype = tuple(mapped.shape), mapped.dtype
        self.example_shape = tuple(to_float_examples(np.zeros((1, *self.file_shape[1:]), self.dtype)).shape[1:])
        del mapped

    def _map(self) -> np.ndarray:
        mapped = load_numpy_file(self.path, mmap_mode="r")
        if not isinstance(mapped, np.ndarray):
            raise DataError(f"{self.path} is not a single .npy array")
        return mapped

    def __len__(self) -> int:
        return self.file_shape[0]

    @property
    def unit_range(self) -> bool:
        return self.dtype in (np.uint8, np.bool_)

    def read_raw(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (ascending) in the file's own type; only their pages are read."""
        mapped = self._map()
        try:
            return np.array(mapped[indices])
        finally:
            del mapped  # unmap: pages read for this batch stop counting as this process's memory

    def read(self, indices: np.ndarray) -> np.ndarray:
        return read_in_order(self.read_raw, indices)


class NpyShards:
    """A folder of ``.npy`` files with the same example shape and type, read as one array in name order."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() == ".npy" and p.is_file())
        if not files:
            raise DataError(f"{folder} holds no .npy shards")
        self.parts = [NpyArray(p) for p in files]
        first = self.parts[0]
        for part in self.parts[1:]:
            if part.file_shape[1:] != first.file_shape[1:] or part.dtype != first.dtype:
                raise DataError(f"shard {part.path} holds {part.dtype} examples of shape {part.file_shape[1:]}, but "
                                f"{first.path} holds {first.dtype} examples of shape {first.file_shape[1:]}; all "
                                "shards of a folder must agree")
        self.example_shape, self.dtype = first.example_shape, first.dtype
        self.ends = np.cumsum([len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.ends[-1])

    @property
    def unit_range(self) -> bool:
        return self.parts[0].unit_range

    def read_raw(self, indices: np.ndarray) -> np.ndarray:
        shard_of = np.searchsorted(self.ends, indices, side="right")
        pieces = []
        for shard in np.unique(shard_of):
            start = self.ends[shard - 1] if shard else 0
            pieces.append(self.parts[shard].read_raw(indices[shard_of == shard] - start))
        return np.concatenate(pieces)

    def read(self, indices: np.ndarray) -> np.ndarray:
        return read_in_order(self.read_raw, indices)


class ImageFiles:
    """Images decoded only when read; sizes and modes come from the headers, read once up front."""

    unit_range = True

    def __init__(self, root: Path, image_size: tuple[int, int] | None = None, channels: int | None = None) -> None:
        self.root = Path(root)
        self.files = list_images(self.root)
        if not self.files:
            raise DataError(f"{root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        headers = []
        for path in self.files:
            with open_image(path) as img:  # reads the header only
                headers.append((img.mode, img.height, img.width))
        self.channels, self.image_size = choose_image_layout(headers, image_size, channels)
        self.example_shape = (self.channels, *self.image_size)
        self.labels, self.class_names = folder_labels(self.root, self.files)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), *self.example_shape), dtype=np.float32)
        for row, index in enumerate(indices):
            with open_image(self.files[int(index)]) as img:
                img.load()
                out[row] = image_to_array(img, self.channels, self.image_size)
        return out


def read_in_order(read_raw, indices: np.ndarray) -> np.ndarray:
    """Read rows in ascending order (sequential on disk), convert them, and return them in the order asked."""
    indices = np.asarray(indices, dtype=np.int64)
    order = np.argsort(indices, kind="stable")
    rows = to_float_examples(read_raw(indices[order]))
    out = np.empty_like(rows)
    out[order] = rows
    return out


Source = NpyArray | NpyShards | ImageFiles


def open_streamable(source: str, image_size: tuple[int, int] | None = None,
                    channels: int | None = None) -> tuple[Source, Source | None] | None:
    """The (train-or-all, own test) sources of a streamable path, or ``None`` for data that is only read whole."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".npy":
        return NpyArray(path), None
    if not path.is_dir():
        return None
    if (path / "train").is_dir() and (path / "test").is_dir() and any((path / "train").glob("*.npy")):
        return NpyShards(path / "train"), NpyShards(path / "test")
    if any(p.suffix.lower() == ".npy" for p in path.iterdir()):
        return NpyShards(path), None
    return ImageFiles(path, image_size, channels), None


def float32_bytes(source: Source) -> int:
    return len(source) * math.prod(source.example_shape) * 4


# --- a split read batch by batch -------------------------------------------------------------------

@dataclass
class StreamedSplit:
    """Examples ``indices`` of a source (all of it when ``None``), prepared as the run's data config says."""

    source: Source
    indices: np.ndarray | None
    config: DataConfig
    num_workers: int = DEFAULT_LOADER_WORKERS

    def __len__(self) -> int:
        return len(self.source) if self.indices is None else len(self.indices)

    @property
    def example_shape(self) -> tuple[int, ...]:
        return self.source.example_shape

    def read(self, positions: np.ndarray) -> np.ndarray:
        """Examples at these positions of the split, float32 in model units (standardized, thresholded)."""
        rows = np.asarray(positions, dtype=np.int64)
        x = self.source.read(rows if self.indices is None else self.indices[rows])
        if not np.isfinite(x).all():
            raise DataError(f"{self.config.source} holds NaN or infinite values; clean or impute them first")
        x = to_model_units(x, self.config)
        if self.config.binarize == "static":  # the threshold form; a random static draw cannot be streamed
            x = (x >= self.config.binarize_threshold).astype(np.float32)
        return x

    def chunks(self, rows_per_chunk: int | None = None):
        """The whole split in order, in chunks of bounded size (for statistics and loading the test split)."""
        rows = rows_per_chunk or max(1, SCAN_CHUNK_BYTES // (4 * math.prod(self.example_shape)))
        for start in range(0, len(self), rows):
            yield self.read(np.arange(start, min(start + rows, len(self))))


def _scan(source: Source, indices: np.ndarray | None, name: str, standardize: bool):
    """One pass over a split: finiteness, range, and (when asked) per-column mean and standard deviation."""
    split = StreamedSplit(source, indices, DataConfig(source=name))
    low, high = math.inf, -math.inf
    count, mean, m2 = 0, None, None
    for chunk in split.chunks():
        if not np.isfinite(chunk).all():
            bad = np.argwhere(~np.isfinite(chunk))[0]
            raise DataError(f"{name} holds NaN or infinite values, the first in example {count + bad[0]}; "
                            "clean or impute them first")
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
        if standardize:  # Chan et al.'s pairwise merge of means and sums of squared deviations
            flat = chunk.reshape(len(chunk), -1).astype(np.float64)
            c_mean, c_m2 = flat.mean(0), ((flat - flat.mean(0)) ** 2).sum(0)
            if mean is None:
                mean, m2 = c_mean, c_m2
            else:
                delta = c_mean - mean
                total = count + len(flat)
                mean = mean + delta * len(flat) / total
                m2 = m2 + c_m2 + delta ** 2 * count * len(flat) / total
        count += len(chunk)
    stats = None
    if standardize:
        std = np.sqrt(m2 / count)
        stats = (mean, column_scale(std))
    return low, high, stats


def load_streamed(name: str, sources: tuple[Source, Source | None], config: DataConfig, *,
                  like: DataConfig | None, standardize: bool | None, memory_budget_mb: float,
                  num_workers: int):
    """A ``Dataset`` whose training split streams from disk and whose test split is read into memory."""
    source, test_source = sources
    if config.binarize == "static" and config.binarize_threshold is None:
        raise DataError("a random static binarization is one draw of the whole array, which cannot be streamed; "
                        "use --binarize dynamic, or --binarize static with --binarize-threshold T")
    if test_source is not None:
        if test_source.example_shape != source.example_shape:
            raise DataError(f"{name}: train/ holds examples of shape {source.example_shape} but test/ "
                            f"{test_source.example_shape}")
        train_idx, test_idx, order = None, None, None
    else:
        train_idx, test_idx, order = _split_indices(len(source), config.test_fraction, config.split_seed)
        test_source = source
    n_test = len(test_source) if test_idx is None else len(test_idx)
    test_mb = n_test * math.prod(source.example_shape) * 4 / 2**20
    if test_mb > memory_budget_mb / 2:
        raise DataError(f"the test split of {name} ({n_test:,} examples, {test_mb:,.0f} MiB as float32) would take more "
                        f"than half the memory budget ({memory_budget_mb:,.0f} MiB); give the data a smaller test split "
                        "of its own (train/ and test/ folders of .npy shards) or lower --test-fraction")
    kind_known = source.unit_range and test_source.unit_range
    if like is not None:
        config.kind = like.kind
        config.standardize_mean, config.standardize_std = like.standardize_mean, like.standardize_std
    elif not kind_known:
        two_d = len(source.example_shape) == 1
        low, high, stats = _scan(source, train_idx, name, standardize=bool(standardize) or two_d)
        t_low, t_high, _ = _scan(test_source, test_idx, f"{name} (test part)", standardize=False)
        unit = low >= 0 and high <= 1 and t_low >= 0 and t_high <= 1
        if standardize is None:
            standardize = two_d and not unit
        if standardize:
            config.standardize_mean, config.standardize_std = stats[0].tolist(), stats[1].tolist()
            unit = False
        config.kind = "unit" if unit else "real"
    else:
        config.kind = "unit"
    if config.binarize != "none" and config.kind != "unit":
        raise DataError(f"binarization needs data in [0, 1], but {name} holds real values; use --binarize none")
    if isinstance(source, ImageFiles):
        config.image_size, config.channels = tuple(source.image_size), source.channels
    test_split = StreamedSplit(test_source, test_idx, dataclasses_replace_binarize_none(config))
    x_test = np.concatenate(list(test_split.chunks())) if n_test else np.zeros((0, *source.example_shape), np.float32)
    labels = getattr(source, "labels", None)
    y_train = y_test = None
    if labels is not None and train_idx is not None:
        y_train, y_test = labels[train_idx], labels[test_idx]
    train_split = StreamedSplit(source, train_idx, config, num_workers=num_workers)
    return Dataset(name=name, x_train=torch.zeros((0, *source.example_shape)), x_test=torch.from_numpy(x_test),
                   y_train=y_train, y_test=y_test, config=config, class_names=getattr(source, "class_names", None),
                   order=order, train_stream=train_split)


def dataclasses_replace_binarize_none(config: DataConfig) -> DataConfig:
    """The config without binarization: ``x_test`` holds intensities, ``Dataset.split`` binarizes them."""
    import dataclasses

    return dataclasses.replace(config, binarize="none", binarize_threshold=None)
