"""Fuzzing the input paths added since tests/test_bad_input.py: mixed tables, run-directory state, the HTTP API.

Three groups of Hypothesis properties, each feeding generated input to the entry point a user reaches:

- **mixed tables**: CSV/TSV/TXT text with random mixes of numbers, text, empty cells, quotes, ragged rows, odd
  delimiters, line ends, encodings and BOMs; Parquet files with random column types (ints, nullable ints,
  floats with NaN/inf, strings, bools, nulls, dates, categories, mixed objects); DataFrames given to
  ``VAE(...).fit`` on a tiny budget. Read through ``read_table``, ``vaekit.load_dataset`` and ``VAE.fit``.
- **run-directory state**: the anomaly detector (``anomaly_detector.json``, ``typicality.json``), the ex-post
  sampler (``sampler_gmm.json`` + ``sampler_gmm.safetensors``), the checkpoint pointer and its ``state.json``,
  ``config.json`` and the weights, mutated (truncated, bytes flipped, junk appended, JSON values and types
  changed, keys dropped, a pickle put in place, deleted, swapped with another run's file) and loaded with
  ``vaekit.load``, ``AnomalyDetector.load``, ``generation.load_sampler``, ``checkpoint.load_checkpoint`` and
  the service's ``Explorer.from_run``.
- **the service**: schemathesis generates requests from the app's own OpenAPI schema (valid and invalid ones)
  and sends them in-process to the FastAPI app over a tiny model, as http://127.0.0.1 (the Host the access
  guard accepts).

The property everywhere: the input loads (and what loaded is valid), or a ``vaekit.VaekitError`` with a
message comes back; never another exception type, never a hang (``HANG_SECONDS`` per example), never a
temporary file (``.NAME.*.tmp``, see ``vaekit.fileio``) left behind, never a file unpickled, and a reader
never changes the files it reads. The service never answers 5xx, and its answers conform to its schema.

Every example is counted per input path and printed at the end (``pytest -s`` shows the table).
``VAEKIT_FUZZ_EXAMPLES=N`` runs every property with N fresh random examples; ``VAEKIT_FUZZ_COLLECT=1``
records failures instead of stopping at the first; ``VAEKIT_FUZZ_REPORT=PATH`` writes counts and failures as
JSON. ``benchmarks/fuzz.py`` sets all three.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vaekit
from vaekit import VaekitError
from vaekit.anomaly import AnomalyDetector
from vaekit.data.table import TableSchema, read_table, write_table
from vaekit.generation import fit_sampler, load_sampler, save_sampler
from vaekit.training import checkpoint as ckpt
from test_bad_input import damaged as bad_input_damaged  # tests/ is on sys.path (pytest's prepend import mode)

pd = pytest.importorskip("pandas")

EXAMPLES = int(os.environ.get("VAEKIT_FUZZ_EXAMPLES", "0") or 0)
COLLECT = os.environ.get("VAEKIT_FUZZ_COLLECT") == "1"
HANG_SECONDS = float(os.environ.get("VAEKIT_FUZZ_HANG_SECONDS", "60"))
COUNTS: dict[str, Counter] = defaultdict(Counter)  # per path: generated inputs, by outcome
FAILED: Counter = Counter()  # per path: broken properties
FAILURES: list[dict] = []
STARTED = time.perf_counter()


def budget(default: int, scale: float = 1.0):
    """``default`` examples, the same every run (CI stays deterministic); in a fuzz run ``EXAMPLES * scale``
    fresh random ones. No deadline: the machine is shared; hangs are caught by ``HANG_SECONDS`` instead."""
    return settings(max_examples=max(1, int(EXAMPLES * scale)) if EXAMPLES else default, deadline=None,
                    database=None, derandomize=not EXAMPLES,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    rows = {name: {"inputs": sum(c.values()), "failures": FAILED[name], "outcomes": dict(sorted(c.items()))}
            for name, c in sorted(COUNTS.items())}
    width = max((len(n) for n in rows), default=10)
    print(f"\n\nvaekit fuzzing: generated inputs per path, {sum(r['inputs'] for r in rows.values())} in all, "
          f"{sum(FAILED.values())} failures ({time.perf_counter() - STARTED:.1f} s)")
    for name, row in rows.items():
        rest = ", ".join(f"{k} {v}" for k, v in row["outcomes"].items())
        print(f"  {name:<{width}}  {row['inputs']:>6}  failures {row['failures']}  ({rest})")
    path = os.environ.get("VAEKIT_FUZZ_REPORT")
    if path:
        Path(path).write_text(json.dumps({"examples_per_property": EXAMPLES or None, "seconds": time.perf_counter() - STARTED,
                                          "paths": rows, "failures": FAILURES}, indent=2, default=str) + "\n")


class Hang(BaseException):
    """An example ran past HANG_SECONDS (a BaseException: no ``except Exception`` in the library swallows it)."""


class PropertyFailed(AssertionError):
    """A property of this file broke (raised by ``fail``; ``outcome`` lets it through untouched)."""


class Unpickled(BaseException):
    """Something called a pickle loader while a file from a run directory was read."""


@contextlib.contextmanager
def time_limit(seconds: float):
    if not hasattr(signal, "setitimer") or os.name != "posix":  # pragma: no cover - not on the CI machines
        yield
        return

    def expire(signum, frame):
        raise Hang(f"no answer within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fail(path: str, problem: str, err: BaseException | None = None, detail: str = "") -> None:
    """A broken property: raised at once, or recorded (``VAEKIT_FUZZ_COLLECT=1``) and the run goes on."""
    FAILED[path] += 1
    if not COLLECT:
        raise PropertyFailed(f"{path}: {problem}{' ' + detail if detail else ''}") from err
    where = "".join(traceback.format_tb(err.__traceback__)[-2:]) if err is not None else ""
    FAILURES.append({"path": path, "problem": problem, "detail": detail[:2000], "where": where[-2000:]})


def outcome(path: str, call, *, counted: bool = True):
    """Run ``call``; count and return its result, or count a VaekitError (which must have a message) and return
    None. Any other exception, a hang or an unpickling breaks the property."""
    try:
        with time_limit(HANG_SECONDS):
            result = call()
    except VaekitError as err:
        if not str(err).strip():
            fail(path, f"{type(err).__name__} without a message", err)
            return None
        COUNTS[path][type(err).__name__] += counted
        return None
    except PropertyFailed:
        raise
    except (Hang, Unpickled) as err:
        COUNTS[path][type(err).__name__] += counted
        fail(path, f"{type(err).__name__}: {err}", err)
        return None
    except Exception as err:  # noqa: BLE001 - that is what the property is about
        COUNTS[path][f"unexpected {type(err).__name__}"] += counted
        fail(path, f"{type(err).__name__} is not a VaekitError: {err}", err)
        return None
    COUNTS[path]["loaded"] += counted
    return result


def check(path: str, condition: bool, problem: str) -> None:
    """A loaded result must be valid: a broken condition is a failure of ``path``."""
    if not condition:
        fail(path, problem)


def temp_leftovers(directory: Path) -> list[str]:
    """Temporary files an interrupted atomic write would leave (``fileio.atomic_open``: ``.NAME.*.tmp``)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob(".*.tmp"))


