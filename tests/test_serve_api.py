"""The service's JSON API through FastAPI's test client: every endpoint against the library, every bad input."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import sys
import threading
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import norm
from torch.distributions import Normal, kl_divergence

import vaekit
from vaekit.anomaly import AnomalyDetector, anomaly_scores

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'vaekit[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from vaekit.serve import Explorer, ReferenceData, ServeLimits, create_app  # noqa: E402
from vaekit.serve.app import ModelWorker, ServiceBusy  # noqa: E402

# The service answers only to loopback host names, not to the test client's default "testserver".
LOCAL = "http://127.0.0.1"


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vae(trained_run):
    return vaekit.load(trained_run)


@pytest.fixture(scope="module")
def reference(digits):
    return ReferenceData(digits.split("test").numpy(), "digits:test", digits.labels("test"), digits.class_names)


@pytest.fixture(scope="module")
def explorer(trained_run, vae, reference):
    return Explorer.from_run(trained_run, vae=vae, reference=reference)


@pytest.fixture(scope="module")
def client(explorer):
    with TestClient(create_app(explorer), base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def small_limits_client(trained_run, vae):
    limits = ServeLimits(max_upload_bytes=32 * 1024, max_image_pixels=64 * 64, max_samples=5, max_latent_batch=3,
                         max_interpolation_steps=6, max_latent_abs=10.0)
    with TestClient(create_app(Explorer(vae, limits=limits)), base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A run trained on a CSV whose columns live on very different scales."""
    directory = tmp_path_factory.mktemp("csv")
    rng = np.random.default_rng(0)
    n = 300
    latent = rng.normal(size=(n, 2))
    table = np.column_stack([1000 + 50 * latent[:, 0], 0.01 * latent[:, 1], 5 + latent.sum(axis=1), rng.normal(size=n)])
    path = directory / "table.csv"
    lines = ["price,rate,score,noise"] + [",".join(f"{v:.6f}" for v in row) for row in table]
    path.write_text("\n".join(lines) + "\n")
    run = directory / "run"
    vaekit.VAE(latent_dim=2, hidden=(16,), epochs=3, seed=0, device="cpu").fit(vaekit.load_dataset(str(path)), run_dir=run)
    return run, table


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory, digits):
    run = tmp_path_factory.mktemp("serve2d") / "d2"
    vaekit.VAE(latent_dim=2, hidden=(32,), epochs=2, seed=0, device="cpu").fit(digits, run_dir=run)
    return run


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def as_pixels(x: np.ndarray) -> np.ndarray:
    """What the PNG of a [0, 1] image holds: 8-bit values (the library's image_grid rounds +0.5)."""
    return (np.clip(x, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def upload(data: bytes, name: str = "x.png", kind: str = "image/png") -> dict:
    return {"file": (name, data, kind)}


@pytest.fixture(scope="module")
def example(digits):
    """One test digit as 8-bit pixels (what a PNG holds) and in [0, 1]."""
    pixels = np.rint(digits.split("test").numpy()[3, 0] * 255).astype(np.uint8)
    return pixels, pixels.astype(np.float32)[None, None] / 255.0


# --- the endpoints, checked against the library -----------------------------------------------------

def test_info_ranks_dimensions_by_kl_to_the_prior(client, vae, reference):
    info = client.get("/api/info").json()
    assert info["kind"] == "image" and info["input_shape"] == [1, 8, 8] and info["latent_dim"] == 4
    mean, variance = vae.encode(reference.x)
    posterior = Normal(torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(variance, dtype=torch.float64).sqrt())
    kl = kl_divergence(posterior, Normal(0.0, 1.0)).mean(dim=0).numpy()
    ranked = [d["index"] for d in info["dimensions"]]
    assert ranked == list(np.argsort(-kl, kind="stable"))
    np.testing.assert_allclose([d["kl"] for d in info["dimensions"]], kl[ranked], rtol=1e-6)
    assert info["reference"] == {"source": "digits:test", "size": 359, "labels": True}
    assert info["limits"]["max_upload_bytes"] == 4 * 2**20


def test_sample_draws_the_prior_like_the_library(client, vae):
    body = client.post("/api/sample", json={"n": 5, "seed": 7}).json()
    assert body["seed"] == 7
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(7)).numpy()
    np.testing.assert_allclose(body["z"], z, rtol=1e-6)
    images = np.stack([decode_png(s) for s in body["outputs"]["images"]])
    np.testing.assert_array_equal(images, as_pixels(vae.sample(5, seed=7)[:, 0]))
    other = client.post("/api/sample", json={"n": 5}).json()  # no seed: a fresh one, returned
    assert other["seed"] != body["seed"] or other["z"] != body["z"]


def test_decode_and_its_png_endpoint(client, vae):
    z = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    body = client.post("/api/decode", json={"z": z.tolist()}).json()
    np.testing.assert_allclose(body["z"], z, rtol=1e-6)
    images = np.stack([decode_png(s) for s in body["outputs"]["images"]])
    np.testing.assert_array_equal(images, as_pixels(vae.decode(z)[:, 0]))
    response = client.post("/api/decode.png", json={"z": z.tolist()})
    assert response.headers["content-type"] == "image/png"
    grid = Image.open(io.BytesIO(response.content))
    assert grid.width > 3 * 8  # a tiled grid, scaled up
    response = client.get("/api/sample.png?n=4&seed=3")
    assert response.status_code == 200 and response.headers["x-vaekit-seed"] == "3"


def test_encode_reconstruct_score_analyze_an_uploaded_png(client, vae, explorer, example, reference):
    pixels, x = example
    body = client.post("/api/encode", files=upload(png(pixels))).json()
    mean, variance = vae.encode(x)
    np.testing.assert_allclose(body["mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(body["variance"], variance, rtol=1e-5)
    assert "PNG of 8x8" in body["note"]

    body = client.post("/api/reconstruct", files=upload(png(pixels))).json()
    np.testing.assert_array_equal(decode_png(body["inputs"]["images"][0]), pixels)
    np.testing.assert_array_equal(decode_png(body["reconstructions"]["images"][0]), as_pixels(vae.reconstruct(x)[0, 0]))

    expected = anomaly_scores(vae, x, num_importance_samples=100)
    body = client.post("/api/score", files=upload(png(pixels))).json()
    assert body["score"] == "neg_log_likelihood"  # grey digits, no binarization: input complexity does not apply
    assert set(body["scores"]) == set(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(body["scores"][name], values, rtol=1e-5)
    reference_scores = anomaly_scores(vae, reference.x, ["neg_log_likelihood"], num_importance_samples=100)
    share = 100 * np.mean(reference_scores["neg_log_likelihood"] <= expected["neg_log_likelihood"][0])
    assert body["percentiles"][0] == pytest.approx(share)
    assert body["threshold"] is None and body["is_anomaly"] is None

    body = client.post("/api/analyze", files=upload(png(pixels))).json()
    np.testing.assert_allclose(body["mean"], mean[0], rtol=1e-5, atol=1e-6)
    assert body["anomaly"]["value"] == pytest.approx(expected["neg_log_likelihood"][0], rel=1e-5)
    assert body["anomaly"]["percentile"] == pytest.approx(share)
    # The heat map: each pixel's share of -log p(x|z), scaled from 0 to the largest share, viridis.
    from matplotlib import colormaps

    from vaekit.anomaly import feature_contributions

    heat = feature_contributions(vae, x, seed=0)[0].sum(0)
    explanation = body["explanation"]
    assert explanation["kind"] == "image" and explanation["max_nats"] == pytest.approx(heat.max(), rel=1e-6)
    assert explanation["total_nats"] == pytest.approx(heat.sum(), rel=1e-6)
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(explanation["image"]))).convert("RGB"))
    expected_rgb = np.rint(255 * colormaps["viridis"](np.clip(heat / heat.max(), 0, 1))[..., :3])
    assert shown.shape == (8, 8, 3) and np.abs(shown.astype(int) - expected_rgb).max() <= 1


def test_json_uploads_are_examples_in_the_datas_units(client, vae, example):
    _, x = example
    for value in (x[0, 0].tolist(), x.reshape(-1).tolist(), np.concatenate([x, x]).tolist()):
        body = client.post("/api/encode", files=upload(json.dumps(value).encode(), "x.json", "application/json")).json()
        expected = vae.transform(np.asarray(value, dtype=np.float32).reshape(-1, 1, 8, 8))
        np.testing.assert_allclose(body["mean"], expected, rtol=1e-5, atol=1e-6)


def test_image_uploads_are_converted_like_the_training_images(client, vae):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(40, 24, 3), dtype=np.uint8)
    body = client.post("/api/reconstruct", files=upload(png(rgb, "RGB"))).json()
    expected = np.asarray(Image.fromarray(rgb, "RGB").convert("L").resize((8, 8), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(decode_png(body["inputs"]["images"][0]), expected)
    assert "24x40" in body["note"] and "resized to 8x8" in body["note"]
    # Transparent pixels count as the black background; opaque ones keep their value.
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = 255
    rgba[:4, :, 3] = 255
    body = client.post("/api/reconstruct", files=upload(png(rgba, "RGBA"))).json()
    seen = decode_png(body["inputs"]["images"][0])
    assert (seen[:4] == 255).all() and (seen[4:] == 0).all()
    inverted = client.post("/api/reconstruct", files=upload(png(rgba, "RGBA")), data={"invert": "true"}).json()
    np.testing.assert_array_equal(decode_png(inverted["inputs"]["images"][0]), 255 - seen)
    jpeg = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(jpeg, format="JPEG")
    assert client.post("/api/encode", files=upload(jpeg.getvalue(), "x.jpg", "image/jpeg")).status_code == 200
    mpo = io.BytesIO()  # the JPEG flavour many cameras write
    Image.fromarray(rgb, "RGB").save(mpo, format="MPO", save_all=True, append_images=[Image.fromarray(rgb, "RGB")])
    assert client.post("/api/encode", files=upload(mpo.getvalue(), "x.jpg", "image/jpeg")).status_code == 200


def test_interpolate_linear_and_spherical(client, vae):
    a, b = np.array([1.0, -2.0, 0.5, 0.0]), np.array([-1.0, 1.0, 2.0, 1.5])
    body = client.post("/api/interpolate", json={"z_start": a.tolist(), "z_end": b.tolist(), "steps": 5}).json()
    np.testing.assert_allclose(body["z"], np.linspace(a, b, 5), rtol=1e-5, atol=1e-6)
    images = np.stack([decode_png(s) for s in body["outputs"]["images"]])
    np.testing.assert_array_equal(images, as_pixels(vae.decode(np.linspace(a, b, 5).astype(np.float32))[:, 0]))
    body = client.post("/api/interpolate", json={"z_start": a.tolist(), "z_end": b.tolist(), "steps": 7,
                                                 "method": "spherical"}).json()
    z = np.asarray(body["z"])
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), np.linspace(np.linalg.norm(a), np.linalg.norm(b), 7), rtol=1e-5)
    directions = z / np.linalg.norm(z, axis=1, keepdims=True)  # equal angles between consecutive points
    angles = np.arccos(np.clip((directions[1:] * directions[:-1]).sum(axis=1), -1, 1))
    np.testing.assert_allclose(angles, angles[0], rtol=1e-4)


