"""Mixed tables: column types inferred from the data, rows encoded for the model and decoded back.

A ``TableSchema`` describes every column a model sees, in the table's own order:

    continuous   real numbers, standardized; a Gaussian per value (mean and variance from the decoder)
    integer      whole numbers with many values (counts, ages); a discretized Gaussian on the observed range
    boolean      exactly two values (yes/no, True/False, 0/1, ...), written back as they were; a Bernoulli
    categorical  text, or numbers with few distinct values; a softmax over the categories

and the columns left out (ID-like keys, free text, empty columns), each with the reason. A row is
encoded as float32 values, one per continuous, integer or boolean column and one per category (one-hot);
a missing cell is NaN in every value of its column, which the model masks (``models.likelihoods.TableLikelihood``).
The schema is saved in the run's config (``DataConfig.table``) so that later data is encoded the same way.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

KINDS = ("continuous", "integer", "boolean", "categorical")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")
# Numbers with at most this many distinct values (and at least 5 rows per value) are categories.
MAX_NUMERIC_CATEGORIES = 10
# Text columns with more distinct values than this are left out as free text (unless named with --categorical).
MAX_TEXT_CATEGORIES = 200
MIN_ROWS_FOR_ID = 20
_ID_NAME = re.compile(r"(^|[_\s.])(id|key|index|rownames?|uuid)$", re.IGNORECASE)
# Share of a text column's cells that parse as numbers above which the others are taken for typos, not labels.
MIXED_NUMERIC_SHARE = 0.9
# Numbers beyond this magnitude are refused: standardizing them ((x - mean) / sd) would overflow float64.
MAX_MAGNITUDE = 1e300


def _pandas():
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        raise DataError("reading tables needs pandas: pip install pandas") from None
    return pd


@dataclass
class Column:
    """One modelled column: its kind, how it is scaled or which labels it has, and how to write it back."""

    name: str
    kind: str
    dtype: str = "float"  # how values are written back: float, int, bool or str
    mean: float = 0.0  # continuous / integer: standardization
    std: float = 1.0
    low: float | None = None  # integer: the observed range (samples stay in it)
    high: float | None = None
    categories: list = field(default_factory=list)  # boolean (2) / categorical labels, in encoding order
    missing_rate: float = 0.0  # share of missing cells in the training rows
    decimals: int | None = None  # continuous: the decimal places the values are written with (None: as computed)

    @property
    def width(self) -> int:
        return len(self.categories) if self.kind == "categorical" else 1

    @property
    def models_missing(self) -> bool:
        return self.missing_rate > 0

    def describe(self) -> str:
        if self.kind in ("continuous", "integer"):
            span = f"{_fmt(self.low)}..{_fmt(self.high)}" if self.kind == "integer" else f"mean {_fmt(self.mean)}, sd {_fmt(self.std)}"
            text = f"{self.kind} ({span})"
        elif self.kind == "boolean":
            text = f"boolean ({' / '.join(map(str, self.categories))})"
        else:
            shown = ", ".join(map(str, self.categories[:5])) + (", ..." if len(self.categories) > 5 else "")
            text = f"categorical, {len(self.categories)} categories ({shown})"
        return text + (f", {self.missing_rate:.1%} missing" if self.missing_rate else "")


def _fmt(v: float | None) -> str:
    return "?" if v is None else f"{v:.4g}"


def _key(value: Any) -> str:
    """A label's identity whatever form a reader gave it: 3, 3.0 and '3' are one label; 'True' and True too."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    text = str(value).strip()
    number = _as_number(text)
    if number is not None and text.lower() not in ("nan", "inf", "-inf", "infinity"):
        return _key(number)
    return text


