"""Per-feature explanations of anomaly scores: shares of -log p(x|z) that add up, in the data's units, on disk."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vaekit
from vaekit import ConfigError, DataError, VaekitError
from vaekit.anomaly.explain import (TABLE_COLUMNS, TABLE_FILE, explanation_figure, feature_contributions,
                                    safe_file_name, top_features, write_explanations)
from vaekit.anomaly import prepare_inputs
from vaekit.models.likelihoods import LIKELIHOODS


@pytest.fixture(scope="module")
def digits_vae(digits):
    """A small Bernoulli model of the 8x8 digits, trained just well enough to know where the background is."""
    return vaekit.VAE(latent_dim=4, hidden=(32,), epochs=8, batch_size=32, lr=3e-3, seed=0, device="cpu").fit(digits)


@pytest.fixture(scope="module")
def wine(tmp_path_factory):
    """scikit-learn's wine measurements (13 columns on very different scales) as a CSV with a header."""
    from sklearn.datasets import load_wine

    bunch = load_wine()
    path = tmp_path_factory.mktemp("explain") / "wine.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(bunch.feature_names)
        writer.writerows(bunch.data.tolist())
    return path, bunch.data.astype(np.float32), list(bunch.feature_names)


def _wine_vae(path, likelihood: str) -> vaekit.VAE:
    return vaekit.VAE(latent_dim=4, hidden=(32,), epochs=3, likelihood=likelihood, seed=0, device="cpu").fit(
        vaekit.load_dataset(str(path), as_table=False))  # a numeric array for the array likelihoods


