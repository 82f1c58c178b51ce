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

A file that cannot be read stops loading (or training, when a DataLoader worker meets it) with a ``DataError``
naming it; the workers hand such errors back as values (``_IndexReader``), so the main process raises the
worker's own error, not torch's wrapper with the worker's traceback. With ``skip_bad_files`` an image whose
header cannot be read, and a shard that cannot be opened, are left out at loading, unreadable test images
are left out of the test split, and an unreadable training image is replaced in its batch by the next
readable example of the split (the batch keeps its size, so the global batches and their weighting under
torchrun are unchanged); ``StreamedSplit.bad_files`` collects them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from ..names import DEFAULT_LOADER_WORKERS, IN_MEMORY_CHOICES  # noqa: F401  (IN_MEMORY_CHOICES: re-exported)
from .dataset import Dataset, _split_indices
from .sources import (IMAGE_SUFFIXES, RawData, UnreadableFileError, _array_to_raw, builtin_name, check_array_layout,
                      choose_image_layout, folder_labels, image_to_array, list_images, load_numpy_file, none_readable,
                      open_image, to_float_examples)
from .transforms import column_scale, to_model_units

DEFAULT_BUDGET_FRACTION = 0.5
"""Without --memory-budget-mb, data sets are held in memory when they fit in half the available memory."""
LOADING_OVERHEAD = 2.0
"""Loading into memory briefly holds about two float32 copies (the read array and the split tensors)."""
SCAN_CHUNK_BYTES = 32 * 2**20


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

    skipped: list[tuple[str, str]] = []  # a single file is the whole data set: never skipped

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

    def __init__(self, folder: Path, skip_bad_files: bool = False) -> None:
        self.folder = Path(folder)
        files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() == ".npy" and p.is_file())
        if not files:
            raise DataError(f"{folder} holds no .npy shards")
        self.parts, self.skipped = [], []  # skipped: shards that cannot be opened, as (path, reason)
        for path in files:
            try:
                self.parts.append(NpyArray(path))
            except UnreadableFileError as err:
                if not skip_bad_files:
                    raise
                self.skipped.append((err.path, err.reason))
        if not self.parts:
            raise none_readable(str(folder), self.skipped)
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

    def __init__(self, root: Path, image_size: tuple[int, int] | None = None, channels: int | None = None,
                 skip_bad_files: bool = False) -> None:
        self.root = Path(root)
        self.files = list_images(self.root)
        if not self.files:
            raise DataError(f"{root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        headers = []
        # Images whose header cannot be read, by file number: (path, reason). They keep their place (and so every
        # file its split); the splits leave them out.
        self.unreadable: dict[int, tuple[str, str]] = {}
        for number, path in enumerate(self.files):
            try:
                with open_image(path) as img:  # reads the header only
                    headers.append((img.mode, img.height, img.width))
            except UnreadableFileError as err:
                if not skip_bad_files:
                    raise
                self.unreadable[number] = (err.path, err.reason)
        self.skipped = list(self.unreadable.values())
        if not headers:
            raise none_readable(str(root), self.skipped)
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


def open_streamable(source: str, image_size: tuple[int, int] | None = None, channels: int | None = None,
                    skip_bad_files: bool = False) -> tuple[Source, Source | None] | None:
    """The (train-or-all, own test) sources of a streamable path, or ``None`` for data that is only read whole (a
    built-in data set's name among them, even where a file or folder of that name exists, as ``load_source`` reads it)."""
    if builtin_name(source):
        return None
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".npy":
        return NpyArray(path), None
    if not path.is_dir():
        return None
    return shard_sources(path, skip_bad_files) or (ImageFiles(path, image_size, channels, skip_bad_files), None)


def shard_sources(path: Path, skip_bad_files: bool = False) -> tuple[NpyShards, NpyShards | None] | None:
    """A folder of ``.npy`` shards (and its own test shards, with train/ and test/ subfolders), or ``None``."""
    if (path / "train").is_dir() and (path / "test").is_dir() and any((path / "train").glob("*.npy")):
        return NpyShards(path / "train", skip_bad_files), NpyShards(path / "test", skip_bad_files)
    if any(p.suffix.lower() == ".npy" for p in path.iterdir()):
        return NpyShards(path, skip_bad_files), None
    return None


def load_shard_folder(path: str | Path, skip_bad_files: bool = False,
                      sources: tuple[Source, Source | None] | None = None) -> RawData | None:
    """A folder of ``.npy`` shards (or ``train/`` and ``test/`` folders of them) read whole, as one array in file-name
    order, the same examples the streamed path reads batch by batch; ``None`` for a source that is no such folder.
    ``sources``: what ``open_streamable`` already opened for ``path``, so that the shards are not opened twice."""
    if sources is None:
        path = Path(path).expanduser()
        if builtin_name(str(path)) or not path.is_dir():
            return None
        sources = shard_sources(path, skip_bad_files)
    if sources is None or not isinstance(sources[0], NpyShards):
        return None
    train, test = sources

    def whole(shards: NpyShards) -> RawData:
        return _array_to_raw(shards.read_raw(np.arange(len(shards))), None, str(shards.folder))

    raw = whole(train)
    if test is not None:
        held_out = whole(test)
        if held_out.x.shape[1:] != raw.x.shape[1:]:
            raise DataError(f"{test.folder} holds examples of shape {held_out.x.shape[1:]} but {train.folder} "
                            f"{raw.x.shape[1:]}")
        raw.x_test, raw.unit_range = held_out.x, raw.unit_range and held_out.unit_range
    raw.extra["skipped"] = [*train.skipped, *(test.skipped if test is not None else [])]
    return raw


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
    skip_bad_files: bool = False
    # Examples whose file cannot be read, by their number in the source: (path, reason). Filled with skip_bad_files:
    # by the header scan, and as batches meet them (in the main process, from what the workers report).
    bad_files: dict[int, tuple[str, str]] = field(default_factory=dict)
    # Called in the main process with (path, reason) for each unreadable file training meets (not sent to workers).
    on_bad_file: Callable[[str, str], None] | None = None

    def __post_init__(self) -> None:
        self._reported = {path for path, _ in self.bad_files.values()}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "on_bad_file": None}

    def __len__(self) -> int:
        return len(self.source) if self.indices is None else len(self.indices)

    def unreadable_files(self) -> list[tuple[str, str]]:
        """Every file found unreadable so far, once each, as (path, reason), in path order."""
        return sorted({path: (path, reason) for path, reason in self.bad_files.values()}.values())

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

    def read_batch(self, positions: np.ndarray) -> tuple[np.ndarray, dict[int, tuple[str, str]]]:
        """A training batch (``read``) and the unreadable files it met, {example in the source: (path, reason)}.

        Without ``skip_bad_files`` an unreadable file raises ``UnreadableFileError``; with it, each example whose
        file cannot be read is replaced by the next readable example of the split (positions wrap around).
        """
        positions = np.asarray(positions, dtype=np.int64)
        if not self.skip_bad_files:
            return self.read(positions), {}
        found: dict[int, tuple[str, str]] = {}
        if not (self.bad_files and any(self._source_index(p) in self.bad_files for p in positions)):
            try:
                return self.read(positions), found
            except UnreadableFileError:
                pass  # read them one by one to find which
        rows = []
        for position in positions:
            for step in range(len(self)):
                row = self._read_one((int(position) + step) % len(self), found)
                if row is not None:
                    rows.append(row)
                    break
            else:
                path, reason = next(iter(self.bad_files.values()))
                raise DataError(f"none of the {len(self):,} examples of {self.config.source} can be read (for example "
                                f"{path}: {reason})")
        return np.stack(rows), found

    def read_readable(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The examples at these positions whose files can be read (all of them without ``skip_bad_files``), and
        their positions; the unreadable ones are added to ``bad_files``."""
        positions = np.asarray(positions, dtype=np.int64)
        if not self.skip_bad_files:
            return self.read(positions), positions
        if not (self.bad_files and any(self._source_index(p) in self.bad_files for p in positions)):
            try:
                return self.read(positions), positions
            except UnreadableFileError:
                pass
        found: dict[int, tuple[str, str]] = {}
        rows = [(p, self._read_one(int(p), found)) for p in positions]
        kept = np.array([p for p, row in rows if row is not None], dtype=np.int64)
        x = np.stack([row for _, row in rows if row is not None]) if len(kept) else \
            np.zeros((0, *self.example_shape), np.float32)
        return x, kept

    def record_bad_files(self, found: dict[int, tuple[str, str]]) -> None:
        """Add what a worker found to ``bad_files`` (in the main process) and report each file once."""
        self.bad_files.update(found)
        for path, reason in found.values():
            if path not in self._reported:
                self._reported.add(path)
                if self.on_bad_file is not None:
                    self.on_bad_file(path, reason)

    def _source_index(self, position: int) -> int:
        return int(position) if self.indices is None else int(self.indices[position])

    def _read_one(self, position: int, found: dict[int, tuple[str, str]]) -> np.ndarray | None:
        """One example, or ``None`` when its file cannot be read (recorded in ``bad_files`` and ``found``)."""
        index = self._source_index(position)
        if index in self.bad_files:
            return None
        try:
            return self.read(np.array([position]))[0]
        except UnreadableFileError as err:
            self.bad_files[index] = found[index] = (err.path, err.reason)
            return None

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
                  num_workers: int, skip_bad_files: bool = False):
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
    unreadable = getattr(source, "unreadable", {})  # images whose header cannot be read, by file number
    test_split = StreamedSplit(test_source, test_idx, dataclasses_replace_binarize_none(config),
                               skip_bad_files=skip_bad_files, bad_files=dict(getattr(test_source, "unreadable", {})))
    x_test, test_kept = _read_test_split(test_split, n_test, source.example_shape)
    if len(test_kept) < n_test:  # unreadable test images are left out (skip_bad_files)
        if not len(test_kept):
            raise DataError(f"every file of the test split of {name} is unreadable ({n_test} files); add readable "
                            "files or change --test-fraction")
        if test_idx is not None:
            test_idx = test_idx[test_kept]
            order = np.concatenate([train_idx, test_idx])
    skipped = sorted({path: (path, reason) for path, reason in
                      [*source.skipped, *(test_source.skipped if test_source is not source else []),
                       *test_split.bad_files.values()]}.values())
    labels = getattr(source, "labels", None)
    y_train = y_test = None
    if labels is not None and train_idx is not None:
        y_train, y_test = labels[train_idx], labels[test_idx]
    train_split = StreamedSplit(source, train_idx, config, num_workers=num_workers, skip_bad_files=skip_bad_files,
                                bad_files=dict(unreadable))
    return Dataset(name=name, x_train=torch.zeros((0, *source.example_shape)), x_test=torch.from_numpy(x_test),
                   y_train=y_train, y_test=y_test, config=config, class_names=getattr(source, "class_names", None),
                   order=order, train_stream=train_split, skipped_files=skipped)


def _read_test_split(split: StreamedSplit, n_test: int, example_shape: tuple[int, ...]):
    """The test split in memory, in chunks of bounded size, and the positions read (all of them unless unreadable
    files were skipped)."""
    if not n_test:
        return np.zeros((0, *example_shape), np.float32), np.zeros(0, np.int64)
    rows = max(1, SCAN_CHUNK_BYTES // (4 * math.prod(example_shape)))
    pieces, kept = [], []
    for start in range(0, n_test, rows):
        x, positions = split.read_readable(np.arange(start, min(start + rows, n_test)))
        pieces.append(x)
        kept.append(positions)
    return np.concatenate(pieces), np.concatenate(kept)


def dataclasses_replace_binarize_none(config: DataConfig) -> DataConfig:
    """The config without binarization: ``x_test`` holds intensities, ``Dataset.split`` binarizes them."""
    import dataclasses

    return dataclasses.replace(config, binarize="none", binarize_threshold=None)
