"""Linear-chain CRF rows: tiny chains (|Z| ≤ 81 per element) for the contract suites."""

import torch

from tests.cases.base import StructureCase, randn
from zoo.structures import LinearChainCRF

CASES = [
    StructureCase("chain-N4-C2", lambda d, g: LinearChainCRF(randn((2, 3, 2, 2), d, g))),
    StructureCase("chain-N3-C3", lambda d, g: LinearChainCRF(randn((2, 2, 3, 3), d, g))),
    StructureCase(
        # Lengths 4, 2 and 1: 81, 9 and a single (all-zero) z.
        "chain-N4-C3-lengths",
        lambda d, g: LinearChainCRF(randn((3, 3, 3, 3), d, g), lengths=torch.tensor([4, 2, 1])),
        has_lengths=True,
    ),
    StructureCase(
        "chain-N3-C2-lengths",
        lambda d, g: LinearChainCRF(randn((2, 2, 2, 2), d, g), lengths=torch.tensor([3, 2])),
        has_lengths=True,
    ),
]
