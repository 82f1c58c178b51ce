"""Mixed tables: kinds inferred from the values, each column's likelihood against torch.distributions, missing
cells masked, rows written back in the table's own form, imputation, and the numeric-table defects of issue 15."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Normal

import vaekit
from vaekit.config import MIN_DEFAULT_STEPS, default_schedule
from vaekit.data.table import TableSchema, infer_schema, read_table, write_table
from vaekit.errors import DataError
from vaekit.models.likelihoods import TableLikelihood

pd = pytest.importorskip("pandas")


@pytest.fixture
def run_cli():
    from test_cli import run_cli as run

    return run


def crafted(n: int = 200, seed: int = 0) -> "pd.DataFrame":
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "id": np.arange(1000, 1000 + n),
        "name": [f"person-{i}" for i in rng.permutation(n)],
        "age": rng.integers(18, 90, n),
        "income": rng.lognormal(10, 0.5, n).round(2),
        "city": rng.choice(["rome", "paris", "oslo", "lima"], n),
        "member": rng.choice(["yes", "no"], n),
        "flag": rng.random(n) < 0.3,
        "stars": rng.integers(1, 4, n),
        "empty": [None] * n,
    })
    frame.loc[rng.random(n) < 0.15, "income"] = np.nan
    frame.loc[rng.random(n) < 0.05, "city"] = None
    return frame


def test_kinds_are_inferred_from_the_values_and_left_out_columns_say_why():
    schema = infer_schema(crafted())
    kinds = {c.name: c.kind for c in schema.columns}
    assert kinds == {"age": "integer", "income": "continuous", "city": "categorical", "member": "boolean",
                     "flag": "boolean", "stars": "categorical"}
    assert set(schema.dropped) == {"id", "name", "empty"}
    assert "ID-like" in schema.dropped["id"] and "ID-like" in schema.dropped["name"]
    assert schema.dropped["empty"] == "empty in every row"
    city = next(c for c in schema.columns if c.name == "city")
    assert city.categories == ["lima", "oslo", "paris", "rome"] and 0 < city.missing_rate < 0.15
    stars = next(c for c in schema.columns if c.name == "stars")
    assert stars.categories == [1, 2, 3] and stars.dtype == "int"
    # the saved form reads back to the same schema
    assert TableSchema.from_dict(schema.to_dict()).to_dict() == schema.to_dict()


def test_overrides_and_refusals():
    frame = crafted()
    schema = infer_schema(frame, categorical=["age"], continuous=["stars"], drop=["member"])
    kinds = {c.name: c.kind for c in schema.columns}
    assert kinds["age"] == "categorical" and kinds["stars"] == "continuous" and "member" not in kinds
    assert schema.dropped["member"] == "--drop-columns"
    with pytest.raises(DataError, match="no column"):
        infer_schema(frame, categorical=["nope"])
    with pytest.raises(DataError, match="holds text"):
        infer_schema(frame, continuous=["city"])
    mixed = pd.DataFrame({"x": [str(v) for v in range(30)] + ["n/a?"]})
    with pytest.raises(DataError, match="mixes numbers and text"):
        infer_schema(mixed)
    assert infer_schema(mixed, categorical=["x"]).columns[0].kind == "categorical"
    free = pd.DataFrame({"comment": [f"text {i % 400}" for i in range(1000)], "v": np.arange(1000) % 7 * 1.5 + 0.1})
    schema = infer_schema(free)
    assert "free text" in schema.dropped["comment"]


def likelihood_for(frame):
    schema = infer_schema(frame)
    lik = TableLikelihood((schema.width,), schema.model_columns())
    return schema, lik


def test_each_column_likelihood_matches_torch_distributions():
    frame = pd.DataFrame({"x": np.linspace(-1.0, 3.5, 40), "k": np.arange(40) % 20 + 3, "b": ["no", "yes"] * 20,
                          "c": ["a", "b", "c", "d"] * 10})
    schema, lik = likelihood_for(frame)
    assert [c.kind for c in schema.columns] == ["continuous", "integer", "boolean", "categorical"]
    x = torch.from_numpy(schema.encode(frame))
    torch.manual_seed(0)
    params = torch.randn(len(x), 3, schema.width)
    nll = lik.column_nll(params, x)
    loc, log_scale, _ = lik._parts(params)
    sd = {c.name: c.std for c in schema.columns}
    # continuous: a Gaussian on the standardized value, the density in the column's own units
    expected = -Normal(loc[:, 0], log_scale[:, 0].exp()).log_prob(x[:, 0]) + math.log(sd["x"])
    torch.testing.assert_close(nll[:, 0], expected)
    # boolean and categorical
    torch.testing.assert_close(nll[:, 2], -Bernoulli(logits=loc[:, 2]).log_prob(x[:, 2]))
    torch.testing.assert_close(nll[:, 3], -Categorical(logits=loc[:, 3:7]).log_prob(x[:, 3:7].argmax(1)))
    # integer: a discretized Gaussian over the observed range, the ends taking the tails; it sums to one
    col = schema.columns[1]
    grid = torch.arange(col.low, col.high + 1, dtype=torch.float64)
    z = ((grid - col.mean) / col.std).float()
    rows = torch.full((len(grid), schema.width), 0.0)
    rows[:, 1] = z
    p = torch.randn(1, 3, schema.width).expand(len(grid), 3, schema.width)
    probs = torch.exp(-lik.column_nll(p, rows)[:, 1].double())
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)  # float32 terms
    m, s = p[0, 0, 1].double(), torch.exp(lik._parts(p)[1][0, 1].double())
    normal = Normal(m * col.std + col.mean, s * col.std)
    inner = normal.cdf(grid[1:-1] + 0.5) - normal.cdf(grid[1:-1] - 0.5)
    torch.testing.assert_close(probs[1:-1], inner, rtol=1e-5, atol=1e-9)
    assert probs[0].item() == pytest.approx(normal.cdf(grid[0] + 0.5).item(), rel=1e-5)


def test_a_missing_cell_changes_neither_the_loss_nor_the_gradient_of_the_other_cells():
    frame = pd.DataFrame({"x": np.linspace(-2, 2, 40), "k": np.arange(40) % 13, "c": ["a", "b", "c", "d"] * 10})
    frame.loc[3, "x"] = np.nan  # the column has missing cells: its missingness is modelled
    schema, lik = likelihood_for(frame)
    x = torch.from_numpy(schema.encode(frame))[:8]
    assert torch.isnan(x[3, 0])
    other = x.clone()
    other[5, 2:6] = float("nan")  # row 5 loses its category
    params = torch.randn(8, 3, schema.width, requires_grad=True)
    full, holed = lik.column_nll(params, x), lik.column_nll(params, other)
    assert holed[5, 2] == 0 and torch.equal(full[:, :2], holed[:, :2]) and torch.equal(full[:5], holed[:5])
    g_full = torch.autograd.grad(full[:, :2].sum(), params)[0]
    g_holed = torch.autograd.grad(holed[:, :2].sum(), params)[0]
    assert torch.isfinite(g_holed).all() and torch.equal(g_full, g_holed)
    # the missing x cell contributes exactly -log P(missing)
    logit = lik._parts(params)[2][3, 0]
    assert full[3, 0].item() == pytest.approx(-torch.nn.functional.logsigmoid(logit).item(), rel=1e-6)


def _every_kind_with_gaps(n: int = 60):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x": rng.normal(5, 2, n), "k": rng.integers(0, 9, n), "b": rng.choice(["no", "yes"], n),
                          "c": rng.choice(["a", "b", "c"], n), "d": rng.choice(["p", "q", "r", "s", "t"], n),
                          "w": rng.integers(0, 100_000, n) * 3})  # a wide integer: bins narrow next to the scale
    frame.loc[rng.random(n) < 0.2, "x"] = np.nan
    frame.loc[rng.random(n) < 0.2, "c"] = None
    frame.loc[rng.random(n) < 0.2, "k"] = np.nan
    return frame


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_fused_training_terms_equal_the_plain_ones_with_their_gradients(dtype):
    frame = _every_kind_with_gaps()
    schema, lik = likelihood_for(frame)
    assert {c.kind for c in schema.columns} == {"continuous", "integer", "boolean", "categorical"}
    x = torch.from_numpy(schema.encode(frame)).to(dtype)
    torch.manual_seed(1)
    params = (3 * torch.randn(4, len(x), 3, schema.width, dtype=dtype)).requires_grad_(True)  # extra sample axis
    weights = torch.rand(4, len(x), lik.n_columns, dtype=dtype)  # a different upstream gradient per term
    lik.train()
    lik.fused = False
    plain = lik.column_nll(params, x)
    (g_plain,) = torch.autograd.grad((plain * weights).sum(), params)
    lik.fused = True
    fused = lik.column_nll(params, x)
    assert fused.grad_fn is not None and "Fused" in type(fused.grad_fn).__name__
    (g_fused,) = torch.autograd.grad((fused * weights).sum(), params)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(fused, plain, **tol)
    torch.testing.assert_close(g_fused, g_plain, **tol)
    assert torch.isfinite(g_fused).all()
    # evaluation (no gradient, or eval mode) takes the plain operations
    lik.eval()
    assert "Fused" not in type(lik.column_nll(params, x).grad_fn).__name__


def test_the_fused_terms_pass_gradcheck():
    # (without the wide integer column: central differences on its narrow bins are less exact than the closed
    # form, which the test above checks against the unfused terms)
    frame = _every_kind_with_gaps(12).drop(columns="w")
    schema, lik = likelihood_for(frame)
    x = torch.from_numpy(schema.encode(frame)).double()
    params = torch.randn(len(x), 3, schema.width, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    lik.train()
    assert torch.autograd.gradcheck(lambda p: lik.column_nll(p, x), (params.requires_grad_(True),))


def test_the_decoder_gives_exactly_the_parameters_the_likelihood_reads():
    from vaekit.config import ModelConfig, RunConfig
    from vaekit.models.model import VAEModel
    from vaekit.models.networks import TableOutput

    frame = _every_kind_with_gaps()
    schema, lik = likelihood_for(frame)
    columns, width = schema.model_columns(), schema.width
    read = torch.zeros(3 * width, dtype=torch.bool)
    read[lik.read_positions()] = True
    x = torch.from_numpy(schema.encode(frame)).double()
    params = torch.randn(len(x), 3, width, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    lik.eval()
    # the positions left out get no gradient from any row, and every kept one gets some
    (grad,) = torch.autograd.grad(lik.column_nll(params.requires_grad_(True), x).sum(), params)
    reached = grad.abs().sum(0).flatten() > 0
    assert torch.equal(reached, read)
    # and changing them changes no likelihood, no mean and no draw
    other = params.detach().flatten(1).clone()
    other[:, ~read] = 1e3 * torch.randn(len(x), int((~read).sum()), dtype=torch.float64)
    other = other.reshape(params.shape)
    torch.testing.assert_close(lik.column_nll(other, x), lik.column_nll(params.detach(), x), rtol=0, atol=0)
    torch.testing.assert_close(lik.mean_values(other), lik.mean_values(params.detach()), rtol=0, atol=0, equal_nan=True)
    draws = [lik.draw(p, torch.Generator().manual_seed(5)) for p in (other, params.detach())]
    torch.testing.assert_close(*draws, rtol=0, atol=0, equal_nan=True)

    # New table models decode to those positions only, zeros elsewhere; a saved config without the field (runs made
    # before it) keeps the decoder to all three parameters per value, so its weights load.
    config = ModelConfig(input_shape=(width,), latent_dim=3, hidden=(16,), likelihood="table", table_columns=columns,
                         table_outputs="used")
    model = VAEModel(config)
    assert isinstance(model.decoder[-1], TableOutput) and model.decoder[-1].linear.out_features == int(read.sum())
    out = model.decoder(torch.randn(5, 3)).detach()
    assert out.shape == (5, 3, width) and not out.flatten(1)[:, ~read].any() and out.flatten(1)[:, read].all()
    vae = vaekit.VAE(epochs=1, latent_dim=3, hidden=(16,)).fit(frame)
    assert vae.config_.model.table_outputs == "used"
    saved = vae.config_.to_dict()
    del saved["model"]["table_outputs"]
    old = RunConfig.from_dict(saved).model
    assert old.table_outputs == "all"
    assert VAEModel(old).decoder[0][-1].out_features == 3 * width
    with pytest.raises(vaekit.ConfigError, match="table_outputs"):
        ModelConfig(input_shape=(width,), latent_dim=3, likelihood="table", table_columns=columns, table_outputs="some")


@pytest.fixture(scope="module")
def fitted():
    frame = crafted(400)
    vae = vaekit.VAE(epochs=30, latent_dim=4, hidden=(64,)).fit(frame)
    return frame, vae


def test_samples_come_back_in_the_tables_own_form_and_read_back_the_same(fitted, tmp_path):
    frame, vae = fitted
    synth = vae.sample(300, seed=1)
    assert list(synth.columns) == [c for c in frame.columns if c not in ("id", "name", "empty")]
    assert set(synth["city"].dropna()) <= {"rome", "paris", "oslo", "lima"}
    assert set(synth["member"].dropna()) <= {"yes", "no"} and synth["flag"].dtype == bool
    assert synth["age"].between(18, 89).all() and (synth["age"] == synth["age"].round()).all()
    assert 0.02 < synth["income"].isna().mean() < 0.4  # missing cells drawn at a learned rate
    income = synth["income"].dropna().to_numpy()
    np.testing.assert_array_equal(income, np.round(income, 2))  # written with the table's 2 decimals
    for suffix in (".csv", ".parquet"):
        path = tmp_path / f"synth{suffix}"
        write_table(synth, path)
        back = read_table(path)
        assert list(back.columns) == list(synth.columns)
        assert read_table(str(path)).equals(back)  # a path given as text reads the same
        again = vae.schema_.encode(back)
        np.testing.assert_allclose(again, vae.schema_.encode(synth), rtol=1e-6, atol=1e-6)
    assert b"\r\n" not in (tmp_path / "synth.csv").read_bytes()


def test_impute_fills_missing_cells_and_keeps_the_observed_ones(fitted):
    frame, vae = fitted
    rows = frame.head(60)
    filled = vae.impute(rows)
    names = vae.schema_.names
    observed = rows[names].notna()
    assert not filled[names].isna().any().any()
    for name in names:
        kept = observed[name].to_numpy()
        a, b = rows[name].to_numpy()[kept], filled[name].to_numpy()[kept]
        if rows[name].dtype.kind == "f":
            np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=1e-5)
        else:
            assert list(a) == list(b)
    draws = vae.impute(rows, draws=3, seed=2)
    assert len(draws) == 3 and all(not d[names].isna().any().any() for d in draws)
    holes = rows["income"].isna().to_numpy()
    assert holes.any() and not np.allclose(draws[0]["income"][holes], draws[1]["income"][holes])


def test_scoring_time_errors_name_the_problem(fitted, tmp_path):
    frame, vae = fitted
    unseen = frame.head(5).copy()
    unseen.loc[unseen.index[2], "city"] = "tokyo"
    with pytest.raises(DataError, match="tokyo.*never saw"):
        vae.score_samples(unseen)
    with pytest.raises(DataError, match="no column.*'city'"):
        vae.transform(frame.drop(columns=["city"]).head(5))
    assert vae.transform(frame.head(5).assign(extra=1)).shape == (5, 4)  # extra columns are ignored
    with pytest.raises(DataError, match="DataFrame"):
        vae.score_samples(np.ones((3, 2)))
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet at all")
    with pytest.raises(DataError, match="cannot read .* as Parquet"):
        read_table(bad)


def test_exporting_a_table_model_is_refused_with_the_reason(fitted, tmp_path):
    from vaekit.errors import ConfigError
    from vaekit.export import export_model

    with pytest.raises(ConfigError, match="mixed table is not supported"):
        export_model(fitted[1], tmp_path / "m.onnx")


def test_column_nll_sums_to_about_the_row_nll_for_independent_columns(fitted):
    frame, vae = fitted
    per_column = vae.column_nll(frame.tail(80), num_importance_samples=50)
    assert set(per_column) == set(vae.schema_.names)
    total = -vae.score_samples(frame.tail(80), num_importance_samples=50).mean()
    # the crafted columns are independent: the marginals add up to the joint, within a nat or so
    assert sum(per_column.values()) == pytest.approx(total, abs=1.5)


def test_cli_trains_on_the_issues_mixed_table(tmp_path, run_cli):
    csv = tmp_path / "mixed.csv"
    csv.write_text("age,income,city,member\n" + "\n".join(
        f"{20 + i % 50},{'' if i == 7 else 30000.25 + 517 * (i % 37)},{['rome', 'oslo', 'lima'][i % 3]},{'yes' if i % 4 else 'no'}"
        for i in range(120)) + "\n")
    out = tmp_path / "run"
    result = run_cli("train", str(csv), "--out", str(out), "--epochs", "5", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "city: categorical, 3 categories" in result.stderr and "income: continuous" in result.stderr
    synth = tmp_path / "synth.csv"
    assert run_cli("sample", str(out), "-n", "50", "-o", str(synth)).returncode == 0
    back = pd.read_csv(synth)
    assert list(back.columns) == ["age", "income", "city", "member"] and len(back) == 50
    filled = tmp_path / "filled.csv"
    assert run_cli("impute", str(out), str(csv), "-o", str(filled)).returncode == 0
    assert pd.read_csv(filled)["income"].notna().all()
    result = run_cli("eval", str(out), f"{csv}:test", "--importance-samples", "20")
    assert result.returncode == 0 and "per column" in result.stdout and "income" in result.stdout


# --- the numeric-table defects ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def wine_csv(tmp_path_factory):
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    path = tmp_path_factory.mktemp("wine") / "wine.csv"
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["target"])
    np.savetxt(path, np.c_[x, y], delimiter=",", header=header, comments="", fmt="%.6g")
    return path, x


def test_split_rows_are_in_original_units_and_not_standardized_twice(wine_csv):
    path, x = wine_csv
    data = vaekit.load_dataset(str(path), label_column="target")
    test = data.split("test")
    assert test.shape[1] == 13 and test["f12"].mean() > 100  # proline as written, not standardized
    vae = vaekit.VAE(epochs=20, latent_dim=4).fit(data)
    model_rows = data.split("test", units="model").numpy()
    a = vae.evaluate(test, num_importance_samples=20).neg_elbo
    b = vae.evaluate(model_rows, num_importance_samples=20).neg_elbo
    assert a == pytest.approx(b, rel=1e-5)
    # the training history's validation -ELBO (the same rows) is in the same, original units
    assert vae.history_[-1]["val_neg_elbo"] == pytest.approx(a, abs=1.0)


def test_fit_on_a_raw_array_standardizes_as_the_cli_does(wine_csv):
    _, x = wine_csv
    vae = vaekit.VAE(epochs=20, latent_dim=4).fit(x)
    assert vae.config_.data.standardize_mean is not None
    log_px = vae.score_samples(x[:20], num_importance_samples=20)
    assert -60 < log_px.mean() < 0  # nats in original units; unstandardized data gave about -458,000
    raw = vaekit.VAE(epochs=2, latent_dim=4, standardize=False).fit(x)
    assert raw.config_.data.standardize_mean is None
    with pytest.raises(DataError, match="standardize"):
        vaekit.VAE(standardize="yes").fit(x)
    # the training log reports the same units as evaluate
    assert vae.history_[-1]["val_neg_elbo"] < 60


def test_defaults_scale_with_the_data():
    batch, epochs, why = default_schedule(160)
    assert math.ceil(160 / batch) * epochs >= MIN_DEFAULT_STEPS and batch >= 16 and "160 training examples" in why
    assert default_schedule(60_000) == (256, 10, "")
    assert default_schedule(500, batch_size=500)[1] == MIN_DEFAULT_STEPS
    assert default_schedule(500, epochs=3)[1] == 3


def test_training_hides_cells_from_the_encoder_only():
    frame = pd.DataFrame({"x": np.linspace(-1.0, 3.5, 40), "c": ["a", "b", "c", "d"] * 10})
    schema, lik = likelihood_for(frame)
    x = torch.from_numpy(schema.encode(frame)).repeat(250, 1)  # 10,000 rows
    hidden = torch.isnan(lik.hide_cells(x, torch.Generator().manual_seed(0)))
    block = hidden[:, 1:5]
    assert (block.all(1) | ~block.any(1)).all()  # a category is hidden whole or not at all
    per_column = torch.stack([hidden[:, 0], block[:, 0]], 1)
    share_rows = per_column.any(1).float().mean().item()
    expected_rows = lik.HIDDEN_ROWS * (1 - (1 - lik.HIDE_RATE) ** 2)
    assert share_rows == pytest.approx(expected_rows, abs=0.02)
    assert per_column.float().mean().item() == pytest.approx(lik.HIDDEN_ROWS * lik.HIDE_RATE, abs=0.02)
    # the objective hides cells only while training; in eval mode it is the plain ELBO of the rows
    from vaekit.config import ModelConfig
    from vaekit.models.model import VAEModel
    from vaekit.models.objectives import elbo_objective

    model = VAEModel(ModelConfig(input_shape=(schema.width,), latent_dim=2, hidden=(8,), likelihood="table",
                                 table_columns=schema.model_columns())).eval()
    rows = x[:40]
    loss, _, _ = elbo_objective(model, rows, 1.0, torch.Generator().manual_seed(3))
    terms = model.elbo_terms(rows, generator=torch.Generator().manual_seed(3))
    assert loss.item() == pytest.approx(terms.neg_elbo.mean().item(), rel=1e-6)


def test_building_a_table_model_on_the_meta_device_does_not_load_torchs_compiler(tmp_path):
    """Every command that loads a run first lays the model out on the meta device (checkpoint.load_model); a
    tensor operation there goes through torch's reference decompositions, which import torch._dynamo: about a
    second of `vaekit sample` on a table run. The table likelihood builds its buffers from Python numbers."""
    import json
    import subprocess
    import sys

    schema, _ = likelihood_for(_every_kind_with_gaps())
    (tmp_path / "columns.json").write_text(json.dumps({"width": schema.width, "columns": schema.model_columns()}))
    code = (
        "import json, sys, torch\n"
        "from vaekit.models.likelihoods import TableLikelihood\n"
        f"spec = json.load(open({str(tmp_path / 'columns.json')!r}))\n"
        "with torch.device('meta'):\n"
        "    lik = TableLikelihood((spec['width'],), spec['columns'])\n"
        "    lik.read_positions()\n"
        "print('torch._dynamo' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
