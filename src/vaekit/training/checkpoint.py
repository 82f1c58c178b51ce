"""The run directory: configuration, weights and training state, written atomically, loaded without running code.

Layout of a run directory::

    config.json                  RunConfig (format_version, model, data, train), validated on load
    model.safetensors            the weights the tools use (final, or best on validation with early stopping)
    checkpoint.json              names the newest *complete* training checkpoint
    checkpoints/step-XXXXXXXXX/  model.safetensors, optimizer.safetensors, state.safetensors, state.json
    metrics.jsonl                one JSON object per epoch
    loss_curve.png

Every file is written to a temporary name and renamed into place, and ``checkpoint.json`` is
replaced only after the checkpoint it names is complete on disk, so a run killed at any moment
leaves either the previous checkpoint or the new one, never a half-written one. Weights and
tensors are safetensors files and the rest is JSON: loading a run never unpickles anything.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..config import FORMAT_VERSION, RunConfig
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write_bytes, atomic_write_json, fsync_dir, read_json
from ..models.model import VAEModel

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
POINTER_FILE = "checkpoint.json"
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


# --- tensors ----------------------------------------------------------------------------------

def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write tensors atomically as safetensors (copies made contiguous and unshared)."""
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    atomic_write_bytes(path, st_save(plain, metadata={"format_version": str(FORMAT_VERSION), "library": "vaekit"}))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; anything else (a pickle, a truncated file) is refused, never executed."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as err:
        raise CheckpointError(f"{path} is not a valid safetensors file ({err}); it may be corrupt, truncated "
                              "or not written by vaekit, and it was not loaded") from None


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse weights with missing or extra tensors or tensors of the wrong shape, naming them."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = [f"{k} (expected {tuple(expected[k].shape)}, found {tuple(found[k].shape)})"
             for k in sorted(set(expected) & set(found)) if expected[k].shape != found[k].shape]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected tensors: {', '.join(extra)}")
    if wrong:
        problems.append(f"tensors of the wrong shape: {', '.join(wrong)}")
    if problems:
        raise CheckpointError(f"{source} does not match the model in its config.json: {'; '.join(problems)}")


# --- config and model -------------------------------------------------------------------------

def save_config(run_dir: str | Path, config: RunConfig) -> None:
    atomic_write_json(Path(run_dir) / CONFIG_FILE, config.to_dict())


def load_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.exists():
        raise CheckpointError(f"{run_dir} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a vaekit run directory (it has no {CONFIG_FILE})")
    raw = read_json(path)
    try:
        return RunConfig.from_dict(raw)
    except ConfigError as err:
        raise CheckpointError(f"{path} is not a valid vaekit configuration: {err}") from None


def save_model(run_dir: str | Path, model: VAEModel, config: RunConfig | None = None) -> None:
    """Write the inference weights (and the config, if given) into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        save_config(run_dir, config)
    save_tensors(run_dir / MODEL_FILE, model.state_dict())


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[VAEModel, RunConfig]:
    """Rebuild the model of a run directory from its config.json and model.safetensors."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    weights = run_dir / MODEL_FILE
    if not weights.is_file():
        raise CheckpointError(f"{run_dir} has no {MODEL_FILE} yet: training has not finished its first epoch")
    tensors = load_tensors(weights)  # as large as the file, whatever config.json says
    # The config's shapes are checked against the file's on a model without storage (the meta device) before
    # the real one is built, so an edited or corrupt config.json naming huge layers is refused before it
    # allocates (and initializes) gigabytes.
    try:
        with torch.device("meta"):
            skeleton = VAEModel(config.model)
    except (TypeError, ValueError, OverflowError, RuntimeError, NotImplementedError):
        skeleton = None  # a model that cannot be laid out without storage: the real build below decides
    if skeleton is not None:
        check_state_dict(skeleton.state_dict(), tensors, weights)
    try:
        model = VAEModel(config.model)
    except (TypeError, ValueError, OverflowError, RuntimeError) as err:  # sizes torch cannot take (beyond int64, memory)
        raise CheckpointError(f"{run_dir / CONFIG_FILE} describes a model that cannot be built "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    check_state_dict(model.state_dict(), tensors, weights)
    model.load_state_dict(tensors)
    return model.to(device).eval(), config


def load_weights_into(model: torch.nn.Module, path: Path) -> None:
    tensors = load_tensors(path)
    check_state_dict(model.state_dict(), tensors, path)
    model.load_state_dict(tensors)


# --- training checkpoints ---------------------------------------------------------------------

def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    tensors: dict[str, torch.Tensor], state: dict[str, Any], keep: int = 1) -> Path:
    """Write a complete training checkpoint, then point ``checkpoint.json`` at it, then prune old ones.

    ``tensors`` holds extra tensors to keep (random generator states, running sums); ``state`` is
    JSON-serialisable bookkeeping (epoch, step, history, ...). It must contain ``global_step``.
    """
    run_dir = Path(run_dir)
    name = f"step-{int(state['global_step']):09d}"
    try:
        current = (read_pointer(run_dir) or {}).get("latest")
    except CheckpointError:
        current = None
    # A directory of this name is either left over from a write cut short (removed) or the complete
    # checkpoint checkpoint.json names (kept until the new one is complete: the new one gets another name).
    suffix = 0
    while (run_dir / CHECKPOINTS_DIR / name).exists() and current == f"{CHECKPOINTS_DIR}/{name}":
        suffix += 1
        name = f"step-{int(state['global_step']):09d}-{suffix}"
    directory = run_dir / CHECKPOINTS_DIR / name
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    fsync_dir(directory.parent)
    opt_tensors, opt_meta = _optimizer_to_files(optimizer)
    save_tensors(directory / "model.safetensors", model.state_dict())
    save_tensors(directory / "optimizer.safetensors", opt_tensors)
    save_tensors(directory / "state.safetensors", tensors)
    atomic_write_json(directory / "state.json", {"format_version": FORMAT_VERSION, "optimizer": opt_meta, **state})
    atomic_write_json(run_dir / POINTER_FILE, {"format_version": FORMAT_VERSION, "latest": f"{CHECKPOINTS_DIR}/{name}",
                                                "global_step": state["global_step"], "epoch": state.get("epoch")})
    # Keep the new checkpoint and the keep - 1 before it; anything named after it is left over from a
    # stretch of training that a crash cut short and that was then done again.
    older = sorted(p for p in (run_dir / CHECKPOINTS_DIR).iterdir() if p.is_dir() and p.name < name)
    stale = [p for p in (run_dir / CHECKPOINTS_DIR).iterdir() if p.is_dir() and p.name > name]
    for old in (older[:len(older) - (keep - 1)] if keep > 1 else older) + stale:
        shutil.rmtree(old, ignore_errors=True)
    return directory


