"""Bad input at scale (Hypothesis): every loader and the Python API end in a VaekitError or a valid result.

Each property feeds generated input (random shapes and dtypes, NaN/inf, empty data, truncated and
corrupted files, random bytes, random JSON) to one entry point. The outcome must be a valid result
(finite float32 tensors of consistent shapes) or an exception that is a ``vaekit.VaekitError``;
anything else (an IndexError, a numpy ValueError, a crash) fails the test.

Every example tried is counted per entry point. By default each property tries Hypothesis's usual
number of examples (or fewer for slow ones); ``VAEKIT_STRESS_EXAMPLES=N`` makes every property try N,
and ``VAEKIT_BAD_INPUT_REPORT=PATH`` writes the counts (tried / valid result / VaekitError) as JSON:

    VAEKIT_STRESS_EXAMPLES=2000 VAEKIT_BAD_INPUT_REPORT=bad_input.json .venv/bin/python -m pytest -q tests/test_bad_input.py
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import vaekit
from vaekit import VaekitError
from vaekit.errors import CheckpointError
from vaekit.training import checkpoint as ckpt
from vaekit.config import RunConfig
from vaekit.data.idx import parse_idx, read_idx

STRESS = int(os.environ.get("VAEKIT_STRESS_EXAMPLES", "0") or 0)
OUTCOMES: dict[str, Counter] = defaultdict(Counter)


def budget(default: int):
    """Hypothesis settings: ``default`` examples, the same every run (CI stays deterministic), or in a stress
    run the stress count with fresh random examples; no deadline (the machine is shared)."""
    return settings(max_examples=STRESS or default, deadline=None, database=None, derandomize=not STRESS,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    path = os.environ.get("VAEKIT_BAD_INPUT_REPORT")
    if path:
        counts = {name: {"tried": sum(c.values()), **dict(c)} for name, c in sorted(OUTCOMES.items())}
        Path(path).write_text(json.dumps({"stress_examples": STRESS or None, "entry_points": counts}, indent=2) + "\n")


def outcome(name: str, call):
    """Run ``call``; count and return its result, or count a VaekitError. Any other exception propagates."""
    try:
        result = call()
    except VaekitError:
        OUTCOMES[name]["vaekit_error"] += 1
        return None
    OUTCOMES[name]["valid"] += 1
    return result


def check_dataset(dataset) -> None:
    """A loaded data set is valid: finite float32 tensors, non-empty, shapes that agree."""
    for x in (dataset.x_train, dataset.x_test):
        # a table keeps its empty cells as NaN for the model to mask; nothing is ever infinite
        finite = ~torch.isinf(x) if dataset.config.table is not None else torch.isfinite(x)
        assert x.dtype == torch.float32 and len(x) >= 1 and finite.all()
        assert tuple(x.shape[1:]) == dataset.shape and len(dataset.shape) in (1, 3)
    for y, x in ((dataset.y_train, dataset.x_train), (dataset.y_test, dataset.x_test)):
        assert y is None or len(y) == len(x)


# --- generated content ----------------------------------------------------------------------------

DTYPES = st.sampled_from(["bool", "int8", "uint8", "int16", "uint16", "int32", "int64", "uint64", "float16",
                          "float32", "float64", "complex64", "U3", "S2", "datetime64[s]"])


@st.composite
def any_array(draw, max_dims: int = 5):
    dtype = np.dtype(draw(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=5))
    if dtype.kind == "f":
        elements = st.floats(allow_nan=True, allow_infinity=True, width=8 * min(dtype.itemsize, 8))
        return draw(hnp.arrays(dtype, shape, elements=elements))
    return draw(hnp.arrays(dtype, shape))


@st.composite
def damaged(draw, data: bytes, how: str | None = None, intact: int = 1) -> bytes:
    """The bytes as they are (``intact`` times as often as each damage), truncated, with bytes flipped, or with
    junk appended (or as ``how`` says). tests/test_fuzz.py uses it too."""
    how = how or draw(st.sampled_from(["intact"] * intact + ["truncate", "flip", "append"]))
    if how == "truncate" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "flip" and data:
        data = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return bytes(data)
    if how == "append":
        return data + draw(st.binary(min_size=1, max_size=64))
    return data


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=array.dtype.kind == "O")
    return buffer.getvalue()


def load_file(name: str, suffix: str, content: bytes, **options):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(content)
        dataset = outcome(name, lambda: vaekit.load_dataset(str(path), **options))
        if dataset is not None:
            check_dataset(dataset)


LOAD_OPTIONS = st.fixed_dictionaries({}, optional={
    "test_fraction": st.sampled_from([0.1, 0.5, 0.99, 1e-9]),
    "binarize": st.sampled_from(["none", "static", "dynamic"]),
    "binarize_threshold": st.sampled_from([None, 0.5]),
})


# --- loaders --------------------------------------------------------------------------------------

@budget(100)
@given(array=any_array(), options=LOAD_OPTIONS, data=st.data())
def test_npy_files(array, options, data):
    content = npy_bytes(array)
    load_file("npy", ".npy", data.draw(damaged(content)), **options)


@budget(100)
@given(content=st.binary(max_size=300))
def test_npy_random_bytes(content):
    load_file("npy", ".npy", content)


def test_npy_holding_a_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(vaekit.DataError, match="never unpickles"):
        vaekit.load_dataset(_write(tmp_path / "x.npy", npy_bytes(np.array([Exploit(marker), 1], dtype=object))))
    assert not marker.exists()


def _write(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


class Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


NPZ_KEYS = st.sampled_from(["x", "y", "x_train", "x_test", "y_train", "y_test", "labels", "data", "other", "arr_0"])


@budget(100)
@given(arrays=st.dictionaries(NPZ_KEYS, any_array(max_dims=4), max_size=4), compressed=st.booleans(),
       options=LOAD_OPTIONS, data=st.data())
def test_npz_files(arrays, compressed, options, data):
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    load_file("npz", ".npz", data.draw(damaged(buffer.getvalue())), **options)


CELLS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-10**20, 10**20).map(str),
                  st.sampled_from(["", " ", "nan", "inf", "-inf", "NaN", "1e400", "abc", '"1,5"', "0x10", "1_000",
                                   "\u00e9", "label", "\ufeff1", "1e-400", "true"]),
                  st.text(max_size=6))


@st.composite
def csv_text(draw):
    delimiter = draw(st.sampled_from([",", ";", "\t", " ", "|"]))
    width = draw(st.integers(1, 5))
    rows = draw(st.lists(st.lists(CELLS, min_size=max(1, width - 1), max_size=width + 1), min_size=0, max_size=8))
    return "\n".join(delimiter.join(row) for row in rows)


@budget(100)
@given(text=csv_text(), label=st.one_of(st.none(), st.sampled_from(["0", "1", "label", "col0", "9", "x"])),
       encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]), data=st.data())
def test_csv_files(text, label, encoding, data):
    try:
        content = text.encode(encoding)
    except UnicodeEncodeError:
        content = text.encode("utf-8")
    load_file("csv", ".csv", data.draw(damaged(content)), label_column=label)


@st.composite
def image_file(draw) -> tuple[str, bytes]:
    from PIL import Image

    mode = draw(st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "I", "F", "I;16"]))
    fmt, suffix = draw(st.sampled_from([("PNG", ".png"), ("JPEG", ".jpg"), ("BMP", ".bmp"), ("GIF", ".gif"),
                                        ("TIFF", ".tif"), ("WEBP", ".webp")]))
    width, height = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 4), dtype=np.uint8)
    img = Image.fromarray(pixels, "RGBA").convert(mode)
    buffer = io.BytesIO()
    try:
        img.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):  # this format cannot hold this mode: write a PNG of it instead
        buffer = io.BytesIO()
        img.convert("RGB").save(buffer, format="PNG")
        suffix = ".png"
    return suffix, draw(damaged(buffer.getvalue()))


def write_image_files(root: Path, files: list[tuple[str, tuple[str, bytes]]]) -> Path:
    """An image folder: each (subfolder, (suffix, bytes)) as file i in that subfolder."""
    root.mkdir()
    for i, (folder, (suffix, content)) in enumerate(files):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / f"{folder}{i}{suffix}").write_bytes(content)
    return root


@budget(60)
@given(files=st.lists(st.tuples(st.sampled_from(["", "a/", "b/", "a/c/"]), image_file()), min_size=0, max_size=5),
       junk=st.lists(st.tuples(st.sampled_from([".png", ".jpg", ".gif", ".txt"]), st.binary(max_size=40)), max_size=2),
       image_size=st.one_of(st.none(), st.tuples(st.integers(1, 9), st.integers(1, 9))),
       channels=st.sampled_from([None, 1, 3]))
def test_image_folders(files, junk, image_size, channels):
    with tempfile.TemporaryDirectory() as tmp:
        root = write_image_files(Path(tmp) / "images", files)
        for i, (suffix, content) in enumerate(junk):
            (root / f"junk{i}{suffix}").write_bytes(content)
        dataset = outcome("image_folder", lambda: vaekit.load_dataset(str(root), image_size=image_size,
                                                                      channels=channels))
        if dataset is not None:
            check_dataset(dataset)


@budget(30)
@given(files=st.lists(st.tuples(st.sampled_from(["", "a/", "b/"]), image_file()), min_size=1, max_size=6),
       in_memory=st.sampled_from(["yes", "no"]), image_size=st.one_of(st.none(), st.just((5, 4))))
def test_image_folders_skipping_bad_files(files, in_memory, image_size):
    """With skip_bad_files, damaged images never stop loading or streaming; only a folder with too few readable
    images is refused (a VaekitError, never the error of one unreadable file)."""
    from vaekit.data.sources import UnreadableFileError

    with tempfile.TemporaryDirectory() as tmp:
        root = write_image_files(Path(tmp) / "images", files)

        def load_and_read():
            try:
                dataset = vaekit.load_dataset(str(root), image_size=image_size, in_memory=in_memory,
                                              skip_bad_files=True)
                stream = dataset.train_stream
                x = dataset.x_train if stream is None else \
                    torch.from_numpy(stream.read_batch(np.arange(len(stream)))[0])
            except UnreadableFileError as err:  # a VaekitError, but the one the option must never let through
                raise AssertionError(f"skip_bad_files let an unreadable file stop it: {err}") from None
            return dataset, x

        result = outcome("image_folder.skip_bad_files", load_and_read)
        if result is not None:
            dataset, x_train = result
            assert x_train.dtype == torch.float32 and len(x_train) >= 1 and torch.isfinite(x_train).all()
            assert len(dataset.x_test) >= 1 and torch.isfinite(dataset.x_test).all()
            assert tuple(x_train.shape[1:]) == tuple(dataset.x_test.shape[1:]) == dataset.shape
            skipped = {path for path, _ in dataset.skipped_files}
            if dataset.train_stream is not None:
                skipped |= {path for path, _ in dataset.train_stream.unreadable_files()}
                assert len(x_train) == len(dataset.train_stream)  # replaced, not dropped
            else:
                assert len(x_train) + len(dataset.x_test) + len(skipped) == len(files)
            assert dataset.y_test is None or len(dataset.y_test) == len(dataset.x_test)


def _folder_with_a_truncated_png(root: Path, n: int = 12) -> Path:
    from PIL import Image

    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).save(root / f"{i:02d}.png")
    bad = root / "03.png"
    bad.write_bytes(bad.read_bytes()[:40])
    return bad


def test_a_truncated_image_loaded_in_memory_is_one_line_suggesting_skip_bad_files(tmp_path, capsys):
    from vaekit.cli import main

    bad = _folder_with_a_truncated_png(tmp_path / "img")
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "img"), "--out", str(out), "--epochs", "1", "--data-in-memory", "yes",
                 "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line, = [line for line in err.splitlines() if line.startswith("vaekit: error:")]
    assert str(bad) in line and "--skip-bad-files" in line
    assert not out.exists()
    # The Python API: the same error without the option, the file listed with it.
    with pytest.raises(VaekitError, match="03.png"):
        vaekit.load_dataset(str(tmp_path / "img"), in_memory="yes")
    data = vaekit.load_dataset(str(tmp_path / "img"), in_memory="yes", skip_bad_files=True)
    assert [path for path, _ in data.skipped_files] == [str(bad)] and data.num_train + len(data.x_test) == 11
    assert str(bad) not in data.example_ids("all") and len(data.example_ids("all")) == 11


def test_the_only_data_file_damaged_is_not_offered_to_be_skipped(tmp_path, capsys):
    from vaekit.cli import main

    (tmp_path / "data.npy").write_bytes(npy_bytes(np.zeros((10, 3), np.float32))[:70])
    assert main(["train", str(tmp_path / "data.npy"), "--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("vaekit: error:") and "data.npy" in line and "--skip-bad-files" not in line


@st.composite
def idx_bytes(draw) -> bytes:
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07, 0xFF]))
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=4))
    itemsize = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}.get(code, 1)
    body = draw(st.binary(min_size=0, max_size=int(np.prod(shape) if shape else 1) * itemsize + 4))
    header = bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", s) for s in shape)
    return draw(damaged(header + body))


@budget(150)
@given(content=st.one_of(idx_bytes(), st.binary(max_size=64)), gzipped=st.booleans())
def test_idx_files(content, gzipped):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("file.idx.gz" if gzipped else "file.idx")
        path.write_bytes(gzip.compress(content) if gzipped and content[:1] != b"!" else content)
        array = outcome("idx", lambda: read_idx(path))
        if array is not None:
            assert isinstance(array, np.ndarray)
            assert np.array_equal(array, parse_idx(gzip.decompress(path.read_bytes()) if gzipped else content),
                                  equal_nan=array.dtype.kind == "f")


@budget(40)
@given(files=st.fixed_dictionaries({name: idx_bytes() for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                                     "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}))
def test_fashion_mnist_directory_of_bad_idx_files(files):
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            (Path(tmp) / name).write_bytes(content)
        dataset = outcome("idx", lambda: vaekit.load_dataset("fashion-mnist", data_dir=tmp))
        if dataset is not None:
            check_dataset(dataset)


# --- checkpoint configuration ---------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


@pytest.fixture(scope="module")
def valid_config(trained_run) -> dict:
    return json.loads((trained_run / "config.json").read_text())


def _mutate(config: dict, data) -> dict:
    config = json.loads(json.dumps(config))
    for _ in range(data.draw(st.integers(1, 3))):
        section = data.draw(st.sampled_from(["model", "data", "train", None]))
        target = config if section is None or not isinstance(config.get(section), dict) else config[section]
        key = data.draw(st.sampled_from(sorted(target) + ["unknown_field"]))
        if data.draw(st.booleans()):
            target[key] = data.draw(JSON)
        else:
            target.pop(key, None)
    return config


@budget(200)
@given(data=st.data())
def test_checkpoint_config_json(valid_config, trained_run, data):
    raw = data.draw(st.one_of(JSON, st.just(valid_config).map(lambda c: _mutate(c, data))))
    text = json.dumps(raw, allow_nan=True)
    content = data.draw(damaged(text.encode()))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_bytes(content)
        config = outcome("config_json", lambda: ckpt.load_config(tmp))
        if config is not None:
            assert isinstance(config, RunConfig)
            assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # valid means round-trips
        # The whole run directory with this configuration: loads, or a CheckpointError.
        for name in ("model.safetensors", "checkpoint.json"):
            (Path(tmp) / name).write_bytes((trained_run / name).read_bytes())
        vae = outcome("run_directory", lambda: vaekit.load(tmp))
        if vae is not None:
            assert np.isfinite(vae.sample(2, seed=0)).all()


def test_a_config_naming_huge_layers_is_refused_before_it_allocates(valid_config, trained_run, tmp_path):
    import time

    config = json.loads(json.dumps(valid_config))
    config["model"]["hidden"] = [50_000_000] * len(config["model"]["hidden"])  # gigabytes per layer if built
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((trained_run / "model.safetensors").read_bytes())
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match="does not match the model in its config.json"):
        vaekit.load(tmp_path)
    assert time.perf_counter() - started < 5  # checked on shapes alone: nothing of that size was made


# --- the Python API -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted(trained_run):
    return vaekit.load(trained_run)


def api_inputs():
    """Arrays of random shapes and dtypes, NaN/inf included, plus ragged lists and odd Python objects."""
    return st.one_of(
        any_array(max_dims=4),
        hnp.arrays(np.float32, st.sampled_from([(0, 64), (3, 64), (2, 8, 8), (2, 1, 8, 8), (2, 8, 8, 1), (64,),
                                                (1, 63), (2, 65)]),
                   elements=st.floats(-1e6, 1e6, width=32) | st.sampled_from([np.nan, np.inf, -np.inf, 0.5])),
        st.lists(st.lists(st.floats(allow_nan=True), max_size=3), max_size=3),
        st.sampled_from([None, "text", 3, [[1, 2], [3]], {"x": 1}, [object()]]),
    )


API_METHODS = {
    "transform": lambda vae, x: vae.transform(x),
    "encode": lambda vae, x: vae.encode(x),
    "reconstruct": lambda vae, x: vae.reconstruct(x),
    "score_samples": lambda vae, x: vae.score_samples(x, num_importance_samples=3),
    "elbo": lambda vae, x: vae.elbo(x),
    "decode": lambda vae, x: vae.decode(x),
    "inverse_transform": lambda vae, x: vae.inverse_transform(x),
    "sample_posterior": lambda vae, x: vae.sample_posterior(x, num_samples=2),
}


def _check_api_result(result) -> None:
    parts = result.values() if isinstance(result, dict) else result if isinstance(result, tuple) else [result]
    for part in parts:
        assert isinstance(part, np.ndarray) and np.isfinite(part).all()


@budget(100)
@given(method=st.sampled_from(sorted(API_METHODS)), x=api_inputs())
def test_api_methods_of_a_fitted_vae(fitted, method, x):
    result = outcome(f"api.{method}", lambda: API_METHODS[method](fitted, x))
    if result is not None:
        _check_api_result(result)


@budget(60)
@given(n=st.one_of(st.integers(-3, 40), st.sampled_from([0.5, "4", None, True, np.int64(3), float("nan")])),
       seed=st.one_of(st.none(), st.integers(-5, 2**64), st.sampled_from(["x", 1.5])))
def test_api_sample(fitted, n, seed):
    result = outcome("api.sample", lambda: fitted.sample(n, seed=seed))
    if result is not None:
        assert isinstance(result, np.ndarray) and len(result) == n and np.isfinite(result).all()


FIT_PARAMS = st.fixed_dictionaries({}, optional={
    "latent_dim": st.sampled_from([0, -1, 1, 2, 2.5, "3"]),
    "hidden": st.sampled_from([None, (), (0,), (4,), (4, 3), "8"]),
    "epochs": st.sampled_from([0, 1, -2, 1.5]),
    "batch_size": st.sampled_from([0, 1, 7, 10**9]),
    "lr": st.sampled_from([1e-3, 0.0, -1.0, float("nan"), float("inf"), 1e12]),
    "likelihood": st.sampled_from(["auto", "bernoulli", "gaussian", "gaussian-learned", "discretized-logistic", "x"]),
    "binarize": st.sampled_from(["none", "static", "dynamic", "maybe"]),
    "arch": st.sampled_from(["auto", "mlp", "conv", "rnn"]),
    "test_fraction": st.sampled_from([0.1, 0.0, 1.0, 0.5]),
    "kl_weight": st.sampled_from([1.0, -1.0, float("nan")]),
    "objective": st.sampled_from(["elbo", "iwae", "other"]),
    "clip_grad_norm": st.sampled_from([None, 1.0, 0.0, -1.0]),
    "max_rollbacks": st.sampled_from([3, 0, -1]),
})


@budget(25)
@given(x=st.one_of(any_array(max_dims=4).filter(lambda a: a.size <= 400),
                   hnp.arrays(np.float32, st.tuples(st.integers(0, 12), st.integers(1, 6)),
                              elements=st.sampled_from([-1e30, -1.0, 0.0, 0.25, 1.0, 3.5, 1e30]).map(np.float32) | st.just(np.nan))),
       params=st.one_of(st.just({}), FIT_PARAMS))
def test_api_fit(x, params):
    def fit():
        return vaekit.VAE(**{"epochs": 1, "hidden": (4,), "latent_dim": 2, "device": "cpu", **params}).fit(x)

    vae = outcome("api.fit", fit)
    if vae is not None:
        assert all(torch.isfinite(v).all() for v in vae.model_.state_dict().values())


def test_the_counting_sees_what_it_counts(tmp_path):
    """The counts the report gives are real: a known-bad and a known-good input add one each."""
    before = Counter(OUTCOMES["npy"])
    load_file("npy", ".npy", b"not a numpy file")
    load_file("npy", ".npy", npy_bytes(np.random.default_rng(0).random((10, 3))))
    after = OUTCOMES["npy"]
    assert after["vaekit_error"] == before["vaekit_error"] + 1 and after["valid"] == before["valid"] + 1