def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@st.composite
def damaged(draw, data: bytes, how: str | None = None) -> bytes:
    """test_bad_input's damage, intact three times as often as each kind of damage."""
    return draw(bad_input_damaged(data, how, intact=3))


# =====================================================================================================
# Mixed tables
# =====================================================================================================

INTS = st.one_of(st.integers(-1000, 1000), st.integers(-10**30, 10**30)).map(str)
FLOATS = st.one_of(st.floats(-1e4, 1e4).map(lambda v: f"{v:.3f}"), st.floats(allow_nan=False, allow_infinity=False).map(repr))
SPECIALS = st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e-400", "NA", "N/A", "null",
                            "None", "#N/A", "", " ", "-", "0x1F", "1_000", "1,5", "١٢", "\u00a0", "+5", ".5", "5."])
BOOLS = st.sampled_from(["true", "false", "True", "FALSE", "yes", "no", "0", "1", "t", "f"])
CATEGORIES = st.sampled_from(["red", "green", "blue", "Ünïcode", "a b", " padded ", "é", "NULL", "true"])
TEXT = st.text(max_size=8)  # anything: quotes, delimiters, newlines, surrogate-free unicode
DATES = st.one_of(st.dates(dt.date(1900, 1, 1), dt.date(2100, 1, 1)).map(str),
                  st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2100, 1, 1)).map(lambda d: d.isoformat()))
