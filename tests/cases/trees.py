"""Tree rows: tiny dependency and constituency trees (|Z| ≤ 125 per element) for the contract suites.

Support sizes per batch element: projective single-root trees over 3 / 4
words 7 / 30, multi-root 12 / 55; non-projective single-root 9 / 64,
multi-root 16 / 125; binary bracketings of 3 / 4 / 5 words 2 / 5 / 14, times
L^(2n-1) labellings.
"""

import torch

from tests.cases.base import StructureCase, randn
from zoo.structures import DependencyCRF, NonProjectiveDependencyCRF, TreeCRF

CASES = [
    StructureCase(
        "dependency-projective-single-N3",
        lambda d, g: DependencyCRF(randn((2, 3, 3), d, g), multiroot=False),
    ),
    StructureCase(
        "dependency-projective-single-N4",
        lambda d, g: DependencyCRF(randn((2, 4, 4), d, g), multiroot=False),
    ),
    StructureCase(
        "dependency-projective-multi-N3",
        lambda d, g: DependencyCRF(randn((2, 3, 3), d, g), multiroot=True),
    ),
    StructureCase(
        # Lengths 4, 2 and 1: 55, 3 and 1 trees.
        "dependency-projective-multi-N4-lengths",
        lambda d, g: DependencyCRF(
            randn((3, 4, 4), d, g), lengths=torch.tensor([4, 2, 1]), multiroot=True
        ),
        has_lengths=True,
    ),
    StructureCase(
        "dependency-nonprojective-single-N4",
        lambda d, g: NonProjectiveDependencyCRF(randn((2, 4, 4), d, g), multiroot=False),
    ),
    StructureCase(
        "dependency-nonprojective-multi-N3",
        lambda d, g: NonProjectiveDependencyCRF(randn((2, 3, 3), d, g), multiroot=True),
    ),
    StructureCase(
        # Lengths 4, 3 and 1: 64, 9 and 1 trees.
        "dependency-nonprojective-single-N4-lengths",
        lambda d, g: NonProjectiveDependencyCRF(
            randn((3, 4, 4), d, g), lengths=torch.tensor([4, 3, 1]), multiroot=False
        ),
        has_lengths=True,
    ),
    StructureCase("tree-N3-L2", lambda d, g: TreeCRF(randn((2, 3, 3, 2), d, g))),
    StructureCase("tree-N4-L1", lambda d, g: TreeCRF(randn((2, 4, 4, 1), d, g))),
    StructureCase("tree-N5-L1", lambda d, g: TreeCRF(randn((2, 5, 5, 1), d, g))),
    StructureCase(
        # Lengths 3, 2 and 1: 64, 8 and 2 labelled trees.
        "tree-N3-L2-lengths",
        lambda d, g: TreeCRF(randn((3, 3, 3, 2), d, g), lengths=torch.tensor([3, 2, 1])),
        has_lengths=True,
    ),
]
