"""Readers that turn a data source into NumPy arrays: built-in data sets, .npy/.npz, image folders, CSV.

Every reader returns a ``RawData``: float32 examples (``(n, features)`` or ``(n, channels, height,
width)``), optional labels, and, when the source has one, its own train/test split. Anything that
cannot be read raises ``DataError`` with the file and the reason.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import struct
import tokenize
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import numpy as np

from ..errors import DataError
from .idx import read_idx

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DEFAULT_MAX_IMAGE_SIDE = 128
DEFAULT_RESIZED_IMAGE = (64, 64)


@dataclass
class RawData:
    """Examples as float32 arrays plus what the reader learned about them."""

    x: np.ndarray
    y: np.ndarray | None = None
    # When the source comes with its own split, ``x``/``y`` hold the training part and these the test part.
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    unit_range: bool = False  # True when the values are intensities in [0, 1] by construction
    class_names: list[str] | None = None
    columns: list[str] | None = None
    standardize: bool = False
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    extra: dict = field(default_factory=dict)


BUILTIN_NAMES = ("digits", "fashion-mnist")
BUILTIN_ALIASES = {"fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist"}


def builtin_name(source: str) -> str | None:
    """The built-in data set ``source`` names (an alias gives its canonical name), or ``None``."""
    name = BUILTIN_ALIASES.get(source, source)
    return name if name in BUILTIN_NAMES else None


class UnreadableFileError(DataError):
    """One file of the data cannot be read (damaged, truncated, not what its name says): what ``skip_bad_files``
    skips. ``path`` names the file, ``reason`` says what is wrong with it."""

    def __init__(self, message: str, path: str | Path, reason: str) -> None:
        super().__init__(message)
        self.path, self.reason = str(path), reason

    def __reduce__(self):  # crosses from DataLoader worker processes whole
        return type(self), (str(self), self.path, self.reason)


def load_digits_data() -> RawData:
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1]; the last 20% (fixed) form the test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    n_train = int(round(0.8 * len(images)))
    return RawData(x=images[:n_train], y=labels[:n_train], x_test=images[n_train:], y_test=labels[n_train:],
                   unit_range=True, class_names=[str(i) for i in range(10)])


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


def _unit_intensities(images: np.ndarray) -> np.ndarray:
    """8-bit images (n, h, w) as float32 intensities in [0, 1], shape (n, 1, h, w), without a second full-size copy."""
    x = images.astype(np.float32)[:, None, :, :]
    x /= 255.0
    return x


def load_fashion_mnist_data(data_dir: str | Path | None = None) -> RawData:
    """Fashion-MNIST from its four IDX files (60,000 train / 10,000 test, 28x28 grayscale, 10 classes)."""
    directory = Path(data_dir) if data_dir is not None else Path(os.environ.get("VAEKIT_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    stems = {"x": "train-images-idx3-ubyte", "y": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
    paths = {key: _find_idx(directory, stem) for key, stem in stems.items()}
    missing = [stems[k] for k, p in paths.items() if p is None]
    if missing:
        raise DataError(
            f"Fashion-MNIST not found in {directory} (missing {', '.join(missing)}). Install it with "
            "'apt-get install dataset-fashion-mnist' (Debian), or pass --data-dir DIR holding the four IDX files"
        )
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for key in ("x", "x_test"):
        if arrays[key].ndim != 3:
            raise DataError(f"{paths[key]} should hold images (3 dimensions), it has shape {arrays[key].shape}")
    for xk, yk in (("x", "y"), ("x_test", "y_test")):
        if len(arrays[xk]) != len(arrays[yk]):
            raise DataError(f"{paths[xk]} holds {len(arrays[xk])} images but {paths[yk]} {len(arrays[yk])} labels")
    return RawData(x=_unit_intensities(arrays["x"]), y=arrays["y"].astype(np.int64),
                   x_test=_unit_intensities(arrays["x_test"]), y_test=arrays["y_test"].astype(np.int64),
                   unit_range=True, class_names=list(FASHION_MNIST_CLASSES))


# --- arrays ---------------------------------------------------------------------------------------

_X_KEYS = ("x", "X", "data", "images", "features", "arr_0")
_Y_KEYS = ("y", "labels", "label", "targets", "target")


# What numpy's readers raise on a damaged .npy/.npz: a header that does not parse (SyntaxError,
# tokenize.TokenError), a shape larger than memory (MemoryError), a corrupt zip member (zlib.error), ...
DAMAGED_FILE_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError, tokenize.TokenError,
                        MemoryError, TypeError, KeyError, RecursionError, NotImplementedError, zlib.error)


def load_numpy_file(path: Path, mmap_mode: str | None = None):
    """``np.load`` without unpickling, every failure a ``DataError``: an array (memory-mapped with ``mmap_mode``),
    or an open ``.npz`` archive."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err).lower() or "python objects" in str(err).lower():
            raise DataError(f"{path} holds Python objects, which vaekit never unpickles; save a plain numeric array") from None
        raise UnreadableFileError(f"cannot read {path} as a NumPy file: {err}", path, str(err)) from None
    except DAMAGED_FILE_ERRORS as err:
        reason = f"{type(err).__name__}: {err}"
        raise UnreadableFileError(f"cannot read {path} as a NumPy file ({reason}); it may be damaged", path,
                                  reason) from None