CELL_KINDS = {"int": INTS, "float": FLOATS, "bool": BOOLS, "category": CATEGORIES, "text": TEXT, "date": DATES,
              "special": SPECIALS}
NOISE = st.one_of(SPECIALS, TEXT, INTS, st.just(""))
HEADER_NAMES = st.one_of(st.sampled_from(["x", "y", "label", "id", "ID", "key", "a b", " padded", "", "0", "1.5",
                                          "col0", "Unnamed: 0", "é", "x"]), st.text(max_size=5))


def quote(cell: str, delimiter: str, quote_all: bool) -> str:
    if quote_all or any(c in cell for c in (delimiter, '"', "\n", "\r")):
        return '"' + cell.replace('"', '""') + '"'
    return cell


@st.composite
def table_text(draw) -> tuple[str, list[str]]:
    """CSV-like text: typed columns with noise, an optional header, then damage (ragged rows, blank lines, stray
    quotes). Returns the text and the header names (for the column options)."""
    width, rows = draw(st.integers(1, 5)), draw(st.integers(0, 25))
    kinds = draw(st.lists(st.sampled_from(sorted(CELL_KINDS)), min_size=width, max_size=width))
    noise = draw(st.sampled_from([0.0, 0.0, 0.1, 0.5]))
    columns = []
    for kind in kinds:
        cells = draw(st.lists(st.one_of(CELL_KINDS[kind], NOISE) if noise else CELL_KINDS[kind],
                              min_size=rows, max_size=rows))
        if noise and noise < 0.5:  # a few noisy cells, not half of them
            cells = [c if i % 10 else draw(NOISE) for i, c in enumerate(cells)]
        columns.append(cells)
    header = draw(st.lists(HEADER_NAMES, min_size=width, max_size=width))
    body = [list(r) for r in zip(*columns)] if rows else []
    if draw(st.booleans()):
        body.insert(0, header)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # ragged rows
        if body:
            row = body[draw(st.integers(0, len(body) - 1))]
            if row and draw(st.booleans()):
                row.pop()
            else:
                row.append(draw(NOISE))
    delimiter = draw(st.sampled_from([",", ",", ";", "\t", "|", " "]))
    quote_all = draw(st.booleans())
    newline = draw(st.sampled_from(["\n", "\n", "\r\n", "\r"]))
    lines = [delimiter.join(quote(c, delimiter, quote_all) for c in row) for row in body]
    if lines and draw(st.integers(0, 5)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["", "   ", delimiter * width, '"', "#"])))
    text = newline.join(lines) + draw(st.sampled_from(["", newline, newline * 2]))
    return text, header


def encode_text(text: str, encoding: str, bom: bool) -> bytes:
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        data = text.encode("utf-8", errors="surrogatepass")
    return (b"\xef\xbb\xbf" + data) if bom and encoding == "utf-8" else data


def column_options(names: list[str]):
    choice = st.sampled_from([*names, "nope"]) if names else st.just("nope")
    return st.just({}) | st.fixed_dictionaries({}, optional={
        "label_column": st.one_of(st.none(), choice),
        "categorical": st.lists(choice, max_size=2),
        "continuous": st.lists(choice, max_size=2),
        "drop_columns": st.lists(choice, max_size=2),
        "test_fraction": st.sampled_from([0.1, 0.5, 0.99]),
    })


