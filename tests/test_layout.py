"""Dependencies run one way: structures ← estimators ← models; zoo.data imports none of them."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "zoo"
FORBIDDEN = {
    "structures": ("zoo.estimators", "zoo.models", "zoo.data", "zoo.cli", "lightning"),
    "estimators": ("zoo.models", "zoo.data", "zoo.cli", "lightning"),
    "data": ("zoo.structures", "zoo.estimators", "zoo.models"),
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        for name in _imports(path):
            bad = [f for f in FORBIDDEN[package] if name == f or name.startswith(f + ".")]
            assert not bad, f"{path.relative_to(ROOT.parent)} imports {name}"