def load_array_file(path: Path) -> RawData:
    """A ``.npy`` array, or an ``.npz`` archive (keys x/y, or x_train/x_test with y_train/y_test)."""
    loaded = load_numpy_file(path)
    if isinstance(loaded, np.ndarray):
        return _array_to_raw(loaded, None, str(path))
    with loaded as archive:
        try:
            keys = set(archive.files)
            if {"x_train", "x_test"} <= keys:
                train = _array_to_raw(archive["x_train"], _get(archive, "y_train"), f"{path}[x_train]")
                test = _array_to_raw(archive["x_test"], _get(archive, "y_test"), f"{path}[x_test]")
                if train.x.shape[1:] != test.x.shape[1:]:
                    raise DataError(f"{path}: x_train has examples of shape {train.x.shape[1:]} "
                                    f"but x_test {test.x.shape[1:]}")
                train.x_test, train.y_test = test.x, test.y
                train.unit_range = train.unit_range and test.unit_range
                return train
            x_key = next((k for k in _X_KEYS if k in keys), None)
            if x_key is None:
                if len(keys) != 1:
                    raise DataError(f"{path} holds arrays {sorted(keys)}; name the examples 'x' (and labels 'y'), "
                                    "or 'x_train'/'x_test' for a split")
                x_key = next(iter(keys))
            y_key = next((k for k in _Y_KEYS if k in keys), None)
            return _array_to_raw(archive[x_key], archive[y_key] if y_key else None, f"{path}[{x_key}]")
        except DAMAGED_FILE_ERRORS as err:
            raise DataError(f"cannot read {path} ({type(err).__name__}: {err}); it may be damaged") from None


def _get(archive, key: str):
    return archive[key] if key in archive.files else None


def check_array_layout(shape: tuple[int, ...], dtype: np.dtype, name: str) -> None:
    """Refuse arrays that are not one numeric example per row: (n, features), (n, h, w) or 4-D images."""
    if dtype.kind not in "buif":
        raise DataError(f"{name} has dtype {dtype}; vaekit needs numbers (bool, integer or float)")
    if len(shape) < 2:
        raise DataError(f"{name} has shape {shape}; it needs one row per example, e.g. (examples, features)")
    if shape[0] == 0:
        raise DataError(f"{name} holds no examples")
    if 0 in shape[1:]:
        raise DataError(f"{name} has shape {shape}: its examples are empty")
    if len(shape) == 4 and shape[1] not in (1, 3) and shape[-1] not in (1, 3, 4):
        raise DataError(f"{name} has shape {shape}; 4-D arrays must be images with 1 or 3 channels "
                        "(examples, channels, height, width) or (examples, height, width, channels)")
    if len(shape) > 4:
        raise DataError(f"{name} has shape {shape}; vaekit reads vectors (2-D) or images (3-D or 4-D)")


def to_float_examples(array: np.ndarray) -> np.ndarray:
    """Rows of a checked array as float32 examples in model layout: uint8 / 255, (n, c, h, w) for images."""
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused by check_finite with their position
        x = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    if array.ndim == 3:
        x = x[:, None]
    elif array.ndim == 4 and x.shape[1] not in (1, 3):
        x = np.ascontiguousarray(x[..., :3].transpose(0, 3, 1, 2)) if x.shape[-1] != 1 else x.transpose(0, 3, 1, 2)
    return x


def _array_to_raw(array: np.ndarray, labels: np.ndarray | None, name: str) -> RawData:
    check_array_layout(array.shape, array.dtype, name)
    unit = array.dtype == np.uint8 or array.dtype == np.bool_
    x = to_float_examples(array)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(x):
            raise DataError(f"{name}: the labels have shape {labels.shape} but there are {len(x)} examples")
    in_unit_range = unit or bool(x.min() >= 0 and x.max() <= 1)
    # Real-valued feature vectors are standardized (and un-standardized on the way out); images never are.
    return RawData(x=x, y=labels, unit_range=unit, standardize=x.ndim == 2 and not in_unit_range)


