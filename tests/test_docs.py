"""The README and the guide cannot rot: their shell and Python blocks run, their links resolve, the site builds.

Convention (also in DEVELOPERS.md): every ```bash and ```python block of README.md and docs/**/*.md runs,
unless the line above it says why not: ``<!-- not-tested: trains for minutes -->``. A block marked
``<!-- continued -->`` runs after the block above it, in the same directory. Each block (or chain) runs in a
fresh temporary directory with ``vaekit`` on PATH (the bin directory of this Python) and with the files
the guide's examples name as "yours":

    runs/digits     the run that docs/getting-started.md trains (FIXTURE_COMMAND; trained once per session)
    my-images/      150 8x8 grayscale PNGs (digits 0-4) in one subfolder per class
    my-array.npy    300 8x8 images as float32 in [0, 1]
    my-table.csv    300 rows of three numeric columns and a 0/1 label column
    my-mixed.csv    300 rows of a mixed table: an integer, a number with empty cells, a text category, yes/no

Bash blocks run with ``bash -euo pipefail``; Python blocks run in this process (no second PyTorch start),
each with fresh globals. Identical blocks (the README repeats some of the guide's) run once. The fixture run
is trained by the installed console script; the blocks' ``vaekit`` commands run in processes forked from a
server that has vaekit imported (``tests/warm_cli.py``), which saves seconds of imports per command.
``VAEKIT_DOCS_REAL_CLI=1`` runs them with the installed console script instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from warm_cli import WarmCli

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FIXTURE_COMMAND = "vaekit train digits --out runs/digits --epochs 10 --hidden 128 --latent-dim 8 --no-progress"
MIN_EXECUTED_BLOCKS = 47  # raise it when blocks are added; a drop means blocks stopped running
BLOCK_TIMEOUT_S = 180

FENCE = re.compile(r"^```([\w+-]*)\s*$")
NOT_TESTED = re.compile(r"^<!--\s*not-tested:\s*(.*?)\s*-->$")
CONTINUED = re.compile(r"^<!--\s*continued\s*-->$")


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    code: str
    skip_reason: str | None = None
    continued: bool = False

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass
class Chain:
    blocks: list[Block] = field(default_factory=list)

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        return tuple((b.lang, b.code.strip()) for b in self.blocks)


def parse_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, lang = i, match.group(1)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{path.relative_to(ROOT)}:{start + 1}: unclosed code block"
        previous = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        skip = NOT_TESTED.match(previous)
        if skip:
            assert skip.group(1), f"{path.relative_to(ROOT)}:{start + 1}: say why the block is not tested"
        blocks.append(Block(path, start + 1, lang, "\n".join(lines[start + 1:end]) + "\n",
                            skip.group(1) if skip else None, bool(CONTINUED.match(previous))))
        i = end + 1
    return blocks


ALL_BLOCKS = [b for path in DOC_FILES for b in parse_blocks(path)]
RUNNABLE = [b for b in ALL_BLOCKS if b.lang in ("bash", "python")]


def chains() -> list[Chain]:
    """The blocks to run: ``continued`` blocks join the chain before them; identical chains run once."""
    result: list[Chain] = []
    for block in RUNNABLE:
        if block.skip_reason is not None:
            continue
        if block.continued:
            assert result and result[-1].blocks[-1].path == block.path, f"{block.where}: nothing to continue"
            result[-1].blocks.append(block)
        else:
            result.append(Chain([block]))
    unique: dict[tuple, Chain] = {}
    for chain in result:
        unique.setdefault(chain.key, chain)
    return list(unique.values())


CHAINS = chains()


# --- the files a block finds in its directory ---------------------------------------------------------------

def creates_fixture_run(code: str) -> bool:
    return any(re.search(r"--out runs/digits(\s|$)", line) and "--resume" not in line for line in code.splitlines()) \
        or 'run_dir="runs/digits"' in code


def write_user_files(directory: Path) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255).round().astype(np.uint8)
    for label in range(5):
        folder = directory / "my-images" / f"digit{label}"
        folder.mkdir(parents=True)
        for i in np.flatnonzero(digits.target == label)[:30]:
            Image.fromarray(images[i]).save(folder / f"{i:04d}.png")
    np.save(directory / "my-array.npy", (digits.images[:300] / 16.0).astype(np.float32))
    rng = np.random.default_rng(0)
    height = rng.normal(170, 10, 300)
    weight = 0.9 * (height - 100) + rng.normal(0, 5, 300)
    income = rng.lognormal(3, 0.5, 300)
    rows = ["height,weight,income,label"] + [f"{h:.1f},{w:.1f},{m:.2f},{int(h > 180)}"
                                             for h, w, m in zip(height, weight, income)]
    (directory / "my-table.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    cities = rng.choice(["rome", "paris", "oslo"], 300)
    age = rng.integers(18, 80, 300)
    pay = 20000 + 600 * age + np.where(cities == "oslo", 9000, 0) + rng.normal(0, 4000, 300)
    mixed = ["age,income,city,member"] + [
        f"{a},{'' if rng.random() < 0.1 else f'{p:.2f}'},{c},{'yes' if rng.random() < 0.4 else 'no'}"
        for a, p, c in zip(age, pay, cities)]
    (directory / "my-mixed.csv").write_text("\n".join(mixed) + "\n", encoding="utf-8")


def block_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("MPLBACKEND", "Agg")
    # One thread per block: the tests share their cores, and an OpenMP team of 2 on a busy machine spin-waits
    # (a digits scoring run took 49 s with 2 threads and 4 s with 1 while other jobs ran).
    env.setdefault("OMP_NUM_THREADS", "1")
    if "PYTHONPATH" not in env and (ROOT / "src" / "vaekit").is_dir():
        env["PYTHONPATH"] = str(ROOT / "src")
    return env


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory):
    """The environment of the bash blocks: the warm ``vaekit`` first on PATH (unless VAEKIT_DOCS_REAL_CLI=1)."""
    env = block_env()
    warm = None
    if os.environ.get("VAEKIT_DOCS_REAL_CLI") != "1":
        warm = WarmCli.start(tmp_path_factory.mktemp("warm-cli"), env)
    if warm is not None:
        env = {**env, "PATH": str(warm.bin) + os.pathsep + env["PATH"]}
    yield env
    if warm is not None:
        warm.stop()


@pytest.fixture(scope="session")
def user_files(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("user-files")
    write_user_files(directory)
    return directory


@pytest.fixture(scope="session")
def fixture_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """runs/digits, trained once with the guide's own command (which is therefore one of the tested blocks)."""
    assert any(b.code.strip() == FIXTURE_COMMAND for b in RUNNABLE if b.skip_reason is None), \
        f"no tested block of the guide is exactly {FIXTURE_COMMAND!r}; update FIXTURE_COMMAND"
    directory = tmp_path_factory.mktemp("fixture")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", FIXTURE_COMMAND], cwd=directory, env=block_env(),
                            capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    return directory / "runs" / "digits", result


