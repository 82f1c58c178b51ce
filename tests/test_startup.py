"""The command line starts fast: ``vaekit --help``, ``--version`` and argument errors never import PyTorch.

Each check runs in a fresh interpreter (this one has torch imported already) and asks it which modules it loaded,
which does not depend on the machine's speed; one generous timing test catches a regression that slips past them.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

HEAVY = ("torch", "numpy", "pandas", "scipy", "sklearn", "matplotlib", "PIL", "safetensors", "tqdm")
"""Packages the command line must not import before a command runs."""

REPORT = f"""
import json, sys
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))))
"""


def fresh_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter and return its result; the heavy packages it imported are its last line."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-c", code + REPORT], capture_output=True, text=True, env=env, timeout=120)


def heavy_imports(result: subprocess.CompletedProcess) -> list[str]:
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_the_cli_and_building_every_parser_imports_no_torch():
    result = fresh_python("import vaekit.cli\nvaekit.cli.build_parser()\n")
    assert result.returncode == 0, result.stderr
    assert heavy_imports(result) == []


@pytest.mark.parametrize("argv, code", [
    (["--version"], 0),
    (["--help"], 0),
    (["train", "--help"], 0),
    (["eval", "--help"], 0),
    (["trian"], 2),  # an unknown command, with a suggestion
    (["train", "digits", "--out", "r", "--epoch", "3"], 2),  # an unknown option
    (["train", "digits", "--out", "r", "--arch", "transformer"], 2),  # a value not among the choices
    (["sample", "run", "-o", "x.png", "-n", "0"], 2),  # a value its type refuses
    (["eval"], 2),  # a missing argument
])
def test_help_version_and_argument_errors_import_no_torch(argv, code):
    result = fresh_python(f"""
import contextlib, io
from vaekit.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        main({argv!r})
        raise AssertionError("main returned instead of exiting")
    except SystemExit as exit:
        assert exit.code == {code!r}, exit.code
""")
    assert result.returncode == 0, result.stderr
    assert heavy_imports(result) == []


def test_every_command_help_imports_no_torch():
    result = fresh_python("""
import argparse, contextlib, io
import vaekit.cli
parser = vaekit.cli.build_parser()
commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
for name in commands:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            vaekit.cli.main([name, "--help"])
        except SystemExit as exit:
            assert exit.code == 0, (name, exit.code)
""")
    assert result.returncode == 0, result.stderr
    assert heavy_imports(result) == []


def test_import_vaekit_is_light_and_its_api_resolves_on_first_use():
    result = fresh_python("""
import sys
import vaekit
light = "torch" not in sys.modules
listed = dir(vaekit)
assert light, "import vaekit imported torch"
assert {"VAE", "load", "Dataset", "load_dataset", "evaluate", "latent"} <= set(listed), listed
assert set(vaekit.__all__) <= set(listed)
from vaekit import VaekitError, DataError, __version__
import vaekit.api, vaekit.data
assert vaekit.VAE is vaekit.api.VAE and vaekit.load is vaekit.api.load
assert vaekit.Dataset is vaekit.data.Dataset and vaekit.load_dataset is vaekit.data.load_dataset
assert issubclass(DataError, VaekitError)
try:
    vaekit.no_such_name
    raise AssertionError("no AttributeError")
except AttributeError:
    pass
""")
    assert result.returncode == 0, result.stderr
    assert "torch" in heavy_imports(result)  # vaekit.VAE imported it, on first use


def test_star_import_gives_the_public_api():
    namespace: dict = {}
    exec("from vaekit import *", namespace)  # noqa: S102
    import vaekit

    assert {"VAE", "load", "Dataset", "load_dataset", "VaekitError", "__version__"} <= set(namespace)
    assert namespace["VAE"] is vaekit.VAE


def test_the_light_names_are_those_of_the_library():
    """vaekit.names holds the parsers' choices; the heavy modules use the same objects, not copies."""
    from vaekit import anomaly, names
    from vaekit.config import LIKELIHOOD_NAMES
    from vaekit.data import streaming
    from vaekit.evaluation import likelihood, sample_quality
    from vaekit.export import FORMATS
    from vaekit.generation import latent, samplers
    from vaekit.models.likelihoods import LIKELIHOODS
    from vaekit.serve import security

    assert tuple(samplers.SAMPLERS) == names.SAMPLER_NAMES
    assert set(names.FITTED_KINDS) <= set(names.SAMPLER_NAMES)
    assert samplers.FITTED_KINDS is names.FITTED_KINDS and samplers.SOURCES is names.SAMPLER_SOURCES
    assert samplers.DEFAULT_MAX_COMPONENTS == names.SAMPLER_MAX_COMPONENTS
    assert anomaly.SCORE_NAMES is names.SCORE_NAMES and anomaly.SCORE_DESCRIPTIONS is names.SCORE_DESCRIPTIONS
    assert anomaly.DEFAULT_SCORE in names.SCORE_NAMES
    assert latent.EMBEDDINGS is names.EMBEDDINGS and latent.RANKINGS is names.RANKINGS
    assert likelihood.DEFAULT_MEMORY_BUDGET_MB == names.LIKELIHOOD_MEMORY_BUDGET_MB
    assert sample_quality.DEFAULT_K == names.QUALITY_NEIGHBOURS
    assert FORMATS is names.EXPORT_FORMATS and security.TOKEN_ENV == names.TOKEN_ENV
    assert streaming.IN_MEMORY_CHOICES is names.IN_MEMORY_CHOICES
    assert tuple(LIKELIHOODS) == LIKELIHOOD_NAMES


def test_every_command_defaults_to_the_same_device():
    """--device means the same everywhere: auto, a GPU when there is one (train resolves its None to auto)."""
    import argparse

    from vaekit.cli import build_parser
    from vaekit.cli.common import DEVICE_HELP
    from vaekit.cli.train import DEFAULTS

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    with_device = {}
    for name, command in commands.items():
        for action in command._actions:
            if "--device" in action.option_strings:
                default = DEFAULTS["device"] if name == "train" else action.default
                with_device[name] = default
                assert DEVICE_HELP in action.help, (name, action.help)
    assert {"train", "eval", "sample", "reconstruct", "encode", "fit-sampler", "score"} <= set(with_device)
    assert set(with_device.values()) == {"auto"}, with_device


def _vaekit_command() -> list[str]:
    script = Path(sys.executable).with_name("vaekit")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "vaekit"]


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["trian"]])
def test_the_command_line_answers_at_once(argv):
    """Generous (the target is well under 0.5 s on two cores): it fails when startup imports PyTorch again."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        result = subprocess.run([*_vaekit_command(), *argv], capture_output=True, text=True, timeout=60)
        times.append(time.perf_counter() - started)
        assert result.returncode == (2 if argv == ["trian"] else 0), result.stderr
    assert statistics.median(times) < 1.5, times