# --- image folders --------------------------------------------------------------------------------

def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


DAMAGED_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError, TypeError,
                         ZeroDivisionError, MemoryError, zlib.error)


@contextlib.contextmanager
def open_image(path: Path) -> Iterator[Any]:
    """``PIL.Image.open(path)``, with every failure while it is open (a damaged file, a decompression bomb) a
    ``DataError`` that names the file."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            yield img
    except Image.DecompressionBombError as err:
        raise UnreadableFileError(f"image {path} is too large to read safely: {err}", path,
                                  f"too large to read safely: {err}") from None
    except DAMAGED_IMAGE_ERRORS as err:  # Pillow's decoders raise many types on damaged files
        reason = f"{type(err).__name__}: {err}"
        raise UnreadableFileError(f"cannot read image {path} ({reason}); it may be damaged", path, reason) from None


def none_readable(what: str, skipped: list[tuple[str, str]]) -> DataError:
    """The error for data all of whose files were skipped as unreadable."""
    path, reason = skipped[0]
    return DataError(f"none of the {len(skipped)} files of {what} can be read (the first, {path}: {reason})")


def load_image_folder(root: Path, image_size: tuple[int, int] | None = None, channels: int | None = None,
                      skip_bad_files: bool = False) -> RawData:
    """Every image under ``root`` (recursively), resized to one size; subfolder names become labels.

    With ``skip_bad_files`` images that cannot be read are left out: ``extra["skipped"]`` lists them as
    (path, reason) and ``extra["kept"]`` holds the file numbers of the images read (``extra["files"]`` lists all)."""
    files = list_images(root)
    if not files:
        raise DataError(f"{root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images, kept, skipped = [], [], []
    for position, path in enumerate(files):
        try:
            with open_image(path) as img:
                img.load()
                images.append(img.copy())
        except UnreadableFileError as err:
            if not skip_bad_files:
                raise
            skipped.append((err.path, err.reason))
            continue
        kept.append(position)
    if not images:
        raise none_readable(str(root), skipped)
    channels, (height, width) = choose_image_layout([(img.mode, img.height, img.width) for img in images],
                                                    image_size, channels)
    x = np.empty((len(images), channels, height, width), dtype=np.float32)
    for i, img in enumerate(images):
        x[i] = image_to_array(img, channels, (height, width))
    labels, class_names = folder_labels(root, files)
    extra: dict[str, Any] = {"files": [str(p) for p in files]}
    if skipped:
        kept_positions = np.array(kept, dtype=np.int64)
        labels = None if labels is None else labels[kept_positions]
        extra.update(skipped=skipped, kept=kept_positions, total=len(files))
    return RawData(x=x, y=labels, unit_range=True, class_names=class_names,
                   image_size=(height, width), channels=channels, extra=extra)


def choose_image_layout(headers: list[tuple[str, int, int]], image_size: tuple[int, int] | None,
                        channels: int | None) -> tuple[int, tuple[int, int]]:
    """Channels and (height, width) for images with these (mode, height, width): as asked, else from the images."""
    if channels is None:
        channels = 1 if all(mode in ("1", "L", "LA", "I", "I;16", "F") for mode, _, _ in headers) else 3
    if image_size is None:
        sizes = Counter((h, w) for _, h, w in headers)
        (common, _), = sizes.most_common(1)
        image_size = common if len(sizes) == 1 and max(common) <= DEFAULT_MAX_IMAGE_SIDE else DEFAULT_RESIZED_IMAGE
    return channels, tuple(image_size)


def image_to_array(img, channels: int, size: tuple[int, int]) -> np.ndarray:
    """One PIL image as float32 (channels, height, width) in [0, 1], converted and resized (bilinear) as needed."""
    from PIL import Image

    height, width = size
    img = _to_mode(img, "L" if channels == 1 else "RGB")
    if (img.height, img.width) != (height, width):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def folder_labels(root: Path, files: list[Path]) -> tuple[np.ndarray | None, list[str] | None]:
    """Labels from the first subfolder under ``root`` when every image lies in one and there are several."""
    parents = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "" for p in files]
    class_names = sorted(set(parents))
    if len(class_names) > 1 and "" not in class_names:
        index = {name: i for i, name in enumerate(class_names)}
        return np.array([index[p] for p in parents], dtype=np.int64), class_names
    return None, None


def _to_mode(img, mode: str):
    if img.mode in ("I", "I;16", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I") and arr.max() > 255 else 255.0
        from PIL import Image

        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGBA").convert(mode) if mode == "RGB" else img.convert("RGBA").convert("L")
    return img.convert(mode)


# --- CSV ------------------------------------------------------------------------------------------

def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_csv(path: Path, label_column: str | None = None) -> RawData:
    """A CSV of numeric columns (header optional); ``label_column`` is kept apart as labels."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read CSV file {path}: {err}") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t") if text.strip() else csv.excel
    except csv.Error:
        dialect = csv.excel
    try:
        rows = [row for row in csv.reader(io.StringIO(text), dialect) if any(cell.strip() for cell in row)]
    except csv.Error as err:
        raise DataError(f"cannot read {path} as CSV: {err}") from None
    if not rows:
        raise DataError(f"{path} is empty")
    has_header = not all(_is_number(cell) for cell in rows[0])
    header = [c.strip() for c in rows[0]] if has_header else [f"col{i}" for i in range(len(rows[0]))]
    body = rows[1:] if has_header else rows
    if not body:
        raise DataError(f"{path} has a header but no rows of data")
    label_index = None
    if label_column is not None:
        if label_column in header:
            label_index = header.index(label_column)
        elif label_column.isdigit() and int(label_column) < len(header):
            label_index = int(label_column)
        else:
            raise DataError(f"{path} has no column {label_column!r}; its columns are {', '.join(header)}")
    feature_idx = [i for i in range(len(header)) if i != label_index]
    if not feature_idx:
        raise DataError(f"{path} has no feature columns besides the label column")
    x = np.empty((len(body), len(feature_idx)), dtype=np.float64)
    labels = []
    first_line = 2 if has_header else 1
    for r, row in enumerate(body):
        if len(row) != len(header):
            raise DataError(f"{path}, line {r + first_line}: {len(row)} fields where the header has {len(header)}")
        for j, i in enumerate(feature_idx):
            cell = row[i].strip()
            try:
                x[r, j] = float(cell)
            except ValueError:
                raise DataError(f"{path}, line {r + first_line}, column {header[i]!r}: {cell!r} is not a number; "
                                "vaekit reads numeric columns only (use --label-column for a text label)") from None
        if label_index is not None:
            labels.append(row[label_index].strip())
    y = None
    if label_index is not None:
        y = np.array(labels)
        # Whole numbers become integer labels (those beyond int64 stay text labels).
        if all(_is_number(v) and float(v).is_integer() and abs(float(v)) < 2**63 for v in labels):
            y = np.array([int(float(v)) for v in labels], dtype=np.int64)
    return RawData(x=x.astype(np.float32), y=y, columns=[header[i] for i in feature_idx], standardize=True)


