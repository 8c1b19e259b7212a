from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from zoo.structures import Structure


@dataclass(frozen=True)
class StructureCase:
    """A tiny structure for the contract suites.

    Attributes:
        name: test id.
        make: ``make(dtype, generator) -> Structure`` with random log-potentials
            (batch of a few elements, lengths where the structure has them).
        has_lengths: whether ``make`` uses lengths (padding checks run then).
    """

    name: str
    make: Callable[[torch.dtype, torch.Generator], Structure]
    has_lengths: bool = False

    def build(self, dtype: torch.dtype = torch.float64, seed: int = 0) -> Structure:
        return self.make(dtype, torch.Generator().manual_seed(seed))

    def __str__(self) -> str:
        return self.name


def randn(shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
