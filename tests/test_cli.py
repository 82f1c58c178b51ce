"""The command line end to end on digits, and its handling of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaekit.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "vaekit", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    result = run_cli("train", "digits", "--out", str(run), "--epochs", "3", "--latent-dim", "3", "--hidden", "32",
                     "--batch-size", "64", "--seed", "1", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "val -ELBO" in result.stderr
    return run


def test_train_writes_a_complete_run_directory(cli_run):
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "loss_curve.png", "samples.png",
                 "reconstructions.png", "checkpoint.json"):
        assert (cli_run / name).is_file(), name
    config = json.loads((cli_run / "config.json").read_text())
    assert config["model"]["latent_dim"] == 3 and config["model"]["hidden"] == [32]
    assert config["train"]["epochs"] == 3


def test_sample_reconstruct_encode_decode_info(cli_run, tmp_path, capsys):
    out = tmp_path
    assert main(["sample", str(cli_run), "-n", "16", "-o", str(out / "s.png")]) == 0
    assert Image.open(out / "s.png").size[0] > 8 * 4
    assert main(["sample", str(cli_run), "-n", "16", "-o", str(out / "s.npy")]) == 0
    assert np.load(out / "s.npy").shape == (16, 1, 8, 8)
    assert main(["reconstruct", str(cli_run), "digits:test", "-o", str(out / "r.png")]) == 0
    assert main(["reconstruct", str(cli_run), "digits:test", "-n", "5", "-o", str(out / "r.npy")]) == 0
    assert np.load(out / "r.npy").shape == (5, 1, 8, 8)
    assert main(["encode", str(cli_run), "digits:test", "-o", str(out / "z.npy")]) == 0
    z = np.load(out / "z.npy")
    assert z.shape == (359, 3)
    assert main(["encode", str(cli_run), "digits", "--samples", "4", "-o", str(out / "z.npz")]) == 0
    with np.load(out / "z.npz") as archive:
        assert archive["samples"].shape == (359, 4, 3) and (archive["variance"] > 0).all()
        assert archive["labels"].shape == (359,)
    assert main(["encode", str(cli_run), "digits:test", "-o", str(out / "z.csv")]) == 0
    assert (out / "z.csv").read_text().splitlines()[0] == "z0,z1,z2"
    assert main(["decode", str(cli_run), str(out / "z.npy"), "-o", str(out / "d.npy")]) == 0
    decoded = np.load(out / "d.npy")
    assert decoded.shape == (359, 1, 8, 8)
    np.testing.assert_allclose(decoded[:5], np.load(out / "r.npy"), rtol=1e-6)  # decode(encode(x)) = reconstruct(x)
    assert main(["decode", str(cli_run), str(out / "z.csv"), "-o", str(out / "d.png")]) == 0
    assert main(["info", str(cli_run)]) == 0
    printed = capsys.readouterr().out
    assert "validation -ELBO" in printed and "output bias from pytorch (output-init auto)" in printed
    assert main(["info", str(cli_run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["epochs_done"] == 3 and info["config"]["model"]["latent_dim"] == 3


def test_resume_continues_and_refuses_changed_settings(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "digits", "--out", str(run), "--epochs", "1", "--hidden", "16", "--no-progress"]) == 0
    assert main(["train", "digits", "--out", str(run), "--epochs", "2", "--resume", "--no-progress"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert main(["train", "--out", str(run), "--epochs", "3", "--resume", "--no-progress"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert main(["train", "digits", "--out", str(run), "--resume", "--latent-dim", "7"]) == 2
    assert main(["train", "digits", "--out", str(run), "--epochs", "1"]) == 2  # exists: needs --resume


def test_csv_data_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["a,b,c"] + [f"{x:.4f},{2 * x + 100:.4f},{rng.normal():.4f}" for x in rng.normal(size=120)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "t.csv"), "--out", str(run), "--epochs", "2", "--latent-dim", "2",
                 "--no-progress"]) == 0
    assert main(["sample", str(run), "-n", "5", "-o", str(tmp_path / "s.csv")]) == 0
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "a,b,c" and len(lines) == 6
    assert main(["reconstruct", str(run), str(tmp_path / "t.csv"), "-o", str(tmp_path / "r.csv")]) == 0
    recon = np.loadtxt(tmp_path / "r.csv", delimiter=",", skiprows=1)
    assert recon.shape == (120, 3) and 80 < recon[:, 1].mean() < 120  # original units
    assert main(["sample", str(run), "-n", "5", "-o", str(tmp_path / "s.png")]) == 0


# --- bad input: one line, no traceback, exit code 2, nothing written -----------------------------------

@pytest.mark.parametrize("args,match", [
    (["train", "/no/such/data.npy", "--out", "{tmp}/r"], "is neither a built-in data set (digits, fashion-mnist) nor"),
    (["train", "digits", "--out", "{tmp}/r", "--likelihood", "gaussian-learned", "--binarize", "dynamic",
      "--epochs", "1", "--lr", "-1"], "lr must be a positive number"),
    (["train", "digits:test", "--out", "{tmp}/r"], "drop ':test'"),
    (["train", "digits", "--out", "{tmp}/r", "--adam-beta2", "1"], "adam_beta2 must be in [0, 1), got 1.0"),
    (["train", "digits", "--out", "{tmp}/r", "--perturb", "1"], "perturb_rate must be in [0, 1), got 1.0"),
    (["sample", "{tmp}/nothing", "-o", "{tmp}/s.png"], "does not exist"),
    (["sample", "{run}", "-o", "{tmp}/s.gif"], "must end in .png, .npy, .csv"),
    (["decode", "{run}", "{tmp}/missing.npy", "-o", "{tmp}/d.png"], "missing.npy does not exist"),
    (["encode", "{run}", "digits", "--samples", "3", "-o", "{tmp}/z.npy"], "needs an .npz output"),
])
def test_bad_input_gives_one_clear_line(cli_run, tmp_path, capsys, args, match):
    args = [a.format(tmp=tmp_path, run=cli_run) for a in args]
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vaekit: error:"), lines
    assert match in lines[0]
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob("*.png"))


def test_a_real_process_prints_no_traceback(tmp_path):
    result = run_cli("reconstruct", str(tmp_path / "norun"), "digits", "-o", str(tmp_path / "r.png"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"vaekit: error: {tmp_path / 'norun'} does not exist"]


def test_wrong_shape_data_for_a_checkpoint(cli_run, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((10, 5)))
    assert main(["encode", str(cli_run), str(tmp_path / "x.npy"), "-o", str(tmp_path / "z.npy")]) == 2
    assert "the model expects (1, 8, 8)" in capsys.readouterr().err
    assert not (tmp_path / "z.npy").exists()
    np.save(tmp_path / "z.npy", np.zeros((4, 9)))
    assert main(["decode", str(cli_run), str(tmp_path / "z.npy"), "-o", str(tmp_path / "d.png")]) == 2
    assert "latent vectors of shape (n, 3)" in capsys.readouterr().err


def test_corrupt_checkpoint(cli_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    (run / "model.safetensors").write_bytes(b"\x00" * 10)
    assert main(["sample", str(run), "-o", str(tmp_path / "s.png")]) == 2
    assert "not a valid safetensors file" in capsys.readouterr().err
    assert not (tmp_path / "s.png").exists()


def test_unknown_option_value_is_rejected_by_the_parser(tmp_path):
    result = run_cli("train", "digits", "--out", str(tmp_path / "r"), "--arch", "transformer")
    assert result.returncode == 2 and "invalid choice: 'transformer'" in result.stderr
    assert not (tmp_path / "r").exists()


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("vaekit")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "sample" in result.stdout


# --- vaekit eval ---------------------------------------------------------------------------------------

def test_eval_reports_text_json_and_per_example_values(cli_run, tmp_path, capsys):
    assert main(["eval", str(cli_run), "-k", "20", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "digits:test: 359 examples, K=20 importance samples" in text
    assert "-log p(x)" in text and "active units" in text and "KL per latent dimension" in text
    assert "collapsed" not in text
    csv_path = tmp_path / "values.csv"
    assert main(["eval", str(cli_run), "digits:test", "--importance-samples", "20", "--json",
                 "--per-example", str(csv_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    for key in ("neg_elbo", "reconstruction", "kl", "nll", "nll_stderr", "importance_samples", "active_units"):
        assert key in summary, key
    assert summary["importance_samples"] == 20 and summary["num_examples"] == 359
    assert summary["bits_per_dim"] is None  # digits intensities are not binary: no probabilities
    assert len(summary["kl_per_dim"]) == 3
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "index,neg_elbo,reconstruction,kl,nll,label" and len(rows) == 360
    nll = np.loadtxt(csv_path, delimiter=",", skiprows=1, usecols=4)
    assert nll.mean() == pytest.approx(summary["nll"], rel=1e-6)
    # The same command gives the same number.
    assert main(["eval", str(cli_run), "-k", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nll"] == summary["nll"]


def test_eval_warns_of_a_collapsed_posterior(tmp_path, capsys):
    from vaekit.cli.evaluate import collapse_warnings

    run = tmp_path / "collapsed"  # a KL weight of 200 leaves the encoder nothing to gain from encoding x
    assert main(["train", "digits", "--out", str(run), "--epochs", "2", "--latent-dim", "3", "--hidden", "16",
                 "--kl-weight", "200", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "-k", "5", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "active units: 0 of 3" in text and "warning: no latent unit is active: the posterior collapsed" in text
    assert collapse_warnings([12, 3]) == []
    [line] = collapse_warnings([15, 0])
    assert "stochastic layer 2 of 2 has no active unit" in line and "--free-bits" in line


def test_eval_bad_input(cli_run, tmp_path, capsys):
    assert main(["eval", str(cli_run), "-k", "5", "--per-example", str(tmp_path / "v.txt")]) == 2
    assert "must end in .csv" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((10, 5)))
    assert main(["eval", str(cli_run), str(tmp_path / "x.npy"), "-k", "5"]) == 2
    assert "the model expects (1, 8, 8)" in capsys.readouterr().err
    assert main(["eval", str(cli_run), "-k", "5", "--memory-budget-mb", "0"]) == 2
    assert "--memory-budget-mb must be a positive number" in capsys.readouterr().err
    result = run_cli("eval", str(cli_run), "-k", "0")
    assert result.returncode == 2 and "expected a number of at least 1" in result.stderr


def test_train_with_the_new_model_options(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "digits", "--out", str(run), "--epochs", "1", "--hidden", "32", "--latent-dim", "6",
                 "--upper-latent-dims", "3", "--upper-hidden", "16", "--prior", "vamp", "--vamp-components", "8",
                 "--objective", "iwae", "--objective-samples", "3", "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["upper_latent_dims"] == [3] and config["model"]["prior"] == "vamp"
    assert config["train"]["adam_beta2"] == 0.99  # the default
    assert config["train"]["objective"] == "iwae" and config["train"]["objective_samples"] == 3
    assert main(["train", "digits", "--out", str(run), "--epochs", "2", "--resume", "--no-progress"]) == 0
    assert main(["train", "digits", "--out", str(run), "--resume", "--prior", "standard-normal"]) == 2
    assert "--prior standard-normal (the run has vamp)" in capsys.readouterr().err
    assert main(["train", "digits", "--out", str(tmp_path / "b2"), "--epochs", "1", "--adam-beta2", "0.999",
                 "--lr-schedule", "constant", "--no-progress"]) == 0
    train_config = json.loads((tmp_path / "b2" / "config.json").read_text())["train"]
    assert train_config["adam_beta2"] == 0.999 and train_config["lr_schedule"] == "constant"
    assert main(["train", "digits", "--out", str(tmp_path / "bg"), "--epochs", "1", "--perturb", "0.2",
                 "--binarize", "dynamic", "--no-progress"]) == 0
    assert json.loads((tmp_path / "bg" / "config.json").read_text())["train"]["perturb_rate"] == 0.2
    capsys.readouterr()
    assert main(["info", str(tmp_path / "bg")]) == 0
    assert "inputs perturbed at rate 0.2" in capsys.readouterr().out
    assert main(["train", "digits", "--out", str(tmp_path / "fb"), "--objective", "iwae", "--free-bits", "1"]) == 2
    assert "free bits apply to the elbo objective" in capsys.readouterr().err
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (4, 1, 8, 8)


@pytest.mark.parametrize("argv,usage,message", [
    (["trian"], "usage: vaekit ", "invalid choice: 'trian'"),
    (["train", "digits", "--out", "{tmp}/r", "--epocs", "3"], "usage: vaekit train", "(did you mean --epochs"),
    (["train", "digits", "--out", "{tmp}/r", "--epoch", "1"], "usage: vaekit train", "unrecognized arguments: --epoch 1"),
    (["score", "{tmp}/r", "digits", "-o", "{tmp}/s.csv", "--explain-to", "x"], "usage: vaekit score", "did you mean --explain"),
])
def test_mistyped_commands_and_options_get_a_suggestion_and_the_commands_usage(argv, usage, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage) and message in err
    if argv[0] == "trian":
        assert "(did you mean train or transfer?)" in err  # close names, the closest first
    assert not (tmp_path / "r").exists()  # an abbreviation is never taken for the option: nothing ran
