"""The conditional VAE (Sohn et al. 2015): q(z|x, y), p(x|z, y) under a one-hot label, through the library and the CLI."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

import vaekit
from vaekit.config import ModelConfig
from vaekit.data.labels import label_indices, label_names, resolve_label, resolve_labels, training_classes
from vaekit.errors import ConfigError, DataError
from vaekit.evaluation.sample_quality import conditional_accuracy
from vaekit.models.model import VAEModel

CLASSES = ["cat", "dog", "owl"]


def _model(arch: str = "mlp", **options) -> VAEModel:
    torch.manual_seed(0)
    shape = (1, 16, 16) if arch == "conv" else (12,)
    config = ModelConfig(input_shape=shape, latent_dim=3, arch=arch, hidden=(8,) if arch == "mlp" else (4, 8),
                         likelihood="bernoulli", num_classes=3, class_names=CLASSES, **options)
    return VAEModel(config).eval()


def test_the_elbo_equals_an_independent_computation_from_torch_distributions():
    model = _model()
    x = torch.bernoulli(torch.full((5, 12), 0.3), generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1, 0])
    one_hot = torch.nn.functional.one_hot(y, 3).float()
    eps = torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(2))
    z, log_pz, log_qz = model.latent_log_densities(x, 1, noise=[eps], y=y)
    # By hand: the encoder reads [x, one-hot y], the decoder [z, one-hot y].
    features = model.encoder(torch.cat([x, one_hot], 1))
    mu, logvar = model.mean_head(features), model.logvar_head(features)
    z_hand = mu + torch.exp(0.5 * logvar) * eps
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    p = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    logits = model.decoder(torch.cat([z_hand[0], one_hot], 1)).reshape(5, 12)
    torch.testing.assert_close(z, z_hand)
    torch.testing.assert_close(log_qz, q.log_prob(z_hand))
    torch.testing.assert_close(log_pz, p.log_prob(z_hand))
    torch.testing.assert_close(model.decode(z, y).log_prob(x)[0], Independent(Bernoulli(logits=logits), 1).log_prob(x))
    # The closed-form KL of the bound: 0.5 * sum(mu^2 + var - 1 - log var).
    terms = model.elbo_terms(x, generator=torch.Generator().manual_seed(3), y=y)
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)
    torch.testing.assert_close(terms.kl, kl)


def test_the_label_changes_what_is_decoded_and_a_missing_or_needless_label_is_refused():
    model = _model()
    z = torch.randn(4, 3)
    a = model.decode(z, torch.zeros(4, dtype=torch.long)).mean
    b = model.decode(z, torch.full((4,), 2)).mean
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="conditional"):
        model.decode(z)
    plain = VAEModel(ModelConfig(input_shape=(12,), latent_dim=3, hidden=(8,)))
    with pytest.raises(ValueError, match="not conditional"):
        plain.decode(z, torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("options", [dict(arch="conv"), dict(upper_latent_dims=(2,), inference="top-down"),
                                     dict(upper_latent_dims=(2,), inference="bottom-up")])
def test_convolutional_and_hierarchical_conditional_models_bound_log_p_x_given_y(options):
    model = _model(**options)
    x = torch.bernoulli(torch.full((6, *model.input_shape), 0.4), generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    log_w = model.log_importance_weights(x, 2000, generator=torch.Generator().manual_seed(1), y=y)
    iw = torch.logsumexp(log_w, 0) - math.log(2000)
    elbo = log_w.mean(0)
    assert torch.all(iw >= elbo - 1e-4)  # Jensen: the importance-weighted bound is the tighter one
    assert model.sample_latent(5).shape == (5, 3)


def test_one_hot_labels_round_trip_by_name_and_by_index():
    model = _model()
    y = torch.tensor([2, 0, 1, 1])
    assert torch.equal(model.label_one_hot(y).argmax(1), y)
    assert model.label_one_hot(y).sum(1).tolist() == [1.0] * 4
    raw = np.array([1, 0, 2, 2])
    names = label_names(raw, CLASSES)
    assert list(names) == ["dog", "cat", "owl", "owl"]
    assert label_indices(names, CLASSES).tolist() == raw.tolist()
    assert label_indices(raw, CLASSES, CLASSES).tolist() == raw.tolist()
    assert resolve_label("owl", CLASSES) == 2 and resolve_label(1, CLASSES) == 1 and resolve_label("0", CLASSES) == 0
    assert resolve_labels("dog", CLASSES, 3).tolist() == [1, 1, 1]
    # Numeric classes are matched by name first: the class "3" is at index 1 here.
    assert resolve_label(3, ["1", "3", "5"]) == 1
    assert training_classes(np.array([10, 2, 2, 10, 33])) == ["2", "10", "33"]


def test_unknown_and_missing_labels_are_clear_errors():
    with pytest.raises(DataError, match="not classes of this model"):
        label_indices(["cat", "emu"], CLASSES)
    with pytest.raises(DataError, match="unknown label 'emu'.*3 classes: cat, dog, owl"):
        resolve_label("emu", CLASSES)
    with pytest.raises(DataError, match="example 1 has no label"):
        label_names(np.array(["cat", None], dtype=object))
    with pytest.raises(DataError, match="at least two classes"):
        training_classes(np.array(["a", "a"]))
    with pytest.raises(ConfigError, match="VampPrior"):
        ModelConfig(input_shape=(4,), prior="vamp", num_classes=2, class_names=["a", "b"])
    with pytest.raises(ConfigError, match="distinct names"):
        ModelConfig(input_shape=(4,), num_classes=2, class_names=["a", "a"])


def test_conditional_accuracy_counts_samples_classified_as_their_label():
    class Classifier:  # predicts the data set's own label values, here the digits 0..9 by position
        def __init__(self, predicted):
            self.predicted = np.asarray(predicted)

        def predict(self, samples):
            return self.predicted

    class Fitted:
        classes_ = np.array([str(i) for i in range(10)], dtype=object)

    data = vaekit.load_dataset("digits")
    labels = np.array([0, 0, 1, 1, 1, 7])
    accuracy, per_label = conditional_accuracy(Fitted(), data, Classifier([0, 3, 1, 1, 2, 7]), None, labels)
    assert accuracy == pytest.approx(4 / 6)
    assert per_label == {"0": 0.5, "1": pytest.approx(2 / 3), "7": 1.0}


@pytest.fixture(scope="module")
def digits_cvae():
    data = vaekit.load_dataset("digits")
    vae = vaekit.VAE(latent_dim=4, hidden=(128,), epochs=40, lr=3e-3, conditional=True, seed=0).fit(data)
    return data, vae


def test_a_conditional_digits_model_generates_the_class_asked_for(digits_cvae):
    from sklearn.linear_model import LogisticRegression

    data, vae = digits_cvae
    assert list(vae.classes_) == [str(i) for i in range(10)]
    train = data.split("train").numpy().reshape(len(data.x_train), -1)
    judge = LogisticRegression(max_iter=2000).fit(train, data.labels("train"))
    asked = np.repeat(np.arange(10), 20)
    samples = vae.sample(len(asked), y=asked, seed=1).reshape(len(asked), -1)
    assert (judge.predict(samples) == asked).mean() >= 0.8  # an unconditional model's samples would score ~0.1
    # Reconstruction under the example's own label is better than under a wrong one.
    x, y = data.split("test")[:100].numpy(), data.labels("test")[:100]
    own = vae.elbo(x, y=y)["neg_elbo"].mean()
    wrong = vae.elbo(x, y=(y + 5) % 10)["neg_elbo"].mean()
    assert own < wrong - 1.0
    with pytest.raises(DataError, match="conditional: give y"):
        vae.sample(3)
    with pytest.raises(DataError, match="unknown label '12'"):
        vae.sample(3, y="12")
    with pytest.raises(DataError, match="2 labels for 3 examples"):
        vae.transform(x[:3], y=[1, 2])


def test_a_saved_conditional_model_reloads_with_its_classes(digits_cvae, tmp_path):
    data, vae = digits_cvae
    vae.save(tmp_path / "run")
    again = vaekit.load(tmp_path / "run")
    assert list(again.classes_) == list(vae.classes_)
    np.testing.assert_array_equal(again.sample(6, y=[0, 1, 2, 3, 4, 5], seed=2),
                                  vae.sample(6, y=[0, 1, 2, 3, 4, 5], seed=2))
    x, y = data.split("test")[:20].numpy(), data.labels("test")[:20]
    moved = again.transfer(x, y, to=3)
    np.testing.assert_allclose(moved, again.decode(again.transform(x, y), y=3))


def test_the_gmm_sampler_of_a_conditional_model_encodes_under_the_labels(digits_cvae):
    from vaekit.generation import samplers

    data, vae = digits_cvae
    x, y = data.split("train").numpy(), data.labels("train")
    sampler = samplers.fit_sampler(vae, x, kind="gmm", y=y, max_components=2, per_label=False)
    assert not sampler.per_label and sampler.component_labels is None and sampler.bic
    codes = samplers.latent_codes(vae, x[:10], y=y[:10])
    np.testing.assert_allclose(codes, vae.transform(x[:10], y[:10]), rtol=1e-5, atol=1e-6)
    assert vae.sample(4, y="7", sampler="gmm").shape == (4, 1, 8, 8)
    assert sampler.dim == 4


def test_a_conditional_models_gmm_is_one_mixture_per_label_fitted_on_that_labels_codes(digits_cvae):
    from vaekit.generation import samplers

    data, vae = digits_cvae
    x, y = data.split("train").numpy(), np.asarray(data.labels("train"))
    sampler = samplers.fit_sampler(vae, x, kind="gmm", y=y, max_components=1)  # per label: the default here
    assert sampler.per_label and sampler.label_components() == {c: 1 for c in range(10)}
    assert set(sampler.bic_by_label) == set(range(10)) and not sampler.bic
    codes = vae.transform(x, y).astype(np.float64)
    for c in range(10):  # one component per label: the label's codes' own mean, covariance and share
        own = codes[y == c]
        k = int(np.flatnonzero(sampler.component_labels.numpy() == c)[0])
        np.testing.assert_allclose(sampler.means[k].numpy(), own.mean(0), atol=1e-6)
        np.testing.assert_allclose(sampler.covariances[k].numpy(),
                                   np.cov(own.T, bias=True) + samplers.DEFAULT_REG_COVAR * np.eye(4), atol=1e-5)
        assert sampler.weights[k].item() == pytest.approx((y == c).mean())
    # Codes drawn for label 7 come from label 7's Gaussian, not from the mixture of all labels.
    generator = torch.Generator().manual_seed(0)
    drawn = sampler.sample_latent(vae, 20_000, generator, y=torch.full((20_000,), 7)).double().numpy()
    k = int(np.flatnonzero(sampler.component_labels.numpy() == 7)[0])
    spread = np.sqrt(np.diag(sampler.covariances[k].numpy()))
    assert np.all(np.abs(drawn.mean(0) - sampler.means[k].numpy()) < 0.05 * spread + 1e-3)
    # vae.sample passes its labels on: a sample of label 3 decodes a code of label 3's mixture.
    z3 = sampler.sample_latent(vae, 5, torch.Generator().manual_seed(4), y=torch.full((5,), 3))
    np.testing.assert_allclose(vae.sample(5, y=3, sampler="gmm", seed=4), vae.decode(z3.numpy(), y=3), atol=1e-6)


def test_a_per_label_gmm_round_trips_and_a_label_it_never_saw_is_a_clear_error(digits_cvae, tmp_path):
    from vaekit.generation import samplers

    data, vae = digits_cvae
    x, y = data.split("train").numpy(), np.asarray(data.labels("train"))
    keep = y != 9
    sampler = samplers.fit_sampler(vae, x[keep], kind="gmm", y=y[keep], max_components=2)
    assert 9 not in sampler.label_components()
    with pytest.raises(DataError, match="no examples of 9"):
        vae.sample(3, y=[1, 9, 2], sampler="gmm")
    samplers.save_sampler(sampler, tmp_path)
    again = samplers.load_sampler(tmp_path, vae)
    for name in (*samplers.TENSOR_NAMES, "component_labels"):
        assert torch.equal(getattr(again, name), getattr(sampler, name)), name
    assert again.bic_by_label == sampler.bic_by_label and again.per_label
    np.testing.assert_array_equal(vae.sample(4, y=5, sampler="gmm", seed=3), vae.sample(4, y=5, sampler=again, seed=3))
    with pytest.raises(ConfigError, match="conditional model"):
        samplers.fit_sampler(vaekit.VAE(latent_dim=2, epochs=1).fit(x[:50]), x[:50], per_label=True)


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "vaekit", *args], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_cli_conditional_run_end_to_end(tmp_path):
    run = str(tmp_path / "run")
    out = _cli("train", "digits", "--out", run, "--conditional", "--epochs", "3", "--latent-dim", "4", "--no-progress")
    assert "conditional on 10 classes" in out.stderr
    _cli("sample", run, "--per-label", "3", "-o", str(tmp_path / "grid.png"))
    _cli("sample", run, "--label", "3", "--label", "7", "-n", "4", "-o", str(tmp_path / "s.csv"))
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert rows[0].startswith("label,") and [r.split(",")[0] for r in rows[1:]] == ["3"] * 4 + ["7"] * 4
    _cli("transfer", run, "digits", "--to-label", "0", "-o", str(tmp_path / "t.png"))
    fitted = _cli("fit-sampler", run, "--max-components", "2")
    assert "one mixture per label" in fitted.stdout
    _cli("sample", run, "--sampler", "gmm", "--label", "4", "-n", "3", "-o", str(tmp_path / "g.npy"))
    assert np.load(tmp_path / "g.npy").shape == (3, 1, 8, 8)
    _cli("reconstruct", run, "digits", "-o", str(tmp_path / "r.png"))
    evaluation = _cli("eval", run, "-k", "20")
    assert "p(x|y)" in evaluation.stdout
    _cli("score", run, "digits", "-o", str(tmp_path / "scores.csv"))
    assert b"\r" not in (tmp_path / "scores.csv").read_bytes()
    bad = _cli("sample", run, "--label", "banana", "-o", str(tmp_path / "x.png"), check=False)
    assert bad.returncode == 2 and "unknown label 'banana'" in bad.stderr
    bad = _cli("score", run, "digits", "--scores", "llr", "-o", str(tmp_path / "x.csv"), check=False)
    assert bad.returncode == 2
    bad = _cli("fit-detector", run, check=False)
    assert bad.returncode == 2 and "conditional" in bad.stderr
    bad = _cli("export", run, "-o", str(tmp_path / "decoder.pt"), check=False)
    assert bad.returncode == 2 and "conditional" in bad.stderr


def test_cli_label_options_on_an_unconditional_run_are_refused(tmp_path):
    run = str(tmp_path / "plain")
    _cli("train", "digits", "--out", run, "--epochs", "1", "--latent-dim", "2", "--no-progress")
    bad = _cli("sample", run, "--label", "3", "-o", str(tmp_path / "x.png"), check=False)
    assert bad.returncode == 2 and "not a conditional run" in bad.stderr
    bad = _cli("transfer", run, "digits", "--to-label", "3", "-o", str(tmp_path / "x.png"), check=False)
    assert bad.returncode == 2 and "not a conditional run" in bad.stderr