def check_table_dataset(path: str, dataset) -> None:
    """A loaded table is valid: float32 rows with NaN only for empty cells (never inf), shapes that agree, a schema
    that survives config.json (strict JSON) and decodes its own rows back to the same labels and gaps."""
    check(path, dataset.config.table is not None and dataset.config.kind == "table", "not loaded as a table")
    for x in (dataset.x_train, dataset.x_test):
        check(path, x.dtype == torch.float32 and x.ndim == 2 and not torch.isinf(x).any(), "rows are not finite float32")
        check(path, tuple(x.shape[1:]) == dataset.shape, f"rows of shape {tuple(x.shape)} for shape {dataset.shape}")
    check(path, len(dataset.x_train) >= 1, "no training rows")
    for y, x in ((dataset.y_train, dataset.x_train), (dataset.y_test, dataset.x_test)):
        check(path, y is None or len(y) == len(x), "labels and rows differ in length")
    try:
        text = json.dumps(dataset.config.table, allow_nan=False)
    except (TypeError, ValueError) as err:
        fail(path, f"the table schema is not plain JSON ({err})", err)
        return
    schema = TableSchema.from_dict(json.loads(text))
    x = torch.cat([dataset.x_train, dataset.x_test]).numpy()
    check(path, schema.width == x.shape[1], "the schema's width is not the rows' width")
    try:
        decoded = schema.decode(x)
        again = schema.encode(decoded, where="the decoded rows")
    except Exception as err:  # noqa: BLE001
        fail(path, f"the schema does not decode and re-encode its own rows: {type(err).__name__}: {err}", err)
        return
    check(path, list(decoded.columns) == schema.names and len(decoded) == len(x), "decoded frame has other columns/rows")
    for c, at in zip(schema.columns, schema.offsets()):
        block, back = x[:, at:at + c.width], again[:, at:at + c.width]
        check(path, np.array_equal(np.isnan(block), np.isnan(back)), f"column {c.name!r}: empty cells moved")
        if c.kind in ("boolean", "categorical"):
            check(path, np.array_equal(block, back, equal_nan=True), f"column {c.name!r}: labels changed on the way back")


def read_and_load(kind: str, path: Path, options: dict) -> None:
    frame = outcome(f"table.{kind}.read_table", lambda: read_table(path))
    if frame is not None:
        check(f"table.{kind}.read_table", isinstance(frame, pd.DataFrame) and len(frame.columns) >= 1, "not a DataFrame")
    dataset = outcome(f"table.{kind}.load_dataset", lambda: vaekit.load_dataset(str(path), **options))
    if dataset is not None:
        check_table_dataset(f"table.{kind}.load_dataset", dataset)
    check(f"table.{kind}.load_dataset", not temp_leftovers(path.parent), f"temporary files left: {temp_leftovers(path.parent)}")


@budget(120)
@given(table=table_text(), encoding=st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "latin-1", "cp1252"]),
       bom=st.booleans(), suffix=st.sampled_from([".csv", ".csv", ".tsv", ".txt", ".CSV"]), data=st.data())
def test_delimited_text_tables(table, encoding, bom, suffix, data):
    text, header = table
    content = data.draw(damaged(encode_text(text, encoding, bom)))
    options = data.draw(column_options(header))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"table{suffix}"
        path.write_bytes(content)
        read_and_load("csv", path, options)


@budget(30, scale=0.25)
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass"))))
def test_random_bytes_as_a_table(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.csv"
        path.write_bytes(content)
        read_and_load("csv", path, {})


# --- DataFrames and Parquet files ---------------------------------------------------------------------

FRAME_KINDS = ["int64", "Int64", "uint64", "int8", "float", "float_special", "float32", "string", "string_nulls",
               "bool", "boolean", "category", "datetime", "date", "timedelta", "mixed", "all_null", "constant", "bytes"]


def frame_column(kind: str, n: int, rng: np.random.Generator):
    ints = rng.integers(-50, 50, n)
    nulls = rng.random(n) < 0.2
    if kind == "int64":
        return pd.Series(ints, dtype=np.int64)
    if kind == "Int64":
        return pd.Series(pd.array([None if m else int(v) for v, m in zip(ints, nulls)], dtype="Int64"))
    if kind == "uint64":
        return pd.Series(rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2), dtype=np.uint64)
    if kind == "int8":
        return pd.Series(ints.astype(np.int8))
    if kind == "float":
        return pd.Series(np.where(nulls, np.nan, rng.normal(size=n) * 10.0 ** rng.integers(-3, 6)))
    if kind == "float_special":
        return pd.Series(rng.choice([np.nan, np.inf, -np.inf, 0.0, 1.5, -2.25, 1e308], n))
    if kind == "float32":
        return pd.Series(rng.normal(size=n).astype(np.float32))
    if kind in ("string", "string_nulls"):
        words = np.array(["a", "b", "c", "", " x ", "é", "1", "2.5", "nan", "True"], dtype=object)
        values = words[rng.integers(0, len(words), n)]
        if kind == "string_nulls":
            values = np.where(nulls, None, values)
        return pd.Series(values, dtype=object)
    if kind == "bool":
        return pd.Series(rng.random(n) < 0.5)
    if kind == "boolean":
        return pd.Series(pd.array([None if m else bool(v) for v, m in zip(rng.random(n) < 0.5, nulls)], dtype="boolean"))
    if kind == "category":
        return pd.Series(pd.Categorical(rng.choice(["lo", "mid", "hi"], n)))
    if kind == "datetime":
        values = pd.to_datetime("2020-01-01") + pd.to_timedelta(ints, unit="D")
        return pd.Series(values).where(~nulls)
    if kind == "date":
        return pd.Series([None if m else dt.date(2000, 1, 1) + dt.timedelta(days=int(v)) for v, m in zip(ints, nulls)])
    if kind == "timedelta":
        return pd.Series(pd.to_timedelta(ints, unit="s"))
    if kind == "mixed":
        pool = [1, 2.5, "x", None, True, "3", float("nan")]
        return pd.Series([pool[i] for i in rng.integers(0, len(pool), n)], dtype=object)
    if kind == "all_null":
        return pd.Series([None] * n, dtype=object)
    if kind == "constant":
        return pd.Series([7.0] * n)
    if kind == "bytes":
        return pd.Series([bytes([int(v) % 256]) for v in ints], dtype=object)
    raise AssertionError(kind)