def test_examples_come_from_the_reference_data(client, vae, reference, digits):
    body = client.get("/api/examples?n=4&seed=2").json()
    index = np.asarray(body["indices"])
    assert len(set(index.tolist())) == 4
    assert body["labels"] == [str(int(label)) for label in digits.labels("test")[index]]
    np.testing.assert_allclose(body["z"], vae.transform(reference.x[index]), rtol=1e-5, atol=1e-6)


def test_latent_map_axes_are_prior_quantiles_and_points_round_trip(run_2d, digits):
    vae = vaekit.load(run_2d)
    reference = ReferenceData(digits.split("test").numpy(), "digits:test", digits.labels("test"))
    with TestClient(create_app(Explorer(vae, reference=reference)), base_url=LOCAL) as c:
        body = c.get("/api/latent-map?steps=8").json()
    quantiles = norm.ppf(np.linspace(0.05, 0.95, 8))
    np.testing.assert_allclose(body["z1_axis"], quantiles, atol=1e-5)
    np.testing.assert_allclose(body["z2_axis"], quantiles[::-1], atol=1e-5)
    assert Image.open(io.BytesIO(base64.b64decode(body["image"]))).size == (64, 64)

    def fraction_to_z(f, axis):  # the page's rule: linear between cell centres, extended at the edges
        n = len(axis)
        position = f * n - 0.5
        i = min(max(int(np.floor(position)), 0), n - 2)
        return axis[i] + (position - i) * (axis[i + 1] - axis[i])

    means = vae.transform(reference.x).astype(np.float64)
    points = body["points"]
    assert len(points["u"]) + points["outside"] == len(means)
    back = np.array([[fraction_to_z(u, body["z1_axis"]), fraction_to_z(v, body["z2_axis"])]
                     for u, v in zip(points["u"], points["v"])])
    nearest = [int(np.argmin(np.abs(means - b).sum(axis=1))) for b in back]
    np.testing.assert_allclose(back, means[nearest], atol=1e-4)  # clicking a dot decodes that example's mean
    assert nearest == sorted(set(nearest))
    between_outer_centres = np.flatnonzero((np.abs(means) <= quantiles[-1]).all(axis=1))
    assert set(between_outer_centres.tolist()) <= set(nearest)


