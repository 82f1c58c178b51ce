"""The explorer page end to end in a real headless browser: Debian's chromium driven by Playwright.

The server runs for real (uvicorn on a free loopback port); the browser moves a slider, uploads and
drops images, walks an interpolation and clicks the latent map, and what the page shows is compared
with the library's own computation. Screenshots go to test-artifacts/ (or $VAEKIT_TEST_ARTIFACTS).
Without chromium or Playwright these tests skip, unless VAEKIT_REQUIRE_BROWSER=1 (CI), where they fail.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vaekit
from vaekit.anomaly import anomaly_scores

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'vaekit[serve]'")

from vaekit.serve import Explorer, ReferenceData, create_app  # noqa: E402
from vaekit.serve.server import BackgroundServer  # noqa: E402

CHROMIUM = os.environ.get("VAEKIT_CHROMIUM", "/usr/bin/chromium")
# Without these, chromium in a closed network stalls on background fetches, updates and sign-in.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("VAEKIT_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
TIMEOUT_MS = 15_000


def browser_problem() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"no chromium at {CHROMIUM}: apt-get install chromium (or set VAEKIT_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed: pip install playwright (part of the dev extra)"
    return None


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    problem = browser_problem()
    if problem:
        if os.environ.get("VAEKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"VAEKIT_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh user-data-dir
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture(scope="module")
def vae(trained_run):
    return vaekit.load(trained_run)


@pytest.fixture(scope="module")
def test_images(digits):
    return digits.split("test").numpy()


@pytest.fixture(scope="module")
def server_url(trained_run, vae, digits, test_images):
    reference = ReferenceData(test_images, "digits:test", digits.labels("test"), digits.class_names)
    with BackgroundServer(create_app(Explorer.from_run(trained_run, vae=vae, reference=reference))) as url:
        yield url


def open_page(context, url, shown: str = "#explorer-output img"):
    """A new tab on the explorer, once it has started and shows its first decoded output (``shown``)."""
    page = context.new_page()
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
    page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector(shown)
    return page


def shown_pixels(page, selector: str) -> np.ndarray:
    src = page.get_attribute(selector, "src")
    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))


def as_pixels(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def png_of(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.rint(x[0] * 255).astype(np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_dragging_a_slider_updates_the_image_live(browser_context, server_url, vae):
    page = open_page(browser_context, server_url)
    image = "#explorer-output img"
    before = page.get_attribute(image, "src")
    updates_before = int(page.get_attribute("#explorer-output", "data-updates"))
    slider = page.locator("#sliders input").first
    dim = int(slider.get_attribute("data-dim"))
    box = slider.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 2, y)
    updated = "(n) => Number(document.querySelector('#explorer-output').dataset.updates) > n"
    page.mouse.down()
    for half in (range(1, 6), range(6, 11)):  # a drag to the right, as a hand would do it
        for step in half:
            page.mouse.move(box["x"] + box["width"] * (0.5 + 0.045 * step), y)
            page.wait_for_timeout(30)
        # The picture follows while the button is still held, not only on release.
        page.wait_for_function(updated, arg=updates_before)
        updates_before = int(page.get_attribute("#explorer-output", "data-updates"))
    page.mouse.up()
    value = float(slider.input_value())
    assert value > 1.5, value
    page.wait_for_function("([dim, value]) => { const z = JSON.parse(document.querySelector('#explorer-output')"
                           ".dataset.z || '[]'); return Math.abs(z[dim] - value) < 1e-6; }", arg=[dim, value])
    assert page.get_attribute(image, "src") != before
    z = np.asarray(json.loads(page.get_attribute("#explorer-output", "data-z")), dtype=np.float32)
    expected = np.zeros(vae.latent_dim_, dtype=np.float32)
    expected[dim] = value
    np.testing.assert_allclose(z, expected, atol=1e-6)
    np.testing.assert_array_equal(shown_pixels(page, image), as_pixels(vae.decode(z)[0, 0]))
    assert page.problems == []
    page.close()


def test_uploaded_and_dropped_images_show_reconstruction_and_score(browser_context, server_url, vae, test_images):
    page = open_page(browser_context, server_url)
    first, second = test_images[3], test_images[11]
    page.set_input_files("#file-input", files=[{"name": "digit.png", "mimeType": "image/png", "buffer": png_of(first)}])
    page.wait_for_selector("#analysis:not([hidden]) #analysis-reconstruction img")
    page.wait_for_function("() => document.querySelector('#analysis-note').textContent.includes('digit.png')")
    x = np.rint(first * 255)[None] / 255.0
    scores = anomaly_scores(vae, x.astype(np.float32), ["neg_log_likelihood"], num_importance_samples=100)
    assert float(page.inner_text("#score-value")) == pytest.approx(scores["neg_log_likelihood"][0], rel=1e-3)
    assert "More unusual than" in page.inner_text("#score-percentile")
    np.testing.assert_array_equal(shown_pixels(page, "#analysis-reconstruction img"),
                                  as_pixels(vae.reconstruct(x.astype(np.float32))[0, 0]))
    assert page.locator("#analysis-latent circle").count() == vae.latent_dim_
    # The heat map of each pixel's share of -log p(x|z), beside the reconstruction, at the model's size.
    from vaekit.anomaly import feature_contributions

    heat = feature_contributions(vae, x.astype(np.float32), seed=0)[0].sum(0)
    assert page.locator("#analysis-heat img").is_visible()
    assert shown_pixels(page, "#analysis-heat img").shape == (*heat.shape, 3)  # RGB, at the model's size
    assert f"0 to {heat.max():.3g} nats" in page.inner_text("#analysis-heat-caption")

    # Drag and drop: a real drop event carrying a file, on the drop zone.
    page.evaluate("""([data, name]) => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: 'image/png'}));
        const zone = document.querySelector('#dropzone');
        for (const type of ['dragenter', 'dragover', 'drop'])
            zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }""", [base64.b64encode(png_of(second)).decode(), "dropped.png"])
    page.wait_for_function("() => document.querySelector('#analysis-note').textContent.includes('dropped.png')")
    x2 = (np.rint(second * 255)[None] / 255.0).astype(np.float32)
    expected = anomaly_scores(vae, x2, ["neg_log_likelihood"], num_importance_samples=100)["neg_log_likelihood"][0]
    assert float(page.inner_text("#score-value")) == pytest.approx(expected, rel=1e-3)
    captions = page.locator("#gallery figcaption").all_inner_texts()
    assert captions[:2] == ["dropped.png", "digit.png"]
    page.click("#random-samples")
    page.click("#reference-examples")
    page.wait_for_function("() => document.querySelectorAll('#gallery .item').length >= 18")
    path = screenshot(page, "serve-explorer.png")
    assert path.stat().st_size > 10_000
    assert page.problems == []
    page.close()


def test_the_page_shows_why_an_upload_is_refused(browser_context, server_url):
    page = open_page(browser_context, server_url)
    page.set_input_files("#file-input", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image" * 10}])
    page.wait_for_function("() => document.querySelector('#status').className === 'error'")
    status = page.inner_text("#status")
    assert "neither an image" in status and "HTTP 415" in status
    big = b"\0" * (4 * 2**20 + 1)
    page.set_input_files("#file-input", files=[{"name": "huge.png", "mimeType": "image/png", "buffer": big}])
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('huge.png')")
    assert "accepts at most 4.0 MiB" in page.inner_text("#status")
    page.close()


def test_interpolation_scrubbing_and_the_latent_map(browser_context, tmp_path_factory, digits, test_images):
    run = tmp_path_factory.mktemp("browser2d") / "d2"
    vae2 = vaekit.VAE(latent_dim=2, hidden=(32,), epochs=2, seed=0, device="cpu").fit(digits, run_dir=run)
    reference = ReferenceData(test_images, "digits:test", digits.labels("test"), digits.class_names)
    with BackgroundServer(create_app(Explorer.from_run(run, vae=vae2, reference=reference))) as url:
        page = open_page(browser_context, url)
        page.wait_for_selector("#map-card:not([hidden]) #map-image[src]")
        assert page.locator("#map-overlay circle").count() > 300  # the reference points (and two markers)
        box = page.locator("#map").bounding_box()
        page.locator("#map").click(position={"x": box["width"] / 2, "y": box["height"] / 2})
        page.wait_for_function("() => document.querySelector('#explorer-base').textContent.includes('map')")
        page.wait_for_function("() => { const z = JSON.parse(document.querySelector('#explorer-output').dataset.z);"
                               " return Math.abs(z[0]) < 0.1 && Math.abs(z[1]) < 0.1 && (z[0] !== 0 || z[1] !== 0); }")

        with page.expect_response("**/api/sample") as sampled:
            page.click("#random-samples")
        samples = sampled.value.json()
        marks = page.locator("#gallery .item")
        marks.nth(0).locator("button", has_text="A").click()
        with page.expect_response("**/api/interpolate") as walked:
            marks.nth(5).locator("button", has_text="B").click()
        path = walked.value.json()
        # The gallery lists the newest first: item 0 is the 8th sample, item 5 the 3rd.
        np.testing.assert_allclose(path["z"][0], samples["z"][7], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(path["z"][-1], samples["z"][2], rtol=1e-5, atol=1e-6)
        page.locator("#scrub").fill("9")
        page.wait_for_function("() => document.querySelector('#interp-output').dataset.step === '9'")
        assert page.inner_text("#scrub-t") == f"t = {9 / 23:.2f}"
        z9 = np.asarray(path["z"][9], dtype=np.float32)
        np.testing.assert_array_equal(shown_pixels(page, "#interp-output img"), as_pixels(vae2.decode(z9[None])[0, 0]))
        screenshot(page, "serve-explorer-2d.png")
        assert page.problems == []
        page.close()


def test_a_tabular_run_shows_decoded_rows_as_tables_with_column_names(browser_context, tmp_path_factory):
    directory = tmp_path_factory.mktemp("browser-csv")
    rng = np.random.default_rng(0)
    table = np.column_stack([1000 + 50 * rng.normal(size=200), 0.01 * rng.normal(size=200), rng.normal(size=200)])
    csv = directory / "prices.csv"
    csv.write_text("price,rate,noise\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in table) + "\n")
    run = directory / "run"
    vae = vaekit.VAE(latent_dim=2, hidden=(16,), epochs=2, seed=0, device="cpu").fit(vaekit.load_dataset(str(csv)),
                                                                                        run_dir=run)
    with BackgroundServer(create_app(Explorer.from_run(run, vae=vae))) as url:
        page = open_page(browser_context, url, shown="#explorer-output table")
        names = page.locator("#explorer-output th").all_inner_texts()
        values = [float(v) for v in page.locator("#explorer-output td").all_inner_texts()]
        assert names == ["price", "rate", "noise"]
        np.testing.assert_allclose(values, vae.decode(np.zeros((1, 2), np.float32)).iloc[0].to_numpy(float), rtol=1e-4)  # original units
        row = json.dumps({"price": 1010.0, "rate": 0.02, "noise": 0.5}).encode()
        page.set_input_files("#file-input", files=[{"name": "row.json", "mimeType": "application/json", "buffer": row}])
        page.wait_for_selector("#analysis:not([hidden]) #analysis-reconstruction table")
        assert page.locator("#analysis-input th").all_inner_texts() == ["price", "rate", "noise"]
        assert "JSON" in page.inner_text("#drop-text")
        assert page.problems == []
        page.close()


def test_a_conditional_run_gets_a_class_selector_that_every_request_follows(browser_context, tmp_path_factory, digits,
                                                                             test_images, server_url):
    page = open_page(browser_context, server_url)  # an unconditional run: no selector, no label sent
    assert page.is_hidden("#class-picker")
    with page.expect_request("**/api/sample") as sampled:
        page.click("#random-samples")
    assert "label" not in sampled.value.post_data_json
    page.close()

    run = tmp_path_factory.mktemp("browser-conditional") / "cvae"
    vae = vaekit.VAE(conditional=True, latent_dim=2, hidden=(32,), epochs=2, seed=0, device="cpu").fit(digits, run_dir=run)
    reference = ReferenceData(test_images[:100], "digits:test", digits.labels("test")[:100], digits.class_names)
    with BackgroundServer(create_app(Explorer.from_run(run, vae=vae, reference=reference))) as url:
        page = open_page(browser_context, url)
        assert page.is_visible("#class-picker")
        assert page.locator("#class-select option").all_inner_texts() == [str(i) for i in range(10)]
        origin = np.zeros((1, 2), np.float32)
        page.wait_for_function("() => Number(document.querySelector('#explorer-output').dataset.updates) >= 1")
        np.testing.assert_array_equal(shown_pixels(page, "#explorer-output img"), as_pixels(vae.decode(origin, y="0")[0, 0]))
        page.wait_for_selector("#map-image[src]")
        updates = int(page.get_attribute("#explorer-output", "data-updates"))
        with page.expect_request("**/api/latent-map?*") as mapped:
            page.select_option("#class-select", "7")
        assert "label=7" in mapped.value.url
        page.wait_for_function("(n) => Number(document.querySelector('#explorer-output').dataset.updates) > n", arg=updates)
        np.testing.assert_array_equal(shown_pixels(page, "#explorer-output img"), as_pixels(vae.decode(origin, y="7")[0, 0]))
        with page.expect_request("**/api/sample") as sampled:
            page.click("#random-samples")
        assert sampled.value.post_data_json["label"] == "7"
        page.wait_for_function("() => document.querySelectorAll('#gallery .item').length >= 8")
        assert page.locator("#gallery figcaption").first.inner_text().startswith("7 · sample")
        # The upload goes with the label (chromium does not show multipart bodies to Playwright: the answer tells).
        page.set_input_files("#file-input", files=[{"name": "digit.png", "mimeType": "image/png",
                                                    "buffer": png_of(test_images[3])}])
        page.wait_for_selector("#analysis:not([hidden]) #analysis-reconstruction img")
        np.testing.assert_array_equal(shown_pixels(page, "#analysis-reconstruction img"),
                                      as_pixels(vae.reconstruct(test_images[3:4], "7")[0, 0]))
        assert page.problems == []
        page.close()


def test_the_page_works_with_a_token_through_the_one_time_link(browser_context, trained_run, vae):
    token = "browser-Token_42"
    with BackgroundServer(create_app(Explorer.from_run(trained_run, vae=vae), token=token)) as url:
        refused = browser_context.new_page()
        answer = refused.goto(url)
        assert answer.status == 401 and "needs its token" in refused.inner_text("body")
        refused.close()
        page = open_page(browser_context, f"{url}?token={token}")  # sets the cookie, then redirects to the page
        assert page.url == url  # the token is gone from the address bar
        cookies = [c for c in browser_context.cookies(url) if c["name"].startswith("vaekit_session_")]
        assert cookies and all(c["httpOnly"] and c["sameSite"] == "Strict" and token not in c["value"] for c in cookies)
        with page.expect_response("**/api/sample") as sampled:  # a POST the page sends with the cookie alone
            page.click("#random-samples")
        assert sampled.value.status == 200
        page.wait_for_function("() => document.querySelectorAll('#gallery .item').length >= 8")
        assert page.problems == []
        page.close()
