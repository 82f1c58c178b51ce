"""vaekit.models.mixture: EM for full-covariance Gaussian mixtures, against scikit-learn and closed forms."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture

from vaekit.errors import DataError
from vaekit.models.mixture import fit_gaussian_mixture, select_by_bic


def _three_clusters(n=1500, d=5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(3, d))
    mixing = [rng.normal(size=(d, d)) * 0.5 + np.eye(d) for _ in range(3)]
    which = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    return np.stack([centres[j] + mixing[j] @ rng.normal(size=d) for j in which])


@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_fit_equals_scikit_learn_step_for_step(m):
    x = _three_clusters()
    ours = fit_gaussian_mixture(x, m, reg_covar=1e-4, seed=3)
    theirs = GaussianMixture(m, covariance_type="full", reg_covar=1e-4, random_state=3).fit(x)
    assert ours.n_iter == theirs.n_iter_ and ours.converged == theirs.converged_
    np.testing.assert_allclose(ours.weights, theirs.weights_, atol=1e-9)
    np.testing.assert_allclose(ours.means, theirs.means_, atol=1e-9)
    np.testing.assert_allclose(ours.covariances, theirs.covariances_, atol=1e-9)
    np.testing.assert_allclose(ours.lower_bound, theirs.lower_bound_, rtol=1e-10)
    np.testing.assert_allclose(ours.log_likelihood(x), theirs.score_samples(x), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(ours.bic(x), theirs.bic(x), rtol=1e-10)
    assert ours.n_parameters == theirs._n_parameters()


def test_one_component_is_the_sample_mean_and_covariance():
    x = _three_clusters(n=400, d=3, seed=1)
    fit = fit_gaussian_mixture(x, 1, reg_covar=1e-3)
    np.testing.assert_allclose(fit.weights, [1.0])
    np.testing.assert_allclose(fit.means[0], x.mean(0), atol=1e-12)
    np.testing.assert_allclose(fit.covariances[0], np.cov(x.T, bias=True) + 1e-3 * np.eye(3), atol=1e-10)
    expected = multivariate_normal(x.mean(0), np.cov(x.T, bias=True) + 1e-3 * np.eye(3)).logpdf(x)
    np.testing.assert_allclose(fit.log_likelihood(x), expected, rtol=1e-10)


def test_log_likelihood_is_the_weighted_sum_of_the_component_densities():
    x = _three_clusters(n=600, d=2, seed=2)
    fit = fit_gaussian_mixture(x, 3)
    density = sum(w * multivariate_normal(mu, cov).pdf(x) for w, mu, cov in zip(fit.weights, fit.means, fit.covariances))
    np.testing.assert_allclose(fit.log_likelihood(x), np.log(density), rtol=1e-9)


def test_chunks_do_not_change_the_fit(monkeypatch):
    from vaekit.models import mixture

    x = _three_clusters(n=1000, d=4, seed=4)
    whole = fit_gaussian_mixture(x, 3, seed=1)
    monkeypatch.setattr(mixture, "CHUNK_VALUES", 64 * 3 * 4)  # 64 rows a chunk: 16 chunks
    chunked = fit_gaussian_mixture(x, 3, seed=1)
    assert chunked.n_iter == whole.n_iter
    np.testing.assert_allclose(chunked.covariances, whole.covariances, atol=1e-11)


def test_bic_selection_finds_the_number_of_clusters():
    x = _three_clusters(n=3000, d=2, seed=5)
    best, bics = select_by_bic(x, [1, 2, 3, 4, 6], seed=0)
    assert set(bics) == {1, 2, 3, 4, 6}
    assert best.n_components == 3 == min(bics, key=bics.get)


def test_bad_input_is_a_clear_error():
    x = _three_clusters(n=50, d=2)
    with pytest.raises(DataError, match="NaN"):
        fit_gaussian_mixture(np.where(np.arange(100).reshape(50, 2) == 7, np.nan, x), 2)
    with pytest.raises(DataError, match=r"n_components must lie in \[1, 50\]"):
        fit_gaussian_mixture(x, 51)
    with pytest.raises(DataError, match="non-empty"):
        fit_gaussian_mixture(np.zeros((0, 3)), 1)
    with pytest.raises(DataError, match="not positive definite"):
        fit_gaussian_mixture(np.ones((20, 3)), 1, reg_covar=0.0)  # every point the same: zero covariance
