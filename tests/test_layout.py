"""The package's layout: which part may import which, and where each kind of class lives.

The arrows follow the design: structures ← estimators ← models ← callbacks ←
cli ← lab. ``zoo.data`` and ``zoo.metrics`` stand beside them and import
none of them (the data may score with a metric); ``zoo.config`` and the
ListOps vocabulary are leaves that any part above may use. Every import
statement counts, those inside functions and ``TYPE_CHECKING`` blocks
included: a deferred import is still an arrow.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import lightning as L
import pytest

import zoo
from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "zoo"

MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "config": (),
    "listops_vocabulary": (),
    "structures": (),
    "metrics": (),
    "data": ("metrics", "listops_vocabulary"),
    "estimators": ("structures", "config"),
    "testing": ("estimators",),
    "models": ("estimators", "metrics", "listops_vocabulary"),
    "callbacks": ("models", "data"),
    "cli": ("callbacks",),
    "lab": ("cli",),
    "zoo": ("models",),  # the package itself: the three words, imported when first used
}
"""Each part of the zoo and the parts below it that it may import (and, through
them, everything below those)."""

WITHOUT_LIGHTNING = (
    "config",
    "listops_vocabulary",
    "structures",
    "metrics",
    "estimators",
    "testing",
)
"""The floors that run on plain PyTorch: a structure or an estimator works outside Lightning."""


@cache
def below(part: str) -> frozenset[str]:
    """Every part ``part`` may import: the table's entries and, recursively, theirs."""
    parts = set(MAY_IMPORT[part])
    for lower in MAY_IMPORT[part]:
        parts |= below(lower)
    return frozenset(parts)


def module_name(path: Path) -> str:
    """``zoo/models/vae.py`` → ``zoo.models.vae``; ``zoo/lab/__init__.py`` → ``zoo.lab``."""
    name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def part_of(module: str) -> str:
    """The part a module belongs to: ``zoo.models.vae`` → ``models``, ``zoo`` → ``zoo``."""
    return module.split(".")[1] if "." in module else module


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import statement in a module's source, absolute names."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"line {node.lineno}: a relative import; write it absolute"
            found.append((node.lineno, node.module))
    return found


def wrong_arrows(source: str, shown: str, module: str) -> list[str]:
    """The imports of ``module`` (its ``source``, its file ``shown``) that the table refuses."""
    part = part_of(module)
    allowed = below(part) | {part}
    wrong = [
        f"{shown}:{line} imports {name} ({part} → {part_of(name)})"
        for line, name in imported_modules(source)
        if name.split(".")[0] == "zoo" and part_of(name) not in allowed
    ]
    if part in WITHOUT_LIGHTNING:
        wrong += [
            f"{shown}:{line} imports {name} ({part} runs without Lightning)"
            for line, name in imported_modules(source)
            if name.split(".")[0] in ("lightning", "pytorch_lightning")
        ]
    return wrong


FILES = sorted(PACKAGE.rglob("*.py"))
IDS = [str(path.relative_to(REPO_ROOT)) for path in FILES]


def test_the_table_has_no_cycle_and_places_every_module() -> None:
    for part in MAY_IMPORT:
        assert part not in below(part), f"the table lets {part} import itself through {below(part)}"
    unplaced = [module_name(p) for p in FILES if part_of(module_name(p)) not in MAY_IMPORT]
    assert not unplaced, (
        f"modules in no part of the table: {unplaced}; add their part to MAY_IMPORT"
    )


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_every_import_follows_an_allowed_arrow(path: Path) -> None:
    module = module_name(path)
    wrong = wrong_arrows(path.read_text(), str(path.relative_to(REPO_ROOT)), module)
    part = part_of(module)
    assert not wrong, "\n".join(wrong) + f"\n{part} may import {sorted(below(part))} only"


def test_a_wrong_arrow_is_named_with_its_file_and_line() -> None:
    source = "from zoo.structures import Structure\n\n\ndef f():\n    from zoo.data.ud import X\n"
    assert wrong_arrows(source, "zoo/models/new.py", "zoo.models.new") == [
        "zoo/models/new.py:5 imports zoo.data.ud (models → data)"
    ]
    assert wrong_arrows(
        "import lightning as L\n", "zoo/estimators/new.py", "zoo.estimators.new"
    ) == ["zoo/estimators/new.py:1 imports lightning (estimators runs without Lightning)"]
    assert wrong_arrows("import zoo.config\n", "zoo/structures/new.py", "zoo.structures.new") == [
        "zoo/structures/new.py:1 imports zoo.config (structures → config)"
    ]


def test_no_two_modules_import_each_other_even_through_others() -> None:
    # The table orders the parts; this catches a circle inside one part too.
    modules = {module_name(path): path for path in FILES}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        graph[module] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            graph[module] |= {name for name in names if name in modules and name != module}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph[module]):
            assert target not in path, "import circle: " + " → ".join([*path, target])
            if target not in done:
                visit(target, [*path, target])
        done.add(module)

    for module in sorted(graph):
        visit(module, [module])


def test_zoo_shows_the_three_words_and_loads_nothing_until_asked() -> None:
    from zoo.estimators import Estimator
    from zoo.models import LatentVariableModel
    from zoo.structures import Structure

    assert (zoo.Structure, zoo.Estimator, zoo.LatentVariableModel) == (
        Structure,
        Estimator,
        LatentVariableModel,
    )
    assert sorted(zoo.__all__) == ["Estimator", "LatentVariableModel", "Structure"]
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = zoo.Nope
    code = (
        "import sys, zoo; print(sorted(m for m in sys.modules if m.startswith(('zoo.', 'torch'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert out.stdout.strip() == "[]"


def _zoo_classes() -> list[type]:
    """Every class defined in a module of the zoo (all of them imported)."""
    classes = []
    for info in pkgutil.walk_packages(zoo.__path__, "zoo."):
        module = importlib.import_module(info.name)
        classes += [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj) and obj.__module__ == module.__name__
        ]
    return classes


def test_estimators_live_in_zoo_estimators_and_callbacks_in_callbacks_or_the_lab() -> None:
    from zoo.estimators import Estimator

    misplaced = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in _zoo_classes()
        if (issubclass(cls, Estimator) and not cls.__module__.startswith("zoo.estimators"))
        or (
            issubclass(cls, L.Callback)
            # zoo.cli: its own plumbing (DataSettings), which no config names.
            and not cls.__module__.startswith(("zoo.callbacks", "zoo.lab", "zoo.cli"))
        )
    ]
    assert not misplaced, (
        f"estimators belong in zoo/estimators, callbacks in zoo/callbacks: {misplaced}"
    )
    import zoo.models

    exported = [getattr(zoo.models, name) for name in zoo.models.__all__]
    assert not [
        c for c in exported if inspect.isclass(c) and issubclass(c, (Estimator, L.Callback))
    ]


# Lightning's private names that the base classes and the CLI once used.
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
    text = (PACKAGE / relative).read_text()
    used = [name for name in LIGHTNING_PRIVATE if name in text]
    assert not used, f"zoo/{relative} uses {used}"