def load_source(source: str, *, data_dir: str | None = None, image_size: tuple[int, int] | None = None,
                channels: int | None = None, label_column: str | None = None,
                skip_bad_files: bool = False) -> RawData:
    """Read a built-in data set by name, or a file or folder by path (``skip_bad_files``: see
    ``load_image_folder``)."""
    builtin = builtin_name(source)
    if builtin == "digits":
        return load_digits_data()
    if builtin == "fashion-mnist":
        return load_fashion_mnist_data(data_dir)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{source!r} is neither a built-in data set ({', '.join(BUILTIN_NAMES)}) nor an existing path")
    if path.is_dir():  # (a folder of .npy shards is read by vaekit.data.streaming.load_shard_folder)
        return load_image_folder(path, image_size=image_size, channels=channels, skip_bad_files=skip_bad_files)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        return load_array_file(path)
    if suffix in (".csv", ".tsv", ".txt"):
        return load_csv(path, label_column=label_column)
    if suffix in IMAGE_SUFFIXES:
        raise DataError(f"{path} is a single image; point vaekit at the folder that holds your images")
    if suffix in (".parquet", ".pq"):
        raise DataError(f"{path} is a table; the run it is read for was trained on numeric arrays, not a table")
    raise DataError(f"{path}: unknown data format {suffix or '(no suffix)'!r}; vaekit reads .npy, .npz, tables "
                    "(.csv, .tsv, .parquet) and folders of images")


def check_finite(x: np.ndarray, name: str) -> None:
    """Refuse NaN or infinite values, saying how many there are and where the first one is."""
    bad = ~np.isfinite(x)
    if bad.any():
        first = np.argwhere(bad)[0]
        raise DataError(f"{name} holds {int(bad.sum())} NaN or infinite value(s), the first in example {first[0]}; "
                        "clean or impute them first")
