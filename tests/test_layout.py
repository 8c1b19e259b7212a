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


# Lightning's private names that the base classes and the CLI once used (issue 11 §5).
LIGHTNING_PRIVATE = (
    "._trainer",
    "._hparams_initial",
    "_get_file_writer",
    "_current_fx_name",
    "self._get(",
    "self._parser(",
    "__signature__",
)


@pytest.mark.parametrize(
    "relative", ["models/base.py", "models/vae.py", "models/sbn.py", "cli.py", "callbacks.py"]
)
def test_no_lightning_private_names(relative: str) -> None:
    text = (ROOT / relative).read_text()
    used = [name for name in LIGHTNING_PRIVATE if name in text]
    assert not used, f"zoo/{relative} uses {used}"