@st.composite
def data_frames(draw, max_rows: int = 30, unique_names: bool = False):
    n = draw(st.integers(0, max_rows))
    kinds = draw(st.lists(st.sampled_from(FRAME_KINDS), min_size=1, max_size=5))
    names = draw(st.lists(HEADER_NAMES if unique_names else HEADER_NAMES | st.integers(0, 3),  # Parquet: strings only
                          min_size=len(kinds), max_size=len(kinds), unique=unique_names))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    frame = pd.DataFrame({i: frame_column(kind, n, rng) for i, kind in enumerate(kinds)})
    frame.columns = names
    return frame, kinds


@budget(60, scale=0.5)
@given(spec=data_frames(unique_names=True), data=st.data())
def test_parquet_tables(spec, data):
    frame, kinds = spec
    buffer = io.BytesIO()
    try:
        frame.to_parquet(buffer, index=False)
    except Exception as err:  # noqa: BLE001 - pyarrow cannot write this frame (mixed objects): nothing to read
        COUNTS["table.parquet.unwritable_frames"][type(err).__name__] += 1
        return
    content = data.draw(damaged(buffer.getvalue()))
    options = data.draw(column_options(list(map(str, frame.columns))))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / data.draw(st.sampled_from(["table.parquet", "table.pq"]))
        path.write_bytes(content)
        read_and_load("parquet", path, options)


@budget(12, scale=0.05)
@given(spec=data_frames(max_rows=24), with_run_dir=st.booleans(), seed=st.integers(0, 3))
def test_fit_on_a_data_frame(spec, with_run_dir, seed):
    """``VAE.fit(DataFrame)`` on one epoch of a tiny network: fits and then samples and encodes the table's own form,
    and a run directory it wrote loads back; or a VaekitError."""
    frame, kinds = spec
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run" if with_run_dir else None
        vae = outcome("table.dataframe.fit", lambda: vaekit.VAE(latent_dim=2, hidden=(4,), epochs=1, batch_size=8,
                                                                 seed=seed, device="cpu", progress=False)
                      .fit(frame, run_dir=run))
        if vae is None:
            return
        sample = outcome("table.dataframe.fit", lambda: vae.sample(3, seed=0), counted=False)
        check("table.dataframe.fit", isinstance(sample, pd.DataFrame) and list(sample.columns) == vae.schema_.names
              and len(sample) == 3, "sample is not a DataFrame of the modelled columns")
        codes = outcome("table.dataframe.fit", lambda: vae.transform(frame), counted=False)
        check("table.dataframe.fit", codes is not None and np.isfinite(codes).all(), "codes of the training rows not finite")
        if run is not None:
            check("table.dataframe.fit", not temp_leftovers(run), f"temporary files left: {temp_leftovers(run)}")
            again = outcome("table.dataframe.run_dir_reload", lambda: vaekit.load(run))
            check("table.dataframe.run_dir_reload", again is not None and again.schema_.names == vae.schema_.names,
                  "the run directory of a fitted table does not load back")


