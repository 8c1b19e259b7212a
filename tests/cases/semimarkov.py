"""Semi-Markov rows (torch-struct through `TorchStructAdapter`) for the contract suites.

Support sizes per element: N = 4 positions with segments of 1 or 2 steps and
2 labels per boundary: 32; lengths 4, 2, 1: 32, 4 and a single (zero) z.
"""

import torch

from tests.cases.base import StructureCase, randn
from zoo.structures import SemiMarkovCRF

CASES = [
    StructureCase("semimarkov-N4-K3-C2", lambda d, g: SemiMarkovCRF(randn((2, 3, 3, 2, 2), d, g))),
    StructureCase(
        "semimarkov-N4-K3-C2-lengths",
        lambda d, g: SemiMarkovCRF(randn((3, 3, 3, 2, 2), d, g), lengths=torch.tensor([4, 2, 1])),
        has_lengths=True,
    ),
]