def test_tabular_runs_decode_rows_with_their_column_names_in_original_units(csv_run):
    run, table = csv_run
    vae = vaekit.load(run)
    with TestClient(create_app(Explorer.from_run(run, vae=vae)), base_url=LOCAL) as c:
        info = c.get("/api/info").json()
        assert info["kind"] == "vector" and info["columns"] == ["price", "rate", "score", "noise"]
        body = c.post("/api/sample", json={"n": 200, "seed": 0}).json()
        rows = np.asarray(body["outputs"]["rows"])
        assert body["outputs"]["columns"] == ["price", "rate", "score", "noise"]
        assert body["outputs"]["images"] is None
        assert abs(rows[:, 0].mean() - 1000) < 50 and rows[:, 1].std() < 0.05  # original units, not standardized
        row = dict(zip(info["columns"], table[0].tolist()))
        by_name = c.post("/api/encode", files=upload(json.dumps(row).encode(), "row.json", "application/json")).json()
        by_order = c.post("/api/encode", files=upload(json.dumps(table[0].tolist()).encode(), "r.json", "application/json")).json()
        assert by_name["mean"] == by_order["mean"]
        import pandas as pd

        rows_in = pd.DataFrame(table[:1], columns=info["columns"])  # a table run takes its rows as a DataFrame
        np.testing.assert_allclose(by_name["mean"], vae.transform(rows_in), rtol=1e-5, atol=1e-6)
        assert c.post("/api/encode", files=upload(png(np.zeros((8, 8), np.uint8)))).status_code == 415
        assert c.post("/api/decode.png", json={"z": [[0.0, 0.0]]}).status_code == 415
        missing = c.post("/api/encode", files=upload(json.dumps({"price": 1.0}).encode(), "r.json", "application/json"))
        assert missing.status_code == 422 and "missing: rate" in missing.json()["detail"]
        assert c.get("/api/latent-map?steps=4").json()["image"] is None


