"""Pieces the commands share: data options, loading a run and its data, reading and writing outputs.

Like every ``vaekit.cli`` module it imports PyTorch, numpy and the library only inside the functions that use
them, so that building the parsers (``vaekit --help``, argument errors) stays fast; tests/test_startup.py checks.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, DataError
from ..fileio import atomic_open, atomic_write_text

if TYPE_CHECKING:
    import numpy as np

    from ..api import VAE
    from ..data import Dataset

DEVICE_HELP = "cpu, cuda, mps or auto (default auto: a GPU when there is one)"
"""The help of every command's --device option (default auto, resolved by vaekit.training.device.resolve_device)."""


def add_data_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The options that say how to read DATA; returns their group, for a command's own data options."""
    group = parser.add_argument_group("data")
    group.add_argument("--data-dir", metavar="DIR", help="where a built-in data set's files are "
                       "(fashion-mnist: default /usr/share/datasets/fashion-mnist)")
    group.add_argument("--image-size", metavar="HxW", type=parse_image_size,
                       help="resize images to this size, e.g. 28 or 32x48 (default: their own size if they share one)")
    group.add_argument("--channels", type=int, choices=(1, 3), help="image channels: 1 grayscale, 3 RGB (default: from the images)")
    group.add_argument("--label-column", metavar="NAME", help="CSV column holding labels, kept out of the features")
    group.add_argument("--test-fraction", type=float, metavar="F",
                       help="held-out fraction when the data has no split of its own (default 0.1)")
    return group


