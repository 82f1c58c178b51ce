"""The package layout: every import inside vaekit points down the layers, so there are no import circles.

The imports are read from the source (module level and inside functions alike), not from a running
interpreter, so an import that only happens on some code path counts too.
"""

import ast
from pathlib import Path

import pytest

import vaekit

PACKAGE = Path(vaekit.__file__).parent

# Lowest layer first; a module may import its own layer's modules and any layer below.
LAYERS = [
    {"vaekit._version", "vaekit.errors", "vaekit.fileio", "vaekit.config", "vaekit.names", "vaekit.plots",
     "vaekit.allocator"},
    {"vaekit.data"},
    {"vaekit.models"},
    {"vaekit.evaluation"},
    {"vaekit.training"},
    {"vaekit.api"},
    {"vaekit.anomaly", "vaekit.generation", "vaekit.export"},
    {"vaekit.serve", "vaekit.cli", "vaekit.__main__"},
]
ROOT = "vaekit"  # the package itself: the public API, above everything


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every vaekit module that ``path`` imports, resolved to absolute names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for block in ast.walk(tree)
                   if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
                   for n in ast.walk(block)}  # imports for type hints only never run
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "vaekit")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "vaekit":
                target = node.module
            else:
                continue
            modules = {f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}")}
            found.update(modules)
            if len(modules) < len(node.names):  # names defined in the module itself, not submodules of it
                found.add(target)
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or path.is_dir()


def layer_of(module: str) -> int:
    if module == ROOT:
        return len(LAYERS)
    for i, layer in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in layer):
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py; add it where it belongs")


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer():
    for name in MODULES:
        layer_of(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down_the_layers(name):
    own = layer_of(name)
    upward = sorted(m for m in imported_modules(MODULES[name]) if layer_of(m) > own)
    assert not upward, f"{name} (layer {own}) imports {upward} from a layer above"


def test_there_are_no_import_circles():
    graph = {name: {m for m in imported_modules(path) if m in MODULES and m != name} for name, path in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_import_reader_resolves_relative_and_module_imports(tmp_path, monkeypatch):
    found = imported_modules(PACKAGE / "training" / "trainer.py")
    assert {"vaekit.config", "vaekit.training.checkpoint", "vaekit.models.model"} <= found
    assert layer_of("vaekit.cli.train") > layer_of("vaekit.api") > layer_of("vaekit.training.trainer")


def test_the_likelihood_names_of_the_config_match_the_registry():
    from vaekit.config import LIKELIHOOD_NAMES
    from vaekit.models.likelihoods import LIKELIHOODS

    assert tuple(LIKELIHOODS) == LIKELIHOOD_NAMES