@budget(40, scale=0.25)
@given(spec=data_frames(max_rows=10), suffix=st.sampled_from([".csv", ".tsv", ".parquet"]), data=st.data())
def test_writing_a_table_never_leaves_half_a_file(spec, suffix, data):
    """``write_table`` (how samples and imputations are written) is atomic whatever the frame: afterwards the target
    is the old file or a complete new one, and no temporary file is left, even when the writer fails halfway."""
    frame, kinds = spec
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"out{suffix}"
        old = b"old contents\n"
        path.write_bytes(old)
        try:
            write_table(frame, path)
            wrote = True
            COUNTS[f"table.write_table{suffix}"]["written"] += 1
        except VaekitError:
            wrote = False
            COUNTS[f"table.write_table{suffix}"]["VaekitError"] += 1
        except Exception as err:  # noqa: BLE001 - a frame the writer cannot take (pyarrow types): atomicity still holds
            wrote = False
            COUNTS[f"table.write_table{suffix}"][f"refused ({type(err).__name__})"] += 1
        check(f"table.write_table{suffix}", not temp_leftovers(Path(tmp)), f"temporary files left: {temp_leftovers(Path(tmp))}")
        if not wrote:
            check(f"table.write_table{suffix}", path.read_bytes() == old, "a failed write changed the target")
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            check(f"table.write_table{suffix}", pq.read_metadata(path).num_rows == len(frame), "a written file is incomplete")


# =====================================================================================================
# Run-directory state
# =====================================================================================================

RUN_FILES = ["anomaly_detector.json", "typicality.json", "sampler_gmm.json", "sampler_gmm.safetensors",
             "checkpoint.json", "CHECKPOINT/state.json", "config.json", "model.safetensors"]
# Files that belong together (by the weights' fingerprint, a digest or a checksum): when they come from different
# runs, the loader must refuse them, never use one run's detector or sampler with another run's weights.
DETECTOR_SET = ("anomaly_detector.json", "typicality.json", "model.safetensors")
SAMPLER_SET = ("sampler_gmm.json", "sampler_gmm.safetensors", "model.safetensors")


def _make_run(root: Path, name: str, seed: int, digits) -> Path:
    run = root / name
    vae = vaekit.VAE(latent_dim=2, hidden=(16,), epochs=2, seed=seed, device="cpu", progress=False).fit(digits, run_dir=run)
    clean = digits.x_train.numpy()[:400]
    AnomalyDetector(str(run), seed=seed).fit(clean).save()  # the default score, typicality: writes typicality.json
    save_sampler(fit_sampler(vae, digits.x_train.numpy()[:600], seed=seed), run)
    assert {"anomaly_detector.json", "typicality.json", "sampler_gmm.json"} <= {p.name for p in run.iterdir()}
    return run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, digits):
    """Two small 2-D digits runs (different seeds) with a saved detector, typicality model and gmm sampler."""
    root = tmp_path_factory.mktemp("fuzz-runs")
    return _make_run(root, "a", 0, digits), _make_run(root, "b", 1, digits)


