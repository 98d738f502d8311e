"""Imports flow one way through the package (docs/architecture.md): no module imports a layer above its own."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import pytest

import latte_ref

PACKAGE = Path(latte_ref.__file__).parent

# Layer of each module, by its name within latte_ref; a module may import its own layer and those below.
LAYERS = {
    "_array": 1,
    "_dispatch": 1,
    "_checks": 1,
    "_layout": 1,
    "segments": 1,
    "state": 2,
    "definition": 3,
    "bidirectional": 3,
    "causal": 3,
    "recurrent": 3,
    "_params": 4,
    "_layer": 4,
    "model": 4,
    "explain": 4,
    "parallel": 5,
    "layers": 5,
    "integrations": 5,
    "backends": 6,
    "testing": 6,
    "commands": 7,
    "cli": 7,
    "__main__": 7,
}


def layer(module: str) -> int:
    """The layer of ``latte_ref.<module>`` (its first component decides)."""
    return LAYERS[module.split(".")[0]]


def imported(path: Path, module: str) -> set[str]:
    """The latte_ref modules that a file imports, anywhere in it (inside functions too), relative to latte_ref."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" if not node.module else target for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(name.removeprefix("latte_ref.") for name in names if name.startswith("latte_ref."))
    return found


def modules() -> list[tuple[Path, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",) or parts[0] == "backends":  # the facade imports every layer by design
            continue
        if parts[-1] == "__init__":  # a subpackage: named as the package, its relative imports start there
            parts = parts[:-1]
        found.append((path, ".".join(("latte_ref", *parts))))
    return found


@pytest.mark.parametrize(("path", "module"), modules(), ids=[module for _, module in modules()])
def test_no_module_imports_a_layer_above_its_own(path: Path, module: str) -> None:
    own = layer(module.removeprefix("latte_ref."))
    upward = sorted(m for m in imported(path, module) if layer(m) > own)
    assert not upward, f"{module} (layer {own}) imports {upward} from above it"


def test_the_package_shows_only_its_api() -> None:
    """dir(latte_ref) is __all__, __version__ and the public submodules; every other public attribute is a submodule."""
    submodules = {"backends", "explain", "layers", "model", "parallel", "segments", "state", "testing"}
    assert set(dir(latte_ref)) == {*latte_ref.__all__, "__version__", *submodules}
    assert not {"sys", "annotations", "TYPE_CHECKING", "importlib"} & set(vars(latte_ref))
    for name in dir(latte_ref):
        assert getattr(latte_ref, name) is not None, name  # each listed name is reachable
    # Submodules imported elsewhere in the run (latte_ref.cli, ...) become attributes too: not stray.
    stray = {
        name
        for name, value in vars(latte_ref).items()
        if name.isidentifier() and not name.startswith("_") and name not in dir(latte_ref)
        if not isinstance(value, types.ModuleType)
    }
    assert not stray, f"public names outside the API: {sorted(stray)}"
    with pytest.raises(AttributeError, match="no attribute 'sys'"):
        latte_ref.sys  # noqa: B018
