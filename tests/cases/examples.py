"""The tutorial's structure (`examples/k_subsets.py`, docs/new-structure.md) as contract rows.

Joining `STRUCTURE_CASES` runs it through every contract suite: enumeration,
sampling frequencies, and every estimator against `Exact`.
"""

import importlib.util
from pathlib import Path

from tests.cases.base import StructureCase, randn

_PATH = Path(__file__).resolve().parents[2] / "examples" / "k_subsets.py"


def load_example():
    """The `examples/k_subsets.py` module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("k_subsets", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KSubsets = load_example().KSubsets

CASES = [
    # C(5, 2) = 10 and C(4, 3) = 4 subsets per element.
    StructureCase("k-subsets-N5-k2", lambda d, g: KSubsets(randn((2, 5), d, g), k=2)),
    StructureCase("k-subsets-N4-k3", lambda d, g: KSubsets(randn((2, 4), d, g), k=3)),
]