def remove_stale_temp_files(run_dir: str | Path) -> int:
    """Delete temporary files that writes cut short by a crash left behind (``.NAME.*.tmp``); returns how many."""
    removed = 0
    for path in Path(run_dir).rglob(".*.tmp"):
        if path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


def read_pointer(run_dir: str | Path) -> dict[str, Any] | None:
    """The contents of ``checkpoint.json`` (which checkpoint is complete), or ``None`` when there is none."""
    pointer = Path(run_dir) / POINTER_FILE
    if not pointer.is_file():
        return None
    try:
        info = json.loads(pointer.read_text(encoding="utf-8"))
        version = info["format_version"]
        if not isinstance(info["latest"], str):
            raise TypeError("'latest' is not a string")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{pointer} is damaged ({err}); delete it to restart the run from the beginning") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{pointer} is in format version {version}; this vaekit reads version {FORMAT_VERSION}")
    return info


def load_checkpoint(run_dir: str | Path) -> dict[str, Any] | None:
    """The newest complete checkpoint of a run, or ``None`` when the run has none yet.

    Returns a dict with ``model`` (state dict), ``optimizer`` (state dict), ``tensors`` and ``state``.
    """
    run_dir = Path(run_dir)
    info = read_pointer(run_dir)
    if info is None:
        return None
    pointer, latest = run_dir / POINTER_FILE, info["latest"]
    directory = (run_dir / latest).resolve()
    if run_dir.resolve() not in directory.parents:
        raise CheckpointError(f"{pointer} points outside its run directory ({latest}); refusing it")
    try:
        state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {directory} is incomplete or damaged: {err}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{directory / 'state.json'} is not a JSON object; the checkpoint is damaged")
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {directory} is in format version {version!r}; this vaekit reads version "
                              f"{FORMAT_VERSION} (train into a new --out, or use the vaekit that wrote it)")
    missing = [key for key in ("optimizer", "global_step", "epoch", "step_in_epoch") if key not in state]
    if missing:
        raise CheckpointError(f"{directory / 'state.json'} lacks {', '.join(missing)}; the checkpoint is damaged")
    opt_meta = state.pop("optimizer")
    try:
        optimizer = _optimizer_from_files(load_tensors(directory / "optimizer.safetensors"), opt_meta)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"the optimizer state in {directory} is damaged ({type(err).__name__}: {err})") from None
    return {
        "model": load_tensors(directory / "model.safetensors"),
        "optimizer": optimizer,
        "tensors": load_tensors(directory / "state.safetensors"),
        "state": state,
    }


# --- metrics log ------------------------------------------------------------------------------

def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch metrics of a run; a line cut short by a crash is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def write_metrics(run_dir: str | Path, records: list[dict[str, Any]]) -> None:
    from ..fileio import atomic_write_text

    atomic_write_text(Path(run_dir) / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in records))


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Add one epoch's record; the file is rewritten atomically, so it is never left half-written."""
    write_metrics(run_dir, read_metrics(run_dir) + [record])


def entries_of(run_dir: Path) -> set[str] | None:
    """The names in ``run_dir`` before a training call writes into it (``None`` when it does not exist yet)."""
    return {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else None


def remove_unstarted_run(out: Path, entries_before: set[str] | None) -> bool:
    """After training failed before its first checkpoint, remove what this training call wrote into ``out`` (and
    ``out`` itself when it made it), so that no directory is left that looks like a run; entries that were there
    before (``entries_of`` it then) are never touched. Returns whether it removed anything (False once a checkpoint
    or the model exists)."""
    if not out.is_dir() or (out / POINTER_FILE).exists() or (out / MODEL_FILE).exists():
        return False
    with contextlib.suppress(OSError):  # never hide the error that stopped training
        for entry in out.iterdir():
            if entries_before is None or entry.name not in entries_before:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        if entries_before is None:
            out.rmdir()
    return True