def test_a_saved_detector_gives_its_verdict_and_a_stale_one_is_reported(tmp_path, trained_run, digits, example):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    clean = digits.split("test").numpy()[:200]
    AnomalyDetector(str(run), target_fpr=0.05).fit(clean).save()
    detector = AnomalyDetector.load(run)
    pixels, x = example
    with TestClient(create_app(Explorer.from_run(run)), base_url=LOCAL) as c:
        assert c.get("/api/info").json()["anomaly"]["detector"]["threshold"] == pytest.approx(detector.threshold_)
        body = c.post("/api/analyze", files=upload(png(pixels))).json()["anomaly"]
    assert body["is_anomaly"] == bool(detector.predict(x)[0] == -1)
    assert body["value"] == pytest.approx(detector.anomaly_score(x)[0], rel=1e-6)
    other = tmp_path / "other"
    vaekit.VAE(latent_dim=4, hidden=(64,), epochs=1, seed=5, device="cpu").fit(digits, run_dir=other)
    shutil.copy(run / "anomaly_detector.json", other / "anomaly_detector.json")
    stale = Explorer.from_run(other)
    assert stale.detector is None and "other weights" in stale.info()["anomaly"]["detector_problem"]


def test_openapi_schema_lists_the_endpoints_and_the_upload_field(client):
    schema = client.get("/openapi.json").json()
    for path in ("/api/info", "/api/sample", "/api/decode", "/api/encode", "/api/reconstruct", "/api/score",
                 "/api/analyze", "/api/interpolate", "/api/examples", "/api/latent-map", "/api/sample.png"):
        assert path in schema["paths"], path
    form = schema["paths"]["/api/analyze"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = schema["components"]["schemas"][form["$ref"].rsplit("/", 1)[1]] if "$ref" in form else form
    assert "file" in form["properties"] and "file" in form["required"]


def test_the_page_and_its_files_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and "vaekit explorer" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]


# --- bad input: every one is a 4xx that says what is wrong ---------------------------------------------