def _keys(values) -> list[str]:
    """``_key`` of every value, computed once per distinct value and type (a column holds few labels in many rows)."""
    seen: dict[tuple[type, Any], str] = {}
    keys = []
    for value in values:
        try:
            key = seen[type(value), value]
        except KeyError:
            key = seen[type(value), value] = _key(value)
        except TypeError:  # an unhashable value
            key = _key(value)
        keys.append(key)
    return keys


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _plain(value: Any) -> Any:
    """A label as a JSON value (numpy scalars become Python ones)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class TableSchema:
    """The modelled columns in order, the ones left out (name -> reason), and the label column if any."""

    columns: list[Column]
    dropped: dict[str, str] = field(default_factory=dict)
    label_column: str | None = None
    header: list[str] = field(default_factory=list)  # the source's header, in its order

    @property
    def width(self) -> int:
        return sum(c.width for c in self.columns)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def offsets(self) -> list[int]:
        out, at = [], 0
        for c in self.columns:
            out.append(at)
            at += c.width
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"columns": [asdict(c) for c in self.columns], "dropped": dict(self.dropped),
                "label_column": self.label_column, "header": list(self.header)}

    @classmethod
    def from_dict(cls, raw: Any) -> "TableSchema":
        from ..errors import ConfigError

        try:
            columns = [Column(**{k: v for k, v in c.items()}) for c in raw["columns"]]
            schema = cls(columns=columns, dropped=dict(raw.get("dropped", {})), label_column=raw.get("label_column"),
                         header=list(raw.get("header", [])))
        except (KeyError, TypeError, AttributeError) as err:
            raise ConfigError(f"the table description in the run's config is damaged ({type(err).__name__}: {err})") from None
        for c in schema.columns:
            if c.kind not in KINDS or (c.kind in ("boolean", "categorical") and not c.categories) or \
                    (c.kind == "boolean" and len(c.categories) != 2) or not (c.std > 0 and math.isfinite(c.std)):
                raise ConfigError(f"the table description in the run's config is damaged (column {c.name!r})")
        return schema

    def model_columns(self) -> list[dict[str, Any]]:
        """What the likelihood needs per column (``ModelConfig.table_columns``): kind, width, whether missingness
        is modelled, and for continuous/integer columns the scale (original units) and integer range."""
        out = []
        for c in self.columns:
            entry: dict[str, Any] = {"kind": c.kind, "width": c.width, "missing": c.models_missing}
            if c.kind in ("continuous", "integer"):
                entry["std"] = c.std
            if c.kind == "integer":
                entry.update(mean=c.mean, low=c.low, high=c.high)
            out.append(entry)
        return out

    def describe(self) -> list[str]:
        lines = [f"  {c.name}: {c.describe()}" for c in self.columns]
        lines += [f"  {name}: left out ({why})" for name, why in self.dropped.items()]
        return lines

    # --- rows <-> model values --------------------------------------------------------------------
    def encode(self, frame, where: str = "the table") -> np.ndarray:
        """Rows of ``frame`` (a DataFrame with at least the modelled columns) as float32 model values, NaN for
        missing cells. Unknown categories and missing columns are ``DataError``s naming them."""
        pd = _pandas()
        frame = named_columns(frame, where)
        absent = [c.name for c in self.columns if c.name not in frame.columns]
        if absent:
            raise DataError(f"{where} has no column(s) {', '.join(map(repr, absent))}, which the model was trained on; "
                            f"its columns are {', '.join(map(str, frame.columns))}")
        out = np.full((len(frame), self.width), np.nan, dtype=np.float32)
        for c, at in zip(self.columns, self.offsets()):
            values = frame[c.name]
            present = ~pd.isna(values).to_numpy()
            if c.kind in ("continuous", "integer"):
                numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
                bad = present & ~np.isfinite(numbers)
                if bad.any():
                    row = int(np.argmax(bad))
                    raise DataError(f"{where}, row {row}, column {c.name!r}: {values.iloc[row]!r} is not a number "
                                    f"(the column is {c.kind})")
                with np.errstate(over="ignore", invalid="ignore"):
                    scaled = ((numbers[present] - c.mean) / c.std).astype(np.float32)
                if not np.isfinite(scaled).all():  # beyond float32 in standard deviations: the model cannot take it
                    row = int(np.flatnonzero(present)[np.argmax(~np.isfinite(scaled))])
                    raise DataError(f"{where}, row {row}, column {c.name!r}: {values.iloc[row]!r} lies too far from the "
                                    f"training values (mean {c.mean:.4g}, sd {c.std:.4g}) to be modelled")
                out[present, at] = scaled
                continue
            index = {_key(v): i for i, v in enumerate(c.categories)}
            codes = np.full(len(frame), -1, dtype=np.int64)
            cells = values.to_numpy(dtype=object)
            rows = np.flatnonzero(present)
            for row, key in zip(rows, _keys(cells[rows])):
                code = index.get(key)
                if code is None:
                    cell = cells[row]
                    shown = ", ".join(map(str, c.categories[:10])) + (", ..." if len(c.categories) > 10 else "")
                    raise DataError(f"{where}, row {row}, column {c.name!r}: {cell!r} is a category the "
                                    f"model never saw in training (it knows {shown})")
                codes[row] = code
            if c.kind == "boolean":
                out[present, at] = codes[present].astype(np.float32)
            else:
                block = np.zeros((int(present.sum()), c.width), dtype=np.float32)
                block[np.arange(len(block)), codes[present]] = 1.0
                out[present, at:at + c.width] = block
        return out

    def decode(self, values: np.ndarray):
        """Model values (n, width) (means or draws; NaN for missing cells) as a DataFrame in the table's own form:
        categories as their labels (the most probable one for means), integers rounded into the observed range,
        booleans as they were written, empty cells where the values are NaN."""
        pd = _pandas()
        values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        if values.shape[1] != self.width:
            raise DataError(f"the values have {values.shape[1]} entries per row but this table encodes to {self.width}")
        data = {}
        for c, at in zip(self.columns, self.offsets()):
            block = values[:, at:at + c.width]
            missing = np.isnan(block).any(axis=1)
            if c.kind in ("continuous", "integer"):
                col = block[:, 0] * c.std + c.mean
                if c.kind == "integer":
                    col = np.clip(np.rint(col), c.low, c.high)
                    data[c.name] = pd.array([None if m else int(v) for v, m in zip(col, missing)], dtype="Int64") \
                        if missing.any() else col.astype(np.int64)
                else:
                    if c.decimals is not None:  # written as the table writes them (0.1 mm, cents, ...)
                        col = np.round(col, c.decimals)
                    data[c.name] = np.where(missing, np.nan, col)
                continue
            if c.kind == "boolean":
                codes = (np.nan_to_num(block[:, 0]) >= 0.5).astype(np.int64)
            else:
                codes = np.nan_to_num(block, nan=-1.0).argmax(axis=1)
            labels = [None if m else c.categories[k] for k, m in zip(codes, missing)]
            data[c.name] = pd.Series(labels, dtype=_pandas_dtype(c, missing.any()))
        return pd.DataFrame(data)


def _pandas_dtype(c: Column, has_missing: bool) -> Any:
    if c.dtype == "bool":
        return "boolean" if has_missing else bool
    if c.dtype == "int":
        return "Int64" if has_missing else np.int64
    if c.dtype == "float":
        return np.float64
    return object


def named_columns(frame, where: str = "the table"):
    """``frame`` with its column names as text (a DataFrame's columns 0, 1, ... become '0', '1', ..., as read_table
    names a file's); several columns of one name are a ``DataError`` (a DataFrame or a Parquet file can have them)."""
    names = [str(c) for c in frame.columns]
    duplicated = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicated:
        raise DataError(f"{where} has several columns called {', '.join(map(repr, duplicated))}; "
                        "give each column its own name")
    if not all(isinstance(c, str) for c in frame.columns):
        frame = frame.set_axis(names, axis=1)
    return frame


# --- reading ------------------------------------------------------------------------------------

def read_table(path: str | Path):
    """A CSV/TSV/TXT (delimiter sniffed, header optional) or Parquet file as a DataFrame; every failure a DataError."""
    pd = _pandas()
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise DataError(f"reading {path} needs pyarrow: pip install 'vaekit[parquet]' (or pip install pyarrow)") from None
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises many types (ArrowInvalid, OSError, ...) on a file that is not Parquet
            raise DataError(f"cannot read {path} as Parquet ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
        if frame.empty and not len(frame.columns):
            raise DataError(f"{path} holds no columns")
        frame.columns = [str(c) for c in frame.columns]
        return frame
    try:  # read once: the sniffer, pandas and the field-count check all read this text
        with open(path, newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read table file {path}: {err}") from None
    if not text.strip():
        raise DataError(f"{path} is empty")
    try:
        delimiter = csv.Sniffer().sniff(text[:4096], delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = "\t" if suffix == ".tsv" else ","
    first = next(csv.reader([text.splitlines()[0]], delimiter=delimiter), [])
    has_header = not all(_as_number(cell) is not None for cell in first if cell.strip()) or not any(c.strip() for c in first)
    try:
        frame = pd.read_csv(io.StringIO(text), sep=delimiter, header=0 if has_header else None, skipinitialspace=True,
                            skip_blank_lines=True, low_memory=False)
    except (pd.errors.ParserError, ValueError, OSError) as err:  # EmptyDataError is a ValueError
        raise DataError(f"cannot read {path} as a table: {str(err).strip().splitlines()[-1]}") from None
    _check_field_counts(path, text, delimiter, frame.shape[1], has_header)
    if not has_header:
        frame.columns = [f"col{i}" for i in range(frame.shape[1])]
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame) == 0:
        raise DataError(f"{path} has a header but no rows of data")
    duplicated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if duplicated:
        raise DataError(f"{path} has several columns called {', '.join(map(repr, duplicated))}; give each column its own name")
    for name in frame.columns:  # text cells: surrounding spaces are not part of a label
        if not pd.api.types.is_numeric_dtype(frame[name].dtype) and not pd.api.types.is_bool_dtype(frame[name].dtype):
            frame[name] = frame[name].map(lambda v: v.strip() if isinstance(v, str) else v).replace("", np.nan)
    return frame


def _check_field_counts(path: Path, text: str, delimiter: str, width: int, has_header: bool) -> None:
    """Refuse a row with fewer or more fields than the header (a damaged or hand-edited file), naming its line;
    pandas would fill a short row with empty cells without a word."""
    # newline="": the csv module splits lines itself, so a file with old Mac line ends (CR only) reads as pandas reads it
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=True)
    try:
        for number, row in enumerate(rows, start=1):
            if row and any(cell.strip() for cell in row) and len(row) != width:
                what = "the header has" if has_header else "the first row has"
                raise DataError(f"{path}, line {number}: {len(row)} fields where {what} {width}")
    except csv.Error as err:  # a field over the csv module's size limit, a stray line end inside a field
        raise DataError(f"cannot read {path} as a table: {err}") from None


# --- inference ------------------------------------------------------------------------------------

def infer_schema(frame, *, label_column: str | None = None, categorical: list[str] | None = None,
                 continuous: list[str] | None = None, drop: list[str] | None = None,
                 where: str = "the table") -> TableSchema:
    """Column kinds from the values (see the module docstring), with the user's overrides; raises ``DataError``
    for a column that cannot be modelled as asked (text named --continuous) or mixes numbers and text."""
    pd = _pandas()
    frame = named_columns(frame, where)
    header = list(frame.columns)
    categorical, continuous, drop = list(categorical or []), list(continuous or []), list(drop or [])
    for names, option in ((categorical, "--categorical"), (continuous, "--continuous"), (drop, "--drop-columns")):
        unknown = [n for n in names if n not in header]
        if unknown:
            raise DataError(f"{option}: {where} has no column(s) {', '.join(map(repr, unknown))}; "
                            f"its columns are {', '.join(header)}")
    both = set(categorical) & set(continuous)
    if both:
        raise DataError(f"column(s) {', '.join(map(repr, sorted(both)))} named both --categorical and --continuous")
    if label_column is not None and label_column not in header:
        raise DataError(f"{where} has no column {label_column!r}; its columns are {', '.join(header)}")
    columns, dropped = [], {}
    n = len(frame)
    for name in header:
        if name == label_column:
            continue
        if name in drop:
            dropped[name] = "--drop-columns"
            continue
        series = frame[name]
        present = series[~pd.isna(series)]
        missing_rate = 1.0 - len(present) / max(n, 1)
        if len(present) == 0:
            dropped[name] = "empty in every row"
            continue
        column, reason = _infer_column(name, series, present, n, force_categorical=name in categorical,
                                       force_continuous=name in continuous, where=where)
        if column is None:
            dropped[name] = reason
            continue
        column.missing_rate = float(missing_rate)
        columns.append(column)
    if not columns:
        raise DataError(f"{where} has no column vaekit can model (left out: "
                        + "; ".join(f"{k}: {v}" for k, v in dropped.items()) + ")")
    return TableSchema(columns=columns, dropped=dropped, label_column=label_column, header=header)


def _numeric_values(present) -> tuple[np.ndarray | None, float]:
    """The values as float64 when they are numbers (or text that parses as numbers), and the share that parse."""
    pd = _pandas()
    if present.dtype == bool or str(present.dtype) == "boolean":
        return None, 0.0
    if pd.api.types.is_numeric_dtype(present.dtype):
        return present.to_numpy(dtype=np.float64), 1.0
    # str() per value, as _key reads labels: astype(str) would decode bytes (a Parquet binary column) as UTF-8 and fail
    parsed = pd.to_numeric(present.map(str), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    share = float(np.isfinite(parsed).mean())
    return (parsed if share == 1.0 else None), share


def _infer_column(name: str, series, present, n: int, *, force_categorical: bool, force_continuous: bool,
                  where: str) -> tuple[Column | None, str]:
    numbers, share = _numeric_values(present)
    is_bool = present.dtype == bool or str(present.dtype) == "boolean"
    if numbers is not None and not np.isfinite(numbers).all():
        raise DataError(f"{where}, column {name!r} holds infinite values; clean them first")
    if numbers is not None and len(numbers) and float(np.abs(numbers).max()) > MAX_MAGNITUDE:
        raise DataError(f"{where}, column {name!r} holds values as large as {float(np.abs(numbers).max()):.3g}, too near "
                        f"float64's limit to standardize (differences overflow); rescale the column first")
    if numbers is None and not is_bool and share >= MIXED_NUMERIC_SHARE and not force_categorical:
        # the first cell that is not a number as _numeric_values parsed it (float() also takes "1_000", pandas not)
        parsed = _pandas().to_numeric(present.map(str), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        row = present.index[int(np.argmax(~np.isfinite(parsed)))]
        raise DataError(f"{where}, column {name!r} mixes numbers and text: {series.loc[row]!r} in row {row} among "
                        f"{share:.0%} numbers; fix the cell, or name the column with --categorical {name}")
    if force_continuous:
        if numbers is None:
            raise DataError(f"--continuous {name}: the column holds text (e.g. {present.iloc[0]!r}), not numbers")
        return Column(name=name, kind="continuous", dtype="float", mean=_mean(numbers),
                      std=_scale(numbers)), ""
    k = len(set(_keys(present)))
    if is_bool or numbers is None:
        dtype = "bool" if is_bool else "str"
        if force_categorical or k <= 2:
            return _labelled(name, present, "boolean" if k == 2 and not force_categorical else "categorical", dtype), ""
        if k == len(present) and len(present) >= MIN_ROWS_FOR_ID:
            return None, "ID-like: a different text in every row"
        if k > MAX_TEXT_CATEGORIES:
            return None, (f"free text: {k} distinct values, more than {MAX_TEXT_CATEGORIES} categories "
                          f"(name it with --categorical {name} to model it anyway)")
        return _labelled(name, present, "categorical", dtype), ""
    # Whole numbers beyond 2**53 are not exact in float64 (nor all of them in int64): they are modelled as reals.
    whole = bool(np.all(numbers == np.rint(numbers))) and float(np.abs(numbers).max()) < 2.0**53
    dtype = "int" if whole else "float"
    if force_categorical:
        return _labelled(name, present, "categorical", dtype), ""
    if k <= 2:
        return _labelled(name, present, "boolean" if k == 2 else "categorical", dtype), ""
    if whole and k == len(present) and len(present) >= MIN_ROWS_FOR_ID:
        diffs = np.diff(numbers)
        if _ID_NAME.search(name) or (diffs == 1).all() or (diffs == -1).all():
            return None, "ID-like: a different whole number in every row, counting rows or named like a key"
    if k <= MAX_NUMERIC_CATEGORIES and len(present) >= 5 * k:
        return _labelled(name, present, "categorical", dtype), ""
    if whole:
        return Column(name=name, kind="integer", dtype="int", mean=_mean(numbers), std=_scale(numbers),
                      low=float(numbers.min()), high=float(numbers.max())), ""
    return Column(name=name, kind="continuous", dtype="float", mean=_mean(numbers), std=_scale(numbers),
                  decimals=_decimals(numbers)), ""


MAX_DECIMALS = 6


def _decimals(numbers: np.ndarray) -> int | None:
    """The fewest decimal places (at most 6) that write every value exactly, or None when more are needed."""
    for d in range(MAX_DECIMALS + 1):
        scaled = numbers * 10.0**d
        if np.all(np.abs(scaled - np.rint(scaled)) <= 1e-9 * np.maximum(1.0, np.abs(scaled))):
            return d
    return None


def _mean(numbers: np.ndarray) -> float:
    """The mean, also of values near float64's limit (whose plain sum overflows to inf)."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean = float(numbers.mean())
    if not math.isfinite(mean):
        top = float(np.abs(numbers).max())
        mean = float((numbers / top).mean() * top)
    return mean


def _scale(numbers: np.ndarray) -> float:
    with np.errstate(over="ignore", invalid="ignore"):
        std = float(numbers.std())
    if not math.isfinite(std):  # squares of values beyond 1e154 overflow; the scaled values' spread does not
        top = float(np.abs(numbers).max())
        std = float((numbers / top).std() * top)
    return std if std > 1e-12 else 1.0


def _labelled(name: str, present, kind: str, dtype: str) -> Column:
    """A boolean or categorical column whose labels are the distinct values, sorted (numbers by value)."""
    first: dict[str, Any] = {}
    for key, v in zip(_keys(present), present):
        first.setdefault(key, v)
    if dtype in ("int", "float"):
        labels = sorted((float(v) for v in first.values()))
        labels = [int(v) if dtype == "int" else v for v in labels]
    elif dtype == "bool":
        labels = sorted(bool(v) for v in first.values())
    else:
        labels = sorted((str(v) for v in first.values()), key=lambda s: (s.lower(), s))
    return Column(name=name, kind=kind, dtype=dtype, categories=[_plain(v) for v in labels])


def write_table(frame, path: str | Path) -> None:
    """Write ``frame`` as CSV (LF line ends, empty cells for missing values) or Parquet, by the suffix."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise DataError(f"writing {path} needs pyarrow: pip install 'vaekit[parquet]'") from None
        from ..fileio import atomic_open

        with atomic_open(path, "wb") as fh:
            frame.to_parquet(fh, index=False)
        return
    from ..fileio import atomic_write_text

    atomic_write_text(path, frame.to_csv(index=False, sep="\t" if path.suffix.lower() == ".tsv" else ",",
                                         lineterminator="\n"))


def is_frame(x: Any) -> bool:
    """Whether ``x`` is a pandas DataFrame (without importing pandas when it is not loaded)."""
    import sys

    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(x, pd.DataFrame)