def parse_image_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("*", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW, got {text!r}") from None
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW with positive numbers, got {text!r}")
    return sizes[0], sizes[1]


def parse_hidden(text: str) -> tuple[int, ...] | None:
    if text == "auto":
        return None
    try:
        sizes = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes such as 512,256, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes such as 512,256, got {text!r}")
    return sizes


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def check_output(path: str, allowed: tuple[str, ...]) -> Path:
    """Refuse an output path whose format is unknown before any work is done."""
    out = Path(path)
    if out.suffix.lower() not in allowed:
        raise ConfigError(f"cannot write {path}: the output must end in {', '.join(allowed)}")
    if out.exists() and out.is_dir():
        raise ConfigError(f"cannot write {path}: it is a directory")
    return out


def load_run(run: str, device: str = "cpu") -> VAE:
    from ..api import load

    return load(run, device=device)


def load_run_data(spec: str, vae: VAE, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray | None, Dataset]:
    """Examples of ``spec`` prepared exactly as the run's training data was, in the data's original units.

    Without a ``:split`` suffix the whole file is used in its own order, or the test split of a built-in set.
    A table's rows come as their encoded values (NaN for missing cells), which the run's estimator takes as they are.
    """
    from ..data import load_dataset, parse_spec, to_original_units

    source, _ = parse_spec(spec)
    dataset = load_dataset(spec, data_dir=data_dir, like=vae.config_.data)
    split = resolved_split(spec, dataset)
    x = dataset.split(split, units="model").numpy()
    if vae.is_table_:
        return x, dataset.labels(split), dataset
    if x.shape[1:] != vae.input_shape_:
        raise DataError(f"{source} has examples of shape {x.shape[1:]} but the model expects {vae.input_shape_}")
    return to_original_units(x, vae.config_.data), dataset.labels(split), dataset


def resolved_split(spec: str, dataset: Dataset) -> str:
    """The split a tool uses for ``spec``: the one named, else all of a file (in its order) or a built-in's test split."""
    from ..data import parse_spec

    split = parse_spec(spec)[1]
    if split is None:
        split = "test" if dataset.order is None else "all"
    return split


def load_run_data_or_own(spec: str | None, vae: VAE, run: str, data_dir: str | None = None,
                         purpose: str = "") -> tuple[np.ndarray, np.ndarray | None, Dataset, str]:
    """``load_run_data`` of ``spec``, or of the run's own data source (its test split: the rows the training held out)
    when ``spec`` is ``None``."""
    if spec is None:
        spec = vae.config_.data.source
        if spec == "array":
            raise DataError(f"{run} was trained from an in-memory array; name the DATA {purpose}".rstrip())
        from ..data import parse_spec
        from ..data.sources import builtin_name

        # A file's or folder's rows default to all of them, most of which trained the model (a built-in's to its test split)
        source, split = parse_spec(spec)
        if split is None and builtin_name(source) is None:
            spec = f"{spec}:test"
    x, labels, dataset = load_run_data(spec, vae, data_dir)
    return x, labels, dataset, spec


def to_images(x: np.ndarray, vae: VAE) -> np.ndarray | None:
    """Examples as (n, c, h, w) images when the model's data are images, else ``None``."""
    return x.reshape(len(x), *vae.input_shape_) if len(vae.input_shape_) == 3 else None


EXAMPLE_FORMATS = (".png", ".npy", ".csv", ".tsv", ".parquet")


def run_labels(vae: VAE, labels, dataset: Dataset, run: str = "the run") -> np.ndarray | None:
    """A conditional run's labels of the examples ``load_run_data`` read (indices into its classes); ``None`` for an
    unconditional run."""
    if not vae.model_.conditional:
        return None
    if labels is None:
        raise DataError(f"{run} is a conditional run, so every example needs its label, and {dataset.name} has none "
                        "(image folders: one subfolder per class; tables: --label-column)")
    from ..data.labels import label_indices

    return label_indices(labels, list(vae.classes_), dataset.class_names)


def write_examples(x, path: Path, vae: VAE, title: str = "", ncols: int | None = None, labels=None) -> None:
    """Write examples as a PNG (image grid, or a heat map for vectors), a .npy array or a CSV table; a table run's
    rows (a DataFrame) as CSV, TSV or Parquet in the table's own form. A conditional run's ``labels`` (class
    indices) go into a first ``label`` column of CSV, TSV and Parquet outputs (the table's own label column)."""
    suffix = path.suffix.lower()
    names = None if labels is None else [str(vae.classes_[int(i)]) for i in labels]
    if names is not None and vae.is_table_ and suffix != ".png":
        x = x.copy()
        x.insert(0, vae.config_.data.label_column or "label", names)
    if vae.is_table_:
        if suffix == ".png":
            from ..plots import save_figure, vectors_figure

            values = table_picture_values(vae.schema_, x)
            fig = vectors_figure(values, title=title, columns=vae.schema_.names)
            fig.axes[-1].set_ylabel("each column on its own scale: sd from the mean (numbers), 0/1 (two values), "
                                    "category number (categories); blank: empty", fontsize=7)
            save_figure(fig, path)
            return
        if suffix not in (".csv", ".tsv", ".parquet"):
            raise DataError(f"{path}: a table run writes rows as .csv, .tsv, .parquet or a .png picture, not {suffix}")
        from ..data.table import write_table as write_frame

        write_frame(x, path)
        return
    if suffix in (".tsv", ".parquet"):
        raise DataError(f"{path}: {suffix} holds tables; this run writes .png, .npy or .csv")
    if suffix == ".npy":
        save_npy(path, x)
    elif suffix == ".csv":
        write_csv(path, x.reshape(len(x), -1), vae.config_.data.columns, labels=names)
    else:
        from ..plots import save_figure, save_image_grid, vectors_figure

        images = to_images(x, vae)
        if images is not None:
            save_image_grid(images, path, ncols=ncols)
        else:
            data = vae.config_.data
            save_figure(vectors_figure(x.reshape(len(x), -1), title=title, columns=data.columns,
                                       center=data.standardize_mean, scale=data.standardize_std), path)


def table_picture_values(schema, frame) -> np.ndarray:
    """A table's rows as one number per cell for a heat map, every column on its own scale: standard deviations
    from the mean for numbers, 0/1 for two-valued columns, the category's number for categories, NaN if empty."""
    import numpy as np

    encoded = schema.encode(frame, where="the rows")
    out = np.full((len(encoded), len(schema.columns)), np.nan)
    for j, (c, at) in enumerate(zip(schema.columns, schema.offsets())):
        block = encoded[:, at:at + c.width]
        present = ~np.isnan(block).any(axis=1)
        out[present, j] = block[present, 0] if c.kind != "categorical" else block[present].argmax(axis=1)
    return out


def save_npy(path: Path, array: np.ndarray) -> None:
    import numpy as np

    with atomic_open(path, "wb") as fh:
        np.save(fh, array)


def write_csv(path: Path, rows: np.ndarray, columns: list[str] | None = None, prefix: str = "x",
              labels: list[str] | None = None) -> None:
    """Rows of numbers as CSV (7 significant digits), optionally after a first ``label`` column of names."""
    columns = columns if columns is not None and len(columns) == rows.shape[1] else [f"{prefix}{i}" for i in range(rows.shape[1])]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow((["label"] if labels is not None else []) + list(columns))
    if labels is None:
        writer.writerows([[f"{v:.7g}" for v in row] for row in rows])
    else:
        writer.writerows([[name] + [f"{v:.7g}" for v in row] for name, row in zip(labels, rows)])
    atomic_write_text(path, buffer.getvalue())


def write_table(path: Path, columns: dict[str, np.ndarray]) -> None:
    """A CSV file with one named column per array (integers as such, other numbers to 10 significant digits)."""
    import numpy as np

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")  # LF, as Unix tools expect
    writer.writerow(list(columns))
    arrays = [np.asarray(v) for v in columns.values()]
    formats = ["{:d}" if a.dtype.kind in "iu" else "{:.10g}" for a in arrays]
    for row in zip(*arrays):
        writer.writerow([f.format(v.item()) for f, v in zip(formats, row)])
    atomic_write_text(path, buffer.getvalue())


def read_latents(path: str, latent_dim: int) -> np.ndarray:
    """Latent vectors from .npy, .npz (key 'mean' or 'z', or its only array) or .csv (header optional)."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            z = np.load(p, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as archive:
                key = next((k for k in ("mean", "z", "latents") if k in archive.files), None)
                if key is None and len(archive.files) == 1:
                    key = archive.files[0]
                if key is None:
                    raise DataError(f"{path} holds {archive.files}; name the latent vectors 'z' or 'mean'")
                z = archive[key]
        elif suffix == ".csv":
            text = p.read_text(encoding="utf-8")
            rows = [r for r in csv.reader(io.StringIO(text)) if r]
            if rows and not all(_is_float(c) for c in rows[0]):
                rows = rows[1:]
            z = np.array([[float(c) for c in r] for r in rows], dtype=np.float32)
        else:
            raise DataError(f"cannot read latents from {path}: use .npy, .npz or .csv")
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"cannot read latents from {path}: {err}") from None
    z = np.asarray(z)
    if z.dtype.kind not in "iuf":
        raise DataError(f"{path} holds {z.dtype} values; latent vectors must be numbers")
    if z.ndim == 1 and z.size == latent_dim:
        z = z[None]
    if z.ndim != 2 or z.shape[1] != latent_dim:
        raise DataError(f"{path} holds an array of shape {z.shape}; the model needs latent vectors of shape (n, {latent_dim})")
    if not np.isfinite(z).all():
        raise DataError(f"{path} holds NaN or infinite values")
    return z.astype(np.float32)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
