"""Latent-space tools: interpolation, dimension ranking, traversal, 2-D views, the manifold grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import norm
from torch.distributions import Normal, kl_divergence

import vaekit
from vaekit import ConfigError, DataError
from vaekit.generation import latent
from vaekit.cli import main


@pytest.fixture(scope="module")
def vae(trained_run):
    return vaekit.load(trained_run)


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory, digits):
    run = tmp_path_factory.mktemp("latent") / "d2"
    vaekit.VAE(latent_dim=2, hidden=(32,), epochs=2, seed=0, device="cpu").fit(digits, run_dir=run)
    return run


# --- interpolation -------------------------------------------------------------------------------

def test_linear_interpolation_is_the_straight_line():
    a, b = np.array([1.0, -2.0, 0.5]), np.array([3.0, 2.0, -0.5])
    path = latent.interpolate_latents(a, b, 5, "linear")
    assert path.shape == (5, 3)
    np.testing.assert_allclose(path[0], a, rtol=1e-6)
    np.testing.assert_allclose(path[-1], b, rtol=1e-6)
    np.testing.assert_allclose(path[2], (a + b) / 2, rtol=1e-6)
    np.testing.assert_allclose(np.diff(path, axis=0), np.tile((b - a) / 4, (4, 1)), rtol=1e-5)


def test_spherical_interpolation_follows_the_great_circle():
    r = 2.5
    path = latent.interpolate_latents(np.array([r, 0.0]), np.array([0.0, r]), 7, "spherical")
    angles = np.linspace(0, np.pi / 2, 7)  # a quarter circle of radius r, at constant angular speed
    np.testing.assert_allclose(path, r * np.column_stack([np.cos(angles), np.sin(angles)]), atol=1e-6)


def test_spherical_interpolation_interpolates_the_norm():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=8), 3 * rng.normal(size=8)
    path = latent.interpolate_latents(a, b, 9, "spherical")
    np.testing.assert_allclose(np.linalg.norm(path, axis=1),
                               np.linspace(np.linalg.norm(a), np.linalg.norm(b), 9), rtol=1e-5)
    cosines = (path / np.linalg.norm(path, axis=1, keepdims=True)) @ (a / np.linalg.norm(a))
    assert np.all(np.diff(np.arccos(np.clip(cosines, -1, 1))) > 0)  # moves steadily away from a's direction


def test_interpolation_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="linear, spherical"):
        latent.interpolate_latents(np.zeros(2), np.ones(2), 3, "cubic")
    with pytest.raises(ConfigError, match="at least 2 steps"):
        latent.interpolate_latents(np.zeros(2), np.ones(2), 1)
    with pytest.raises(DataError, match="one shape"):
        latent.interpolate_latents(np.zeros(2), np.ones(3), 3)


def test_interpolate_decodes_the_path_between_latent_means(vae, digits):
    x = digits.x_test[:2].numpy()
    z, decoded = latent.interpolate(vae, x[0], x[1], steps=4)
    np.testing.assert_allclose(z[[0, -1]], vae.transform(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(decoded[[0, -1]], vae.reconstruct(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(decoded, vae.decode(z), rtol=1e-6)
    with pytest.raises(DataError, match="one example"):
        latent.interpolate(vae, x, x[1])


# --- which dimensions matter ---------------------------------------------------------------------

def test_dimension_stats_match_torch_distributions(vae, digits):
    x = digits.x_test[:200].numpy()
    stats = latent.dimension_stats(vae, x)
    mean, var = vae.encode(x)
    q = Normal(torch.from_numpy(mean).double(), torch.from_numpy(var).double().sqrt())
    expected_kl = kl_divergence(q, Normal(0.0, 1.0)).mean(0).numpy()
    np.testing.assert_allclose(stats.kl, expected_kl, rtol=1e-6)
    # the per-dimension KLs add up to the model's own KL term of the ELBO
    np.testing.assert_allclose(stats.kl.sum(), vae.elbo(x)["kl"].mean(), rtol=1e-4)
    np.testing.assert_allclose(stats.mean_variance, mean.astype(np.float64).var(axis=0), rtol=1e-6)
    assert stats.active.dtype == bool and stats.active.shape == (4,)


@pytest.mark.parametrize("by", ["kl", "variance"])
def test_informative_dimensions_are_sorted(vae, digits, by):
    x = digits.x_test[:200].numpy()
    order, values = latent.informative_dimensions(vae, x, by=by)
    stats = latent.dimension_stats(vae, x)
    reference = stats.kl if by == "kl" else stats.mean_variance
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    np.testing.assert_allclose(values, reference[order])
    assert np.all(np.diff(values) <= 0)
    top, _ = latent.informative_dimensions(vae, x, by=by, top=2)
    assert top.tolist() == order[:2].tolist()
    with pytest.raises(ConfigError):
        latent.informative_dimensions(vae, x, by="entropy")


def test_traverse_changes_one_dimension_at_a_time(vae):
    base = np.array([0.3, -0.2, 0.1, 0.5], dtype=np.float32)
    offsets, grid = latent.traverse(vae, [2, 0], base=base, steps=5, span=2.0)
    np.testing.assert_allclose(offsets, [-2, -1, 0, 1, 2])
    assert grid.shape == (2, 5, 1, 8, 8)
    for row, dim in enumerate([2, 0]):
        z = np.repeat(base[None], 5, axis=0)
        z[:, dim] += offsets
        np.testing.assert_allclose(grid[row], vae.decode(z), rtol=1e-6)
    np.testing.assert_allclose(grid[0, 2], vae.decode(base[None])[0], rtol=1e-6)  # offset 0 = the base point
    with pytest.raises(ConfigError, match="do not exist"):
        latent.traverse(vae, [4])
    with pytest.raises(ConfigError, match="span"):
        latent.traverse(vae, [0], span=-1)


# --- 2-D views -----------------------------------------------------------------------------------

def test_latent_embedding_of_a_2d_latent_is_the_latent(run_2d, digits):
    vae2 = vaekit.load(run_2d)
    x = digits.x_test[:50].numpy()
    coords, method = latent.latent_embedding(vae2, x)
    assert method == "latent"
    np.testing.assert_allclose(coords, vae2.transform(x), rtol=1e-6)


def test_pca_embedding_keeps_the_top_principal_variance(vae, digits):
    x = digits.x_test[:300].numpy()
    coords, method = latent.latent_embedding(vae, x)
    assert method == "pca" and coords.shape == (300, 2)
    z = vae.transform(x).astype(np.float64)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(z, rowvar=False)))[::-1]
    np.testing.assert_allclose(np.var(coords, axis=0, ddof=1), eigenvalues[:2], rtol=1e-6)
    np.testing.assert_allclose(coords.mean(axis=0), 0, atol=1e-6)
    with pytest.raises(ConfigError, match="pca"):
        latent.latent_embedding(vae, x, method="latent")


def test_tsne_embedding_is_seeded(vae, digits):
    x = digits.x_test[:60].numpy()
    a, method = latent.latent_embedding(vae, x, method="tsne", seed=3)
    b, _ = latent.latent_embedding(vae, x, method="tsne", seed=3)
    assert method == "tsne" and a.shape == (60, 2) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b)


def test_manifold_grid_uses_the_priors_quantiles(run_2d):
    vae2 = vaekit.load(run_2d)
    grid, decoded = latent.manifold(vae2, steps=5, quantile_range=(0.1, 0.9))
    expected = norm.ppf(np.linspace(0.1, 0.9, 5))
    np.testing.assert_allclose(grid[0, :, 0], expected, rtol=1e-5)          # z1 grows left to right
    np.testing.assert_allclose(grid[:, 0, 1], expected[::-1], rtol=1e-5)    # z2 grows bottom to top
    assert decoded.shape == (5, 5, 1, 8, 8)
    np.testing.assert_allclose(decoded[1, 3], vae2.decode(grid[1, 3][None])[0], rtol=1e-6)


def test_manifold_refuses_other_latent_sizes(vae, run_2d):
    with pytest.raises(ConfigError, match="2-D latent"):
        latent.manifold(vae)
    with pytest.raises(ConfigError, match="0 < low < high < 1"):
        latent.manifold(vaekit.load(run_2d), quantile_range=(0.0, 0.9))


def test_figures(vae, digits):
    x = digits.x_test[:100].numpy()
    _, decoded = latent.interpolate(vae, x[0], x[1], steps=6)
    fig = latent.interpolation_figure(decoded, originals=(x[0], x[1]))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][0] == "start"
    offsets, grid = latent.traverse(vae, [0, 1, 2])
    fig = latent.traverse_figure(offsets, grid, [0, 1, 2], stats=[0.5, 0.2, 0.1])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["z0 (KL 0.50)", "z1 (KL 0.20)", "z2 (KL 0.10)"]
    coords, method = latent.latent_embedding(vae, x)
    fig = latent.latent_scatter_figure(coords, digits.y_test[:100], digits.class_names, method=method)
    assert len(fig.axes[0].collections) == len(np.unique(digits.y_test[:100]))  # one colour per class


def test_figures_of_vector_data(tmp_path):
    rng = np.random.default_rng(0)
    vae = vaekit.VAE(latent_dim=2, hidden=(16,), epochs=1, device="cpu").fit(rng.normal(size=(200, 6)))
    _, decoded = latent.interpolate(vae, np.zeros(6), np.ones(6), steps=4)
    assert decoded.shape == (4, 6)
    latent.interpolation_figure(decoded).savefig(tmp_path / "i.png")
    offsets, grid = latent.traverse(vae, [0, 1], steps=3)
    latent.traverse_figure(offsets, grid, [0, 1]).savefig(tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0


# --- command line ----------------------------------------------------------------------------------

def test_cli_latent_commands(trained_run, run_2d, tmp_path, capsys):
    run = str(trained_run)
    assert main(["interpolate", run, "digits", "--from", "3", "--to", "7", "--steps", "6", "-o", str(tmp_path / "i.png")]) == 0
    assert Image.open(tmp_path / "i.png").size[0] > 300
    assert main(["interpolate", run, "digits", "--method", "spherical", "--steps", "6", "-o", str(tmp_path / "i.npy")]) == 0
    assert np.load(tmp_path / "i.npy").shape == (6, 1, 8, 8)
    assert main(["traverse", run, "-o", str(tmp_path / "t.npy"), "--top", "3", "--steps", "5"]) == 0
    assert np.load(tmp_path / "t.npy").shape == (3, 5, 1, 8, 8)
    assert main(["traverse", run, "digits", "--dims", "1", "--base", "0", "--by", "variance", "-o", str(tmp_path / "t.png")]) == 0
    assert main(["latent-plot", run, "digits:all", "--max-points", "300", "-o", str(tmp_path / "l.png")]) == 0
    assert main(["latent-plot", run, "digits", "-o", str(tmp_path / "l.csv")]) == 0
    assert (tmp_path / "l.csv").read_text().splitlines()[0] == "c0,c1"
    assert main(["manifold", str(run_2d), "--steps", "4", "-o", str(tmp_path / "m.npy")]) == 0
    assert np.load(tmp_path / "m.npy").shape == (4, 4, 1, 8, 8)
    assert main(["manifold", str(run_2d), "--steps", "4", "-o", str(tmp_path / "m.png")]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("args,message", [
    (["interpolate", "{run}", "digits", "--from", "9999", "-o", "{tmp}/i.png"], "out of range"),
    (["interpolate", "{run}", "digits", "--steps", "1", "-o", "{tmp}/i.png"], "at least 2"),
    (["manifold", "{run}", "-o", "{tmp}/m.png"], "2-D latent"),
    (["traverse", "{run}", "--dims", "7", "-o", "{tmp}/t.png"], "do not exist"),
    (["latent-plot", "{run}", "digits", "-o", "{tmp}/l.gif"], "must end in"),
])
def test_cli_latent_errors(trained_run, tmp_path, capsys, args, message):
    argv = [a.format(run=trained_run, tmp=tmp_path) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