def prepare_directory(directory: Path, chain: Chain, user_files: Path, fixture_run) -> None:
    for item in user_files.iterdir():
        target = directory / item.name
        shutil.copytree(item, target) if item.is_dir() else shutil.copy(item, target)
    run, result = fixture_run
    if not any(creates_fixture_run(b.code) for b in chain.blocks):
        assert result.returncode == 0, f"training runs/digits failed:\n{result.stdout}\n{result.stderr}"
        shutil.copytree(run, directory / "runs" / "digits")


def run_block(block: Block, directory: Path, monkeypatch, env: dict[str, str]) -> None:
    if block.lang == "bash":
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=directory, env=env,
                                capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
        assert result.returncode == 0, (f"{block.where}: exit code {result.returncode}\n--- stdout\n{result.stdout}"
                                        f"\n--- stderr\n{result.stderr}")
        return
    monkeypatch.chdir(directory)
    monkeypatch.setenv("PATH", block_env()["PATH"])
    output = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 for the bash blocks (see block_env)
    try:
        with contextlib.redirect_stdout(output):
            exec(compile(block.code, block.where, "exec"), {"__name__": "__docs__"})
    except BaseException as err:  # noqa: BLE001 - report which block failed, with what it printed
        raise AssertionError(f"{block.where}: {type(err).__name__}: {err}\n--- stdout\n{output.getvalue()}") from err
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("chain", CHAINS, ids=[c.blocks[0].where for c in CHAINS])
def test_block_runs(chain: Chain, tmp_path, user_files, fixture_run, cli_env, monkeypatch):
    if chain.key == ((("bash", FIXTURE_COMMAND),)):
        run, result = fixture_run
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        assert (run / "model.safetensors").is_file() and (run / "typicality.json").is_file()
        return
    prepare_directory(tmp_path, chain, user_files, fixture_run)
    for block in chain.blocks:
        run_block(block, tmp_path, monkeypatch, cli_env)


def test_enough_blocks_run():
    """Blocks marked not-tested or of another language do not count: dropping tested blocks is noticed."""
    executed = sum(len(c.blocks) for c in CHAINS)
    skipped = [b.where for b in RUNNABLE if b.skip_reason is not None]
    assert executed >= MIN_EXECUTED_BLOCKS, f"only {executed} blocks run (not tested: {skipped})"


def test_every_block_has_a_known_language():
    unknown = [f"{b.where} ({b.lang or 'no language'})" for b in ALL_BLOCKS if b.lang not in ("bash", "python", "text")]
    assert unknown == [], "mark code blocks as bash, python or text: " + ", ".join(unknown)


# --- links, the generated CLI reference, the site -----------------------------------------------------------

REPO_PATH = re.compile(r"`((?:benchmarks|examples|tests|docs|src)/[\w./*-]+)`")
LINK = re.compile(r"\]\(([^)\s#]+)(#[^)\s]*)?\)")


def test_repository_paths_named_in_the_docs_exist():
    missing = []
    for path in DOC_FILES:
        for name in REPO_PATH.findall(path.read_text(encoding="utf-8")):
            if not list(ROOT.glob(name.rstrip("/"))):
                missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert missing == [], missing


def test_relative_links_of_the_readme_resolve():
    """mkdocs --strict checks the guide's links; the README lies outside it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    broken = [target for target, _ in LINK.findall(text)
              if "://" not in target and not (ROOT / target).exists()]
    assert broken == [], broken


def test_cli_reference_is_up_to_date():
    spec = importlib.util.spec_from_file_location("gen_cli_reference", ROOT / "docs" / "gen_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.PAGE.read_text(encoding="utf-8") == module.generate(), \
        "docs/reference/cli.md is out of date: run python docs/gen_cli_reference.py"


def test_the_site_builds_in_strict_mode(tmp_path):
    missing = [name for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
               if importlib.util.find_spec(name.split(".")[0]) is None
               or (name == "mkdocstrings_handlers.python" and importlib.util.find_spec(name) is None)]
    if missing:
        message = f"the docs tools are not installed ({', '.join(missing)}): pip install -e '.[docs]'"
        if os.environ.get("VAEKIT_REQUIRE_DOCS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    started = time.perf_counter()
    env = {**block_env(), "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "reference" / "api" / "index.html").is_file()
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("vaekit.VAE", "vaekit.load_dataset", "vaekit.anomaly.AnomalyDetector", "vaekit.evaluation"):
        assert name in api, f"the API reference lacks {name}"
    assert time.perf_counter() - started < 300
