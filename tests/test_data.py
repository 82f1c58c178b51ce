"""Data sources: built-ins, arrays, image folders, CSV, binarization, and every bad input."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vaekit import DataError, load_dataset
from vaekit.data import parse_spec, to_original_units
from vaekit.data.idx import parse_idx, read_idx


def test_digits_is_the_embedded_default(digits):
    assert digits.shape == (1, 8, 8)
    assert len(digits.x_train) + len(digits.x_test) == 1797
    assert digits.kind == "unit"
    assert 0.0 == digits.x_train.min() and digits.x_train.max() == 1.0
    assert digits.y_train is not None and set(np.unique(digits.y_test)) == set(range(10))
    # the split is fixed: loading twice gives the same test set
    torch.testing.assert_close(load_dataset("digits").x_test, digits.x_test)


def test_parse_spec():
    assert parse_spec("fashion-mnist:test") == ("fashion-mnist", "test")
    assert parse_spec("data/my.npy:train") == ("data/my.npy", "train")
    assert parse_spec("digits") == ("digits", None)


def test_npy_vectors_are_standardized_and_come_back_in_original_units(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(50.0, 10.0, size=(200, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(str(tmp_path / "x.npy"), test_fraction=0.25)
    assert ds.shape == (5,) and ds.kind == "real"
    assert len(ds.x_test) == 50 and len(ds.x_train) == 150
    assert abs(float(ds.x_train.mean())) < 1e-4
    np.testing.assert_allclose(ds.split("all").numpy(), x, rtol=1e-5)  # original units by default
    model = ds.split("all", units="model").numpy()
    np.testing.assert_allclose(to_original_units(model, ds.config), x, rtol=1e-5)
    assert abs(float(ds.split("train", units="model").mean())) < 1e-4


@pytest.mark.parametrize("layout", ["nhw", "nchw", "nhwc", "nhwc4"])
def test_npy_image_layouts(tmp_path, layout):
    rng = np.random.default_rng(0)
    shapes = {"nhw": (20, 9, 7), "nchw": (20, 3, 9, 7), "nhwc": (20, 9, 7, 3), "nhwc4": (20, 9, 7, 4)}
    x = rng.integers(0, 256, size=shapes[layout], dtype=np.uint8)
    np.save(tmp_path / "img.npy", x)
    ds = load_dataset(str(tmp_path / "img.npy"))
    channels = 1 if layout == "nhw" else 3
    assert ds.shape == (channels, 9, 7)
    assert ds.kind == "unit" and float(ds.x_train.max()) <= 1.0


def test_npz_with_its_own_split_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.random((30, 4)), y_train=np.arange(30) % 3,
             x_test=rng.random((10, 4)), y_test=np.arange(10) % 3)
    ds = load_dataset(str(tmp_path / "d.npz"))
    assert (len(ds.x_train), len(ds.x_test)) == (30, 10)
    assert ds.kind == "unit" and list(ds.y_test) == list(np.arange(10) % 3)


def test_image_folder_with_class_subfolders_and_resizing(tmp_path):
    for label, colour in (("cats", 40), ("dogs", 200)):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("L", (20 + i, 16), color=colour).save(tmp_path / label / f"{i}.png")
    ds = load_dataset(str(tmp_path), image_size=(12, 10))
    assert ds.shape == (1, 12, 10)
    assert ds.class_names == ["cats", "dogs"]
    all_labels = ds.labels("all")
    assert list(all_labels) == [0, 0, 0, 1, 1, 1]
    assert ds.split("all")[0].mean().item() == pytest.approx(40 / 255, abs=1e-3)


def test_image_folder_rgb_and_default_size(tmp_path):
    for i in range(4):
        Image.new("RGB", (10, 6), color=(255, 0, i * 50)).save(tmp_path / f"{i}.jpg")
    ds = load_dataset(str(tmp_path))
    assert ds.shape == (3, 6, 10) and ds.y_train is None


def test_csv_with_header_label_column_and_standardization(tmp_path):
    path = tmp_path / "t.csv"
    rows = ["height,weight,species"] + [f"{150 + 3 * i},{50.5 + 2 * i},{'a' if i % 2 else 'b'}" for i in range(40)]
    path.write_text("\n".join(rows) + "\n")
    ds = load_dataset(str(path), label_column="species", test_fraction=0.2)
    assert ds.shape == (2,) and ds.config.columns == ["height", "weight"]
    assert ds.kind == "table" and [c["kind"] for c in ds.config.table["columns"]] == ["integer", "continuous"]
    assert ds.class_names == ["a", "b"] and set(ds.labels("all")) == {0, 1}
    back = ds.split("all")  # the rows as written, in file order
    np.testing.assert_array_equal(back["height"], np.arange(150, 270, 3))
    assert abs(float(ds.split("train", units="model").mean())) < 0.5  # standardized per column


def test_csv_without_header(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("1,2,3\n4,5,6\n7,8,9\n")
    ds = load_dataset(str(path))
    assert ds.shape == (3,) and ds.config.columns == ["col0", "col1", "col2"]


def test_static_and_dynamic_binarization(digits):
    static = load_dataset("digits", binarize="static", binarize_threshold=0.5)
    x = static.split("train")
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(x, (digits.x_train >= 0.5).float())
    drawn = load_dataset("digits", binarize="static")
    torch.testing.assert_close(drawn.split("test"), drawn.split("test"))  # one fixed random draw
    dynamic = load_dataset("digits", binarize="dynamic")
    assert set(torch.unique(dynamic.split("test")).tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(dynamic.x_train, digits.x_train)  # intensities kept for fresh draws


def test_random_binarization_is_a_bernoulli_draw_of_the_intensities():
    from vaekit.data.transforms import binarize

    p = torch.linspace(0, 1, 11).repeat(20_000, 1)
    drawn = binarize(p, generator=torch.Generator().manual_seed(1))
    assert drawn.dtype == p.dtype and set(torch.unique(drawn).tolist()) == {0.0, 1.0}
    frequency = drawn.mean(0)
    assert frequency[0] == 0 and frequency[-1] == 1
    assert ((frequency - p[0]).abs() <= 5 * (p[0] * (1 - p[0]) / len(p)).sqrt() + 1e-9).all()
    # On the CPU it is the very draw torch.bernoulli makes from the same generator state.
    torch.testing.assert_close(drawn, torch.bernoulli(p, generator=torch.Generator().manual_seed(1)), rtol=0, atol=0)


def test_binarizing_real_data_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(10, 3)))
    with pytest.raises(DataError, match="binarization needs data in \\[0, 1\\]"):
        load_dataset(str(tmp_path / "x.npy"), binarize="dynamic")


def test_like_prepares_new_data_as_the_run_did(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.normal(5.0, 2.0, size=(100, 3)))
    first = load_dataset(str(tmp_path / "a.npy"))
    np.save(tmp_path / "b.npy", rng.normal(5.0, 2.0, size=(10, 3)))
    second = load_dataset(str(tmp_path / "b.npy"), like=first.config)
    assert second.config.standardize_mean == first.config.standardize_mean


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_idx_round_trip_and_truncation(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "a-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(path), array)
    with pytest.raises(DataError, match="truncated"):
        parse_idx(_idx_bytes(array)[:-1])
    with pytest.raises(DataError, match="magic"):
        parse_idx(b"\x01\x02\x03\x04")


# --- bad input: one clear error, of vaekit's own type ------------------------------------------------

def test_missing_path():
    with pytest.raises(DataError, match="neither a built-in data set"):
        load_dataset("/no/such/file.npy")


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="holds no images"):
        load_dataset(str(tmp_path))


def test_unreadable_image(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        load_dataset(str(tmp_path))


def test_non_numeric_csv_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i * 1.5}\n" for i in range(30)) + "3,oops\n")
    with pytest.raises(DataError, match="column 'b' mixes numbers and text: 'oops' in row 30"):
        load_dataset(str(path))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_values(tmp_path, bad):
    x = np.ones((10, 3))
    x[4, 1] = bad
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError, match="NaN or infinite.*example 4"):
        load_dataset(str(tmp_path / "x.npy"))


def test_pickled_object_array_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    np.save(tmp_path / "x.npy", np.array([Exploit()], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="never unpickles"):
        load_dataset(str(tmp_path / "x.npy"))
    assert not marker.exists()
    (tmp_path / "y.npy").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(DataError):
        load_dataset(str(tmp_path / "y.npy"))
    assert not marker.exists()


@pytest.mark.parametrize("array,match", [
    (np.ones(10), "one row per example"),
    (np.ones((0, 3)), "no examples"),
    (np.array(["a", "b"]).reshape(2, 1), "needs numbers"),
    (np.ones((2, 3, 4, 5, 6)), "vectors \\(2-D\\) or images"),
    (np.ones((1, 3)), "at least 2"),
])
def test_bad_arrays(tmp_path, array, match):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(DataError, match=match):
        load_dataset(str(tmp_path / "x.npy"))


def test_unknown_format_and_single_image(tmp_path):
    (tmp_path / "x.hdf5").write_bytes(b"\x89HDF")
    with pytest.raises(DataError, match="unknown data format"):
        load_dataset(str(tmp_path / "x.hdf5"))
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError, match="cannot read .*x.parquet as Parquet"):
        load_dataset(str(tmp_path / "x.parquet"))
    Image.new("L", (4, 4)).save(tmp_path / "one.png")
    with pytest.raises(DataError, match="single image"):
        load_dataset(str(tmp_path / "one.png"))


def test_truncated_npy(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((100, 10)))
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(str(tmp_path / "x.npy"))


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path))


def test_fashion_mnist_loads_with_labels_and_split(fashion_mnist):
    assert fashion_mnist.shape == (1, 28, 28)
    assert (len(fashion_mnist.x_train), len(fashion_mnist.x_test)) == (60_000, 10_000)
    assert fashion_mnist.kind == "unit" and len(fashion_mnist.class_names) == 10
    assert np.bincount(fashion_mnist.y_test).tolist() == [1000] * 10