def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims a width x height image (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


GOOD_PNG = png(np.zeros((8, 8), dtype=np.uint8))
NOISE_PNG = png(np.random.default_rng(0).integers(0, 256, size=(32, 32), dtype=np.uint8))
Z = [[0.0, 0.0, 0.0, 0.0]]
JSON = {"content-type": "application/json"}

BAD_REQUESTS = [
    # (id, method, path, request keyword arguments, status, words the detail must contain)
    ("upload too large", "post", "/api/analyze", {"files": upload(b"\0" * (5 * 2**20))}, 413, "at most 4194304 bytes"),
    ("upload field misnamed", "post", "/api/analyze", {"files": {"image": ("x.png", GOOD_PNG, "image/png")}}, 422,
     "field named 'file'"),
    ("no body", "post", "/api/encode", {}, 422, "field named 'file'"),
    ("file as a text field", "post", "/api/analyze", {"data": {"file": "/etc/passwd"}}, 422, "must be an uploaded file"),
    ("not an image", "post", "/api/analyze", {"files": upload(b"GIF89a but not really" * 10)}, 415, "neither an image"),
    ("empty file", "post", "/api/encode", {"files": upload(b"")}, 422, "empty"),
    ("truncated PNG", "post", "/api/analyze", {"files": upload(NOISE_PNG[:len(NOISE_PNG) // 2])}, 422, "truncated"),
    ("decompression bomb", "post", "/api/analyze", {"files": upload(png_claiming(30000, 30000))}, 413, "pixels"),
    ("EPS is not an accepted format", "post", "/api/encode",
     {"files": upload(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n", "x.eps", "application/postscript")}, 415,
     "neither an image"),
    ("upload of the wrong shape", "post", "/api/encode", {"files": upload(b"[1, 2, 3]", "x.json")}, 422, "shape (3,)"),
    ("NaN in an upload", "post", "/api/encode", {"files": upload(b"[" + b"0," * 63 + b"NaN]", "x.json")}, 422,
     "NaN or infinite values at [63]"),
    ("infinity in an upload", "post", "/api/encode", {"files": upload(b"[" + b"0," * 63 + b"1e999]", "x.json")}, 422,
     "NaN or infinite"),
    ("strings in an upload", "post", "/api/encode", {"files": upload(json.dumps(["a"] * 64).encode(), "x.json")}, 422,
     "numbers only; it holds strings"),
    ("booleans in an upload", "post", "/api/encode", {"files": upload(b"[" + b"true," * 63 + b"0]", "x.json")}, 422,
     "true/false"),
    ("ragged upload", "post", "/api/encode", {"files": upload(b"[[1, 2], [3]]", "x.json")}, 422, "ragged"),
    ("invalid JSON upload", "post", "/api/encode", {"files": upload(b"[1, 2,", "x.json")}, 422, "not valid JSON"),
    ("deeply nested upload", "post", "/api/encode", {"files": upload(b"[" * 100000, "x.json")}, 422, "nested too deeply"),
    ("object upload for an image model", "post", "/api/encode", {"files": upload(b'{"a": 1}', "x.json")}, 422,
     "takes images"),
    ("analyze of two examples", "post", "/api/analyze", {"files": upload(json.dumps([[0.0] * 64] * 2).encode(), "x.json")},
     422, "one example"),
    ("invert given a word", "post", "/api/encode", {"files": upload(GOOD_PNG), "data": {"invert": "maybe"}}, 422,
     "invert"),
    ("decode: wrong latent size", "post", "/api/decode", {"json": {"z": [[0.0, 0.0, 0.0]]}}, 422, "shape (n, 4)"),
    ("decode: one vector, not a list", "post", "/api/decode", {"json": {"z": [0.0, 0.0, 0.0, 0.0]}}, 422,
     "z[0]: Input should be a valid list"),
    ("decode: ragged", "post", "/api/decode", {"json": {"z": [[0.0] * 4, [0.0] * 3]}}, 422, "different lengths"),
    ("decode: empty", "post", "/api/decode", {"json": {"z": []}}, 422, "no latent vectors"),
    ("decode: NaN", "post", "/api/decode", {"content": b'{"z": [[0, NaN, 0, 0]]}', "headers": JSON}, 422,
     "z[0][1]: Input should be a finite number"),
    ("decode: infinity", "post", "/api/decode", {"content": b'{"z": [[0, 0, 1e999, 0]]}', "headers": JSON}, 422,
     "finite number"),
    ("decode: far outside the prior", "post", "/api/decode", {"json": {"z": [[0.0, 1e6, 0.0, 0.0]]}}, 422, "+-100"),
    ("decode: strings", "post", "/api/decode", {"json": {"z": [["0", "0", "0", "0"]]}}, 422, "valid number"),
    ("decode: booleans", "post", "/api/decode", {"json": {"z": [[True, False, True, False]]}}, 422, "valid number"),
    ("decode: a path instead of vectors", "post", "/api/decode", {"json": {"z": "/etc/passwd"}}, 422, "valid list"),
    ("decode: an extra field", "post", "/api/decode", {"json": {"z": Z, "path": "/etc/passwd"}}, 422,
     "path is not a field"),
    ("decode: too many vectors", "post", "/api/decode", {"json": {"z": Z * 257}}, 422, "at most 256"),
    ("decode: invalid JSON", "post", "/api/decode", {"content": b'{"z": [[0, 0,', "headers": JSON}, 422, "not valid JSON"),
    ("decode: deeply nested JSON", "post", "/api/decode", {"content": b"[" * 100000, "headers": JSON}, 400,
     "nested too deeply"),
    ("decode: JSON of the wrong type", "post", "/api/decode", {"json": [1, 2, 3]}, 422, "valid dictionary"),
    ("decode: not JSON at all", "post", "/api/decode", {"content": b"z=1", "headers": {"content-type": "text/plain"}},
     422, ""),
    ("decode.png: NaN", "post", "/api/decode.png", {"content": b'{"z": [[NaN, 0, 0, 0]]}', "headers": JSON}, 422,
     "finite number"),
    ("sample: zero", "post", "/api/sample", {"json": {"n": 0}}, 422, "greater than or equal to 1"),
    ("sample: too many", "post", "/api/sample", {"json": {"n": 10**6}}, 422, "at most 256"),
    ("sample: a string", "post", "/api/sample", {"json": {"n": "5"}}, 422, "valid integer"),
    ("sample: a fraction", "post", "/api/sample", {"json": {"n": 2.5}}, 422, "valid integer"),
    ("sample: negative seed", "post", "/api/sample", {"json": {"n": 2, "seed": -1}}, 422, "seed"),
    ("sample.png: not a number", "get", "/api/sample.png?n=abc", {}, 422, "n: Input should be a valid integer"),
    ("sample.png: too many", "get", "/api/sample.png?n=100000", {}, 422, "at most 256"),
    ("interpolate: a path as the method", "post", "/api/interpolate",
     {"json": {"z_start": Z[0], "z_end": Z[0], "method": "../../etc/passwd"}}, 422, "'linear' or 'spherical'"),
    ("interpolate: one step", "post", "/api/interpolate", {"json": {"z_start": Z[0], "z_end": Z[0], "steps": 1}}, 422,
     "steps"),
    ("interpolate: too many steps", "post", "/api/interpolate",
     {"json": {"z_start": Z[0], "z_end": Z[0], "steps": 5000}}, 422, "at most 64"),
    ("interpolate: wrong length", "post", "/api/interpolate", {"json": {"z_start": [0.0], "z_end": Z[0]}}, 422,
     "shape (4,)"),
    ("examples: too many", "get", "/api/examples?n=1000", {}, 422, "at most 256"),
    ("label for an unconditional model: sample", "post", "/api/sample", {"json": {"n": 2, "label": "3"}}, 422,
     "not conditional"),
    ("label for an unconditional model: decode", "post", "/api/decode", {"json": {"z": Z, "label": 3}}, 422,
     "not conditional"),
    ("label for an unconditional model: sample.png", "get", "/api/sample.png?n=2&label=3", {}, 422, "not conditional"),
    ("label for an unconditional model: interpolate", "post", "/api/interpolate",
     {"json": {"z_start": Z[0], "z_end": Z[0], "label": "3"}}, 422, "not conditional"),
    ("label for an unconditional model: upload", "post", "/api/analyze",
     {"files": upload(GOOD_PNG), "data": {"label": "3"}}, 422, "not conditional"),
    ("label of the wrong type", "post", "/api/sample", {"json": {"n": 2, "label": True}}, 422,
     "label: must be a class name"),
    ("latent map of a 4-D latent", "get", "/api/latent-map", {}, 422, "needs a 2-D latent"),
    ("static path traversal", "get", "/static/../../../../etc/passwd", {}, 404, ""),
    ("encoded static path traversal", "get", "/static/..%2f..%2f..%2f..%2fetc%2fpasswd", {}, 404, ""),
    ("unknown endpoint", "get", "/api/files?path=/etc/passwd", {}, 404, ""),
    ("wrong method", "get", "/api/decode", {}, 405, ""),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(client, case):
    _, method, path, kwargs, status, words = case
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    if words:
        assert words in response.json()["detail"]


def test_a_body_growing_past_the_limit_is_cut_off_while_it_is_read(small_limits_client):
    sent = []

    def body():  # chunked: no Content-Length to refuse it by
        for _ in range(64):
            sent.append(16 * 1024)
            yield b" " * (16 * 1024)

    response = small_limits_client.post("/api/decode", content=body(), headers=JSON)
    assert response.status_code == 413 and "at most 32768 bytes" in response.json()["detail"]
    response = small_limits_client.post("/api/encode", files=upload(b"\0" * 40_000))
    assert response.status_code == 413


@pytest.mark.parametrize("method, path, kwargs, words", [
    ("post", "/api/sample", {"json": {"n": 6}}, "at most 5"),
    ("get", "/api/examples?n=2", {}, "no reference data"),
    ("post", "/api/decode", {"json": {"z": Z * 4}}, "at most 3"),
    ("post", "/api/decode", {"json": {"z": [[0.0, 0.0, 11.0, 0.0]]}}, "+-10"),
    ("post", "/api/encode", {"files": upload(json.dumps([[0.0] * 64] * 4).encode(), "x.json")}, "at most 3"),
    ("post", "/api/interpolate", {"json": {"z_start": Z[0], "z_end": Z[0], "steps": 7}}, "at most 6"),
    ("post", "/api/encode", {"files": upload(png(np.zeros((65, 64), np.uint8)))}, "at most 4096"),
])
def test_configured_limits_are_enforced(small_limits_client, method, path, kwargs, words):
    response = getattr(small_limits_client, method)(path, **kwargs)
    assert 400 <= response.status_code < 500 and words in response.json()["detail"], response.text


def test_limits_must_be_positive():
    with pytest.raises(vaekit.ConfigError, match="max_samples"):
        ServeLimits(max_samples=0)
    with pytest.raises(vaekit.ConfigError, match="whole number"):
        ServeLimits(max_latent_batch=2.5)


# --- the model worker: off the event loop, one at a time, bounded queue -----------------------------------

def test_the_worker_runs_one_job_at_a_time_and_refuses_beyond_max_pending():
    worker = ModelWorker(max_pending=2)
    release = threading.Event()
    running = []

    def job(i):
        running.append(i)
        assert len(running) - len(done) == 1  # never two at once
        release.wait(5)
        done.append(i)
        return i

    done: list[int] = []

    async def scenario():
        first = asyncio.ensure_future(worker.run(job, 1))
        second = asyncio.ensure_future(worker.run(job, 2))
        await asyncio.sleep(0.05)
        assert worker.pending == 2
        with pytest.raises(ServiceBusy, match="busy with 2 requests"):
            await worker.run(job, 3)
        release.set()
        return await asyncio.gather(first, second)

    assert asyncio.run(scenario()) == [1, 2]
    assert worker.pending == 0 and done == [1, 2]
    worker.shutdown()


def test_busy_service_answers_503_with_retry_after(vae):
    app = create_app(Explorer(vae, limits=ServeLimits(max_pending=1)))
    gate = threading.Event()
    slow_decode = app.state.explorer.decode

    def blocked(z, label=None):
        gate.wait(5)
        return slow_decode(z, label)

    app.state.explorer.decode = blocked
    with TestClient(app, base_url=LOCAL) as c:
        results = {}
        first = threading.Thread(target=lambda: results.setdefault("first", c.post("/api/decode", json={"z": Z})))
        first.start()
        for _ in range(100):
            if app.state.worker.pending == 1:
                break
            threading.Event().wait(0.01)
        busy = c.post("/api/decode", json={"z": Z})
        gate.set()
        first.join(10)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "busy" in busy.json()["detail"]
    assert results["first"].status_code == 200


def test_missing_web_packages_give_one_clear_error(monkeypatch, trained_run, capsys):
    from vaekit.cli import main
    from vaekit.export import MissingDependencyError
    from vaekit.serve import require_serve_packages

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(MissingDependencyError, match=r"uvicorn.*pip install 'vaekit\[serve\]'"):
        require_serve_packages()
    assert main(["serve", str(trained_run), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'vaekit[serve]'" in err


# --- conditional runs: a label on every generation and upload request ---------------------------------------

@pytest.fixture(scope="module")
def conditional_vae(tmp_path_factory, digits):
    run = tmp_path_factory.mktemp("serve-conditional") / "cvae"
    vaekit.VAE(conditional=True, latent_dim=2, hidden=(32,), epochs=2, seed=0, device="cpu").fit(digits, run_dir=run)
    return run, vaekit.load(run)


@pytest.fixture(scope="module")
def conditional_client(conditional_vae, reference):
    run, vae = conditional_vae
    with TestClient(create_app(Explorer.from_run(run, vae=vae, reference=reference)), base_url=LOCAL) as c:
        yield c


CLASSES = [str(i) for i in range(10)]


def test_info_says_whether_the_model_is_conditional_and_lists_its_classes(conditional_client, client):
    info = conditional_client.get("/api/info").json()
    assert info["conditional"] is True and info["classes"] == CLASSES
    assert info["dimensions_ranked_by"] == "kl" and info["anomaly"]["percentiles"] is True
    info = client.get("/api/info").json()
    assert info["conditional"] is False and info["classes"] is None


def test_conditional_samples_and_decodings_are_of_the_label_given(conditional_client, conditional_vae):
    _, vae = conditional_vae
    three = conditional_client.post("/api/sample", json={"n": 4, "seed": 5, "label": "3"}).json()
    seven = conditional_client.post("/api/sample", json={"n": 4, "seed": 5, "label": "7"}).json()
    assert three["z"] == seven["z"]  # the same draws from the prior, decoded under another class
    z = np.asarray(three["z"], dtype=np.float32)
    for body, label in ((three, "3"), (seven, "7")):
        images = np.stack([decode_png(s) for s in body["outputs"]["images"]])
        np.testing.assert_array_equal(images, as_pixels(vae.decode(z, y=label)[:, 0]))
    assert three["outputs"]["images"] != seven["outputs"]["images"]
    by_index = conditional_client.post("/api/sample", json={"n": 4, "seed": 5, "label": 3}).json()
    assert by_index["outputs"] == three["outputs"]

    decoded = conditional_client.post("/api/decode", json={"z": three["z"], "label": "3"}).json()
    assert decoded["outputs"] == three["outputs"]
    png_three = conditional_client.get("/api/sample.png?n=4&seed=5&label=3")
    png_seven = conditional_client.get("/api/sample.png?n=4&seed=5&label=7")
    assert png_three.status_code == png_seven.status_code == 200 and png_three.content != png_seven.content
    assert conditional_client.post("/api/decode.png", json={"z": three["z"], "label": 7}).content == png_seven.content
    path = conditional_client.post("/api/interpolate", json={"z_start": three["z"][0], "z_end": three["z"][1],
                                                             "steps": 3, "label": "3"}).json()
    images = np.stack([decode_png(s) for s in path["outputs"]["images"]])
    np.testing.assert_array_equal(images, as_pixels(vae.decode(np.asarray(path["z"], np.float32), y=3)[:, 0]))
    maps = [conditional_client.get(f"/api/latent-map?steps=4&label={label}").json() for label in ("0", "1")]
    assert maps[0]["image"] != maps[1]["image"] and maps[0]["z1_axis"] == maps[1]["z1_axis"]


def test_conditional_uploads_are_read_under_the_label_given(conditional_client, conditional_vae, example):
    _, vae = conditional_vae
    pixels, x = example
    body = conditional_client.post("/api/encode", files=upload(png(pixels)), data={"label": "4"}).json()
    mean, variance = vae.encode(x, "4")
    np.testing.assert_allclose(body["mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(body["variance"], variance, rtol=1e-5)
    body = conditional_client.post("/api/reconstruct", files=upload(png(pixels)), data={"label": "4"}).json()
    np.testing.assert_array_equal(decode_png(body["reconstructions"]["images"][0]),
                                  as_pixels(vae.reconstruct(x, "4")[0, 0]))
    body = conditional_client.post("/api/score", files=upload(png(pixels)), data={"label": "4"}).json()
    expected = anomaly_scores(vae, x, labels="4", typicality=vaekit.anomaly.load_typicality(conditional_vae[0], vae))
    for name, values in expected.items():
        np.testing.assert_allclose(body["scores"][name], values, rtol=1e-5)
    other = conditional_client.post("/api/score", files=upload(png(pixels)), data={"label": "8"}).json()
    assert other["values"] != body["values"]  # how unusual the example is depends on the class it is read as
    body = conditional_client.post("/api/analyze", files=upload(png(pixels)), data={"label": 4}).json()
    np.testing.assert_allclose(body["mean"], mean[0], rtol=1e-5, atol=1e-6)
    explanation = body["explanation"]
    assert explanation["kind"] == "image" and np.isfinite(explanation["total_nats"]) and explanation["max_nats"] > 0


@pytest.mark.parametrize("method, path, kwargs", [
    ("post", "/api/sample", {"json": {"n": 2}}),
    ("get", "/api/sample.png?n=2", {}),
    ("post", "/api/decode", {"json": {"z": [[0.0, 0.0]]}}),
    ("post", "/api/decode.png", {"json": {"z": [[0.0, 0.0]]}}),
    ("post", "/api/interpolate", {"json": {"z_start": [0.0, 0.0], "z_end": [1.0, 1.0]}}),
    ("get", "/api/latent-map", {}),
    ("post", "/api/encode", {"files": upload(GOOD_PNG)}),
    ("post", "/api/reconstruct", {"files": upload(GOOD_PNG)}),
    ("post", "/api/score", {"files": upload(GOOD_PNG)}),
    ("post", "/api/analyze", {"files": upload(GOOD_PNG)}),
])
def test_a_conditional_model_needs_a_known_label(conditional_client, method, path, kwargs):
    response = getattr(conditional_client, method)(path, **kwargs)
    assert response.status_code == 422
    assert "conditional: give a label" in response.json()["detail"] and "0, 1, 2" in response.json()["detail"]
    for unknown in ("eleven", "10", "-1"):
        where, options = path, kwargs
        if "json" in kwargs:
            options = {"json": {**kwargs["json"], "label": unknown}}
        elif "files" in kwargs:
            options = {**kwargs, "data": {"label": unknown}}
        else:
            where = f"{path}{'&' if '?' in path else '?'}label={unknown}"
        response = getattr(conditional_client, method)(where, **options)
        assert response.status_code == 422, response.text
        assert f"unknown label '{unknown}'" in response.json()["detail"] and "10 classes: 0, 1" in response.json()["detail"]


def test_conditional_reference_data_need_labels(conditional_vae, digits):
    _, vae = conditional_vae
    with pytest.raises(vaekit.VaekitError, match="conditional.*no labels"):
        Explorer(vae, reference=ReferenceData(digits.split("test").numpy(), "digits:test"))