def _resolve(run: Path, name: str) -> Path:
    if name.startswith("CHECKPOINT/"):
        return run / ckpt.read_pointer(run)["latest"] / name.split("/", 1)[1]
    return run / name


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6)
    | st.sampled_from(["../..", "/etc/passwd", "checkpoints/step-000000001", "gmm", "full", "mean", "typicality",
                       "target_fpr", "contamination", "png", "0" * 64]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


def _json_paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _json_paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _json_paths(v, (*prefix, i))


def _retype(value):
    """The same content in another JSON type: what a hand edit or another writer might leave."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        return list(value.values())
    return 0


@st.composite
def edited_json(draw, raw):
    """One to three edits of a JSON document: a value replaced, retyped or dropped, or a key added."""
    raw = json.loads(json.dumps(raw))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_json_paths(raw))
        where = draw(st.sampled_from(paths))
        if not where:
            raw = draw(JSON_VALUES)
            continue
        parent = raw
        try:
            for key in where[:-1]:
                parent = parent[key]
            key = where[-1]
            value = parent[key]
        except (KeyError, IndexError, TypeError):
            continue
        how = draw(st.sampled_from(["replace", "retype", "drop", "add", "number"]))
        if how == "replace":
            parent[key] = draw(JSON_VALUES)
        elif how == "retype":
            parent[key] = _retype(value)
        elif how == "number":
            parent[key] = draw(st.sampled_from([0, -1, 1, 2**63, -2**63, 1e308, -0.0, float("nan"), float("inf"), 0.5]))
        elif how == "drop" and isinstance(parent, dict):
            del parent[key]
        elif how == "drop":
            parent.pop(key)
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "__class__", "format_version"]))] = draw(JSON_VALUES)
    return raw


class Exploit:
    """Unpickling this would create the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@contextlib.contextmanager
def no_unpickling():
    """Every pickle loader (and torch.load, which unpickles) raises while run files are read."""
    def refuse(*args, **kwargs):
        raise Unpickled("a pickle loader was called")

    saved = [(pickle, "load", pickle.load), (pickle, "loads", pickle.loads), (pickle, "Unpickler", pickle.Unpickler),
             (torch, "load", torch.load)]
    for module, name, _ in saved:
        setattr(module, name, refuse)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


@st.composite
def mutation(draw, name: str, run_a: Path, run_b: Path):
    """What happens to one file: (description, new bytes or None to delete)."""
    source = _resolve(run_a, name)
    data = source.read_bytes()
    kinds = ["truncate", "flip", "append", "swap", "delete", "pickle", "empty", "intact"]
    if name.endswith(".json"):
        kinds += ["json", "json", "json", "json"]
    how = draw(st.sampled_from(kinds))
    if how == "json":
        edited = draw(edited_json(json.loads(data)))
        return how, json.dumps(edited, allow_nan=True).encode()
    if how == "swap":
        return how, _resolve(run_b, name).read_bytes()
    if how == "delete":
        return how, None
    if how == "pickle":
        return how, pickle.dumps({"weights": Exploit(source.parent / "PWNED")})
    if how == "empty":
        return how, b""
    if how == "intact":
        return how, data
    return how, draw(damaged(data, how))  # truncate, flip or append


def _check_loaded_vae(path: str, vae) -> None:
    sample = vae.sample(2, seed=0)
    check(path, isinstance(sample, np.ndarray) and sample.shape == (2, 1, 8, 8) and np.isfinite(sample).all(),
          "a loaded model does not sample finite digits")


@budget(70, scale=0.5)
@given(data=st.data())
def test_mutated_run_directory_state(two_runs, digits, data):
    run_a, run_b = two_runs
    names = data.draw(st.lists(st.sampled_from(RUN_FILES), min_size=1, max_size=2, unique=True))
    probe = digits.x_test.numpy()[:8]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(run_a, run)
        origin = defaultdict(lambda: "a")  # which run each file now comes from
        for name in names:
            how, content = data.draw(mutation(name, run_a, run_b))
            target = run / _resolve(run_a, name).relative_to(run_a)  # by the intact pointer: it may be mutated
            COUNTS[f"run_files.{name.replace('CHECKPOINT/', 'checkpoints/*/')}"][how] += 1
            if content is None:
                target.unlink()
            else:
                target.write_bytes(content)
            if how == "swap":
                origin[name] = "b"
        if data.draw(st.integers(0, 9)) == 0:  # both sampler files from the other run: a complete foreign sampler
            for name in ("sampler_gmm.json", "sampler_gmm.safetensors"):
                shutil.copyfile(run_b / name, run / name)
                origin[name] = "b"
            COUNTS["run_files.sampler_gmm (both files)"]["swap"] += 1
        mixed_detector = len({origin[n] for n in DETECTOR_SET}) > 1
        mixed_sampler = len({origin[n] for n in SAMPLER_SET}) > 1
        before = snapshot(run)
        with no_unpickling():
            vae = outcome("run_load.vaekit.load", lambda: vaekit.load(run))
            if vae is not None:
                outcome("run_load.vaekit.load", lambda: _check_loaded_vae("run_load.vaekit.load", vae), counted=False)
            detector = outcome("run_load.AnomalyDetector.load", lambda: AnomalyDetector.load(run))
            if detector is not None:
                check("run_load.AnomalyDetector.load", not mixed_detector,
                      f"loaded a detector whose files come from two runs ({dict(origin)})")
                predicted = outcome("run_load.AnomalyDetector.load", lambda: detector.predict(probe), counted=False)
                check("run_load.AnomalyDetector.load", predicted is not None and set(np.unique(predicted)) <= {-1, 1},
                      "a loaded detector does not predict -1/+1")
            sampler = outcome("run_load.load_sampler", lambda: load_sampler(run, vae))
            if sampler is not None and vae is not None:
                check("run_load.load_sampler", not mixed_sampler,
                      f"loaded a sampler whose files come from two runs ({dict(origin)})")
                drawn = outcome("run_load.load_sampler", lambda: vae.sample(3, sampler="gmm", seed=0), counted=False)
                check("run_load.load_sampler", drawn is not None and np.isfinite(drawn).all(), "gmm draws not finite")
            state = outcome("run_load.checkpoint.load_checkpoint", lambda: ckpt.load_checkpoint(run))
            if state is not None:
                check("run_load.checkpoint.load_checkpoint", isinstance(state["model"], dict)
                      and all(isinstance(t, torch.Tensor) for t in state["model"].values()), "checkpoint tensors")
            if vae is not None:
                from vaekit.serve.explorer import Explorer

                explorer = outcome("run_load.serve.Explorer.from_run", lambda: Explorer.from_run(run, vae=vae))
                if explorer is not None:
                    check("run_load.serve.Explorer.from_run", explorer.detector is None or not mixed_detector,
                          "the service took a detector from another run")
        check("run_load", not (run / "PWNED").exists() and not any(run.rglob("PWNED")), "a pickle in a run file ran")
        check("run_load", snapshot(run) == before, "reading the run directory changed its files")
        check("run_load", not temp_leftovers(run), f"temporary files left: {temp_leftovers(run)}")


def test_intact_run_directory_state_loads(two_runs, digits):
    """The baseline the mutations start from: both runs load completely, and each refuses the other's state."""
    for run in two_runs:
        assert AnomalyDetector.load(run).predict(digits.x_test.numpy()[:4]).shape == (4,)
        assert load_sampler(run, vaekit.load(run)).components >= 1
        assert ckpt.load_checkpoint(run) is not None


# =====================================================================================================
# The service's OpenAPI schema (schemathesis)
# =====================================================================================================

LOCAL = "http://127.0.0.1"  # the access guard answers only to loopback names (tests/test_serve_security.py)


@pytest.fixture(scope="module")
def service(two_runs, digits):
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'vaekit[serve]'")
    from vaekit.serve import Explorer, ReferenceData, create_app

    run = two_runs[0]
    reference = ReferenceData(digits.split("test").numpy()[:100], "digits:test", digits.labels("test")[:100],
                              digits.class_names)
    return create_app(Explorer.from_run(run, reference=reference))


SERVICE_EXAMPLES = 15  # per operation and mode: 13 operations x 2 modes


def test_service_answers_conform_to_its_openapi_schema(service):
    """Valid and invalid requests generated from ``/openapi.json``: never a 5xx or an unhandled exception, and
    status codes, content types, headers and bodies as the schema documents them. Not checked:
    ``positive_data_acceptance``; a schema-valid request may still be refused with 422 for what the schema cannot
    say (a latent vector of the model's length, counts within the service's limits)."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis.errors import Unsatisfiable
    from schemathesis import checks
    from schemathesis.core.failures import FailureGroup
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_dict(service.openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 13, [op.label for op in operations]
    excluded = [checks.positive_data_acceptance]
    problems: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            path = f"service {operation.method.upper()} {operation.path}"

            @budget(SERVICE_EXAMPLES, scale=0.1)
            @given(case=operation.as_strategy(generation_mode=mode))
            def send(case):
                try:
                    with time_limit(HANG_SECONDS):
                        response = case.call(base_url=LOCAL, app=service)
                except Exception as err:  # noqa: BLE001 - an exception out of the app is what must not happen
                    COUNTS[path][f"{mode.value} unexpected {type(err).__name__}"] += 1
                    fail(path, f"{type(err).__name__} out of the app: {err}", err)
                    return
                COUNTS[path][f"{mode.value} {response.status_code}"] += 1
                try:
                    case.validate_response(response, excluded_checks=excluded)
                except FailureGroup as group:
                    for failure in group.exceptions:
                        problem = f"{failure.title} ({mode.value}, {response.status_code})"
                        problems.append(f"{path}: {problem}")
                        fail(path, problem, detail=str(failure)[:1500])

            try:
                send()
            except Unsatisfiable:  # no invalid request exists for an operation without parameters
                pass
    assert not problems or COLLECT, "\n".join(problems)
