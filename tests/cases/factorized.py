import torch

from tests.cases.base import StructureCase, randn
from zoo.structures import Bernoulli, Categorical

CASES = [
    StructureCase("categorical", lambda d, g: Categorical(randn((2, 3, 3), d, g))),
    StructureCase(
        "categorical-lengths",
        lambda d, g: Categorical(randn((2, 3, 4), d, g), lengths=torch.tensor([3, 2])),
        has_lengths=True,
    ),
    StructureCase("bernoulli", lambda d, g: Bernoulli(randn((2, 4), d, g))),
    StructureCase(
        "bernoulli-lengths",
        lambda d, g: Bernoulli(randn((3, 4), d, g), lengths=torch.tensor([4, 1, 2])),
        has_lengths=True,
    ),
]