def _first_layer_draws(vae: vaekit.VAE, x_model: np.ndarray, num_samples: int, seed: int) -> torch.Tensor:
    """z_1 ~ q(z|x) as the model's own inference draws them from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return vae.model_.infer(torch.from_numpy(x_model), num_samples=num_samples, generator=generator)[0][0]


# --- the numbers -----------------------------------------------------------------------------------

def test_bernoulli_contributions_are_binary_cross_entropies_at_the_same_draws(digits_vae, digits):
    x = prepare_inputs(digits_vae, digits.x_test.numpy()[:40])
    got = feature_contributions(digits_vae, x, num_samples=4, seed=3)
    assert got.shape == (40, 1, 8, 8) and got.dtype == np.float64
    model = digits_vae.model_
    z = _first_layer_draws(digits_vae, x, 4, seed=3)  # (4, 40, latent)
    with torch.no_grad():
        logits = model.decoder_params(z)[:, :, 0]  # (4, 40, 1, 8, 8): the one Bernoulli parameter per pixel
        target = torch.from_numpy(x).expand_as(logits)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").double().mean(0).numpy()
        terms = model.elbo_terms(torch.from_numpy(x), generator=torch.Generator().manual_seed(3), num_samples=4)
    np.testing.assert_allclose(got, bce, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.reshape(40, -1).sum(1), terms.reconstruction.double().numpy(), rtol=1e-5)
    assert (got >= 0).all()  # probabilities of the data, never densities
    # The average over draws is not a single draw: a different seed gives other (if close) numbers.
    assert not np.allclose(got, feature_contributions(digits_vae, x, num_samples=4, seed=4))


@pytest.mark.parametrize("likelihood", [*sorted(set(LIKELIHOODS) - {"table"}), "bernoulli, two layers"])
def test_every_likelihood_splits_its_reconstruction_term(digits, likelihood):
    name, _, layers = likelihood.partition(", ")
    vae = vaekit.VAE(latent_dim=3, hidden=(16,), epochs=1, likelihood=name, seed=0, device="cpu",
                     upper_latent_dims=(2,) if layers else (), upper_hidden=(8,)).fit(digits)
    x = prepare_inputs(vae, digits.x_test.numpy()[:30])
    got = feature_contributions(vae, x, num_samples=3, seed=1)
    with torch.no_grad():
        terms = vae.model_.elbo_terms(torch.from_numpy(x), generator=torch.Generator().manual_seed(1), num_samples=3)
    np.testing.assert_allclose(got.reshape(30, -1).sum(1), terms.reconstruction.double().numpy(), rtol=2e-5, atol=2e-4)


@pytest.mark.parametrize("likelihood", ["gaussian", "gaussian-learned"])
def test_standardized_contributions_are_densities_in_the_original_units(wine, likelihood):
    path, raw, _ = wine
    vae = _wine_vae(path, likelihood)
    data = vae.config_.data
    mean, std = np.asarray(data.standardize_mean), np.asarray(data.standardize_std)
    assert np.log(std).max() > 5  # proline: a shift of more than 5 nats that a missing log(std) would show
    x = raw[:25]
    got = feature_contributions(vae, x, num_samples=2, seed=5)
    assert got.shape == (25, 13)
    z = _first_layer_draws(vae, ((x - mean) / std).astype(np.float32), 2, seed=5)
    with torch.no_grad():
        dist = vae.model_.decode(z).base_dist
        loc, scale = dist.loc.double(), dist.scale.double()
    if likelihood == "gaussian":
        torch.testing.assert_close(scale, torch.ones_like(scale))  # the fixed standard deviation, gaussian_std=1
    m, s = torch.from_numpy(mean), torch.from_numpy(std)
    original = torch.distributions.Normal(loc * s + m, scale * s)  # the same density, in the units of x
    expected = -original.log_prob(torch.from_numpy(x).double()).mean(0).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_a_corrupted_patch_holds_the_largest_contributions(digits_vae, digits):
    clean = digits.x_test.numpy()[:10]
    for top, left in ((0, 0), (0, 5)):  # patches where the digits have background, in two corners
        mask = np.zeros((8, 8), dtype=bool)
        mask[top:top + 3, left:left + 3] = True
        corrupted = clean.copy()
        corrupted[:, 0, mask] = 1.0 - corrupted[:, 0, mask]
        heat = feature_contributions(digits_vae, corrupted)[:, 0]
        inside, outside = heat[:, mask].mean(), heat[:, ~mask].mean()
        assert inside > 3 * outside, (top, left, inside, outside)
        # The patch is not simply a place of large contributions: uncorrupted, it costs far less.
        assert feature_contributions(digits_vae, clean)[:, 0][:, mask].mean() < inside / 3


# --- tables and pictures ---------------------------------------------------------------------------

def test_top_features_ranks_columns_per_example():
    contributions = np.array([[0.5, 3.0, -1.0, 3.0], [2.0, 0.1, 0.2, 0.3]])
    values = np.array([[10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]])
    table = top_features(contributions, names=["a", "b", "c", "d"], k=2, values=values, examples=[7, 9])
    assert list(table) == list(TABLE_COLUMNS)
    assert table["example"].tolist() == [7, 7, 9, 9]
    assert table["rank"].tolist() == [1, 2, 1, 2]
    assert table["column"].tolist() == ["b", "d", "a", "d"]  # the tie of b and d keeps the columns' order
    assert table["contribution_nats"].tolist() == [3.0, 3.0, 2.0, 0.3]
    assert table["value"].tolist() == [20.0, 40.0, 1.0, 4.0]
    everything = top_features(contributions, k=10)
    assert len(everything["rank"]) == 8 and everything["column"][:4].tolist() == ["x1", "x3", "x0", "x2"]
    assert np.isnan(everything["value"]).all()
    with pytest.raises(DataError, match="one name per column"):
        top_features(contributions, names=["a", "b"])
    with pytest.raises(ConfigError, match="k must be"):
        top_features(contributions, k=0)
    with pytest.raises(DataError, match="values must match"):
        top_features(contributions, values=values[:, :3])


def test_explanation_figure_has_three_panels_and_sums_rgb_heat():
    rng = np.random.default_rng(0)
    image, reconstruction = rng.random((3, 5, 7)), rng.random((3, 5, 7))
    heat = rng.random((3, 5, 7))
    fig = explanation_figure(image, reconstruction, heat, title="example 3")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3 and len(fig.axes) == 4  # three panels and the colour bar
    np.testing.assert_allclose(np.asarray(panels[2].images[0].get_array()), heat.sum(0))
    assert fig.axes[-1].get_ylabel() == "nats"
    grey = explanation_figure(image[:1], reconstruction[:1], heat[0])
    assert np.asarray(grey.axes[0].images[0].get_array()).shape == (5, 7)
    with pytest.raises(DataError, match="heat map"):
        explanation_figure(image, reconstruction, heat[:, :4])


def test_write_explanations_writes_one_png_per_image(digits_vae, digits, tmp_path):
    x = digits.x_test.numpy()[:12]
    scores = np.linspace(1.0, 2.0, 12)
    out = tmp_path / "new" / "explanations"
    paths = write_explanations(digits_vae, x, out, indices=[3, 0, 7, 3], scores=scores, num_samples=2)
    assert [p.name for p in paths] == ["03.png", "00.png", "07.png"]  # zero-padded, a repeat written once
    assert sorted(p.name for p in out.iterdir()) == ["00.png", "03.png", "07.png"]  # no temporary files left
    for path in paths:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG"
            width, height = img.size
        assert 150 <= height <= 600 and width > 2.2 * height  # three square panels side by side


def test_write_explanations_writes_a_table_matching_top_features(wine, tmp_path):
    path, raw, columns = wine
    vae = _wine_vae(path, "gaussian-learned")
    assert vae.config_.data.columns == columns
    scores = np.arange(len(raw), dtype=np.float64) / 7
    written = write_explanations(vae, raw, tmp_path / "out", indices=[5, 0], scores=scores, num_samples=3, seed=2)
    assert written == [tmp_path / "out" / TABLE_FILE]
    data = written[0].read_bytes()
    assert b"\r" not in data
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    assert len(rows) == 2 * 13
    expected = top_features(feature_contributions(vae, raw[[5, 0]], num_samples=3, seed=2), names=columns, k=13,
                            values=raw[[5, 0]], examples=[5, 0])
    assert [int(r["example"]) for r in rows] == expected["example"].tolist()
    assert [int(r["rank"]) for r in rows] == expected["rank"].tolist()
    assert [r["column"] for r in rows] == expected["column"].tolist()
    np.testing.assert_allclose([float(r["contribution_nats"]) for r in rows], expected["contribution_nats"], rtol=1e-9)
    np.testing.assert_allclose([float(r["score"]) for r in rows], scores[expected["example"]], rtol=1e-9)
    assert {r["name"] for r in rows} == {"005", "000"}
    # Values in the data's own units: proline of the first wine is 1065.
    first = {r["column"]: float(r["value"]) for r in rows if r["example"] == "0"}
    assert first == pytest.approx(dict(zip(columns, raw[0].astype(np.float64))), rel=1e-6)
    assert first["proline"] == pytest.approx(1065.0)


# --- bad input -------------------------------------------------------------------------------------

def test_bad_inputs_are_clear_errors(digits_vae, digits, tmp_path):
    x = digits.x_test.numpy()[:4].copy()
    bad = x.copy()
    bad[1, 0, 2, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        feature_contributions(digits_vae, bad)
    with pytest.raises(DataError, match="NaN"):
        write_explanations(digits_vae, bad, tmp_path / "nan", indices=[0])
    with pytest.raises(DataError, match="shape"):
        feature_contributions(digits_vae, np.zeros((3, 7, 7), np.float32))
    with pytest.raises(ConfigError, match="num_samples"):
        feature_contributions(digits_vae, x, num_samples=0)
    with pytest.raises(DataError, match="outside X"):
        write_explanations(digits_vae, x, tmp_path / "range", indices=[4])
    with pytest.raises(ConfigError, match="at least one"):
        write_explanations(digits_vae, x, tmp_path / "empty", indices=[])
    with pytest.raises(DataError, match="one name per example"):
        write_explanations(digits_vae, x, tmp_path / "names", indices=[0], names=["a"])
    a_file = tmp_path / "taken"
    a_file.write_text("keep me")
    with pytest.raises(ConfigError, match="is a file"):
        write_explanations(digits_vae, x, a_file, indices=[0])
    assert a_file.read_text() == "keep me"
    assert not (tmp_path / "nan").exists() and not (tmp_path / "range").exists()  # nothing created on errors
    for err in (DataError, ConfigError):
        assert issubclass(err, VaekitError)


def test_names_become_safe_file_names_inside_the_folder(digits_vae, digits, tmp_path):
    x = digits.x_test.numpy()[:4]
    out = tmp_path / "a" / "out"
    names = ["../../escape", "sub/dir\\name", "..", "sub_dir_name"]
    paths = write_explanations(digits_vae, x, out, indices=range(4), names=names, num_samples=1)
    assert [p.name for p in paths] == ["escape.png", "sub_dir_name.png", "2.png", "sub_dir_name-3.png"]
    assert all(p.parent == out and p.is_file() for p in paths)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(p.name for p in paths)
    assert safe_file_name("x..y/z") == "x_y_z" and safe_file_name(".hidden") == "hidden"
    assert safe_file_name("...", fallback="7") == "7" and len(safe_file_name("n" * 500)) == 100
