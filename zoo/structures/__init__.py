"""Distributions over discrete structures z, all with one interface (`Structure`).

Modules: `base` (the `Structure` contract), `chart` (the public semiring/chart
core: write one inside pass, get log Z, argmax and exact samples), `factorized`
(`Categorical`, `Bernoulli`), `linear_chain`, `dependency` (the shared arc
layout) with `projective` (Eisner), `nonprojective` (matrix-tree) and
`arborescence` (Chu–Liu/Edmonds), `tree` (CKY), `torch_struct` (torch-struct
distributions as structures: `SemiMarkovCRF`), `noise`. Writing a new
structure: docs/new-structure.md.
"""

from zoo.structures.base import Structure, sequence_mask
from zoo.structures.chart import ChartStructure
from zoo.structures.factorized import Bernoulli, Categorical
from zoo.structures.linear_chain import LinearChainCRF
from zoo.structures.noise import gumbel_noise, logistic_noise
from zoo.structures.nonprojective import NonProjectiveDependencyCRF
from zoo.structures.projective import DependencyCRF
from zoo.structures.torch_struct import SemiMarkovCRF, TorchStructAdapter
from zoo.structures.tree import TreeCRF

__all__ = [
    "Bernoulli",
    "Categorical",
    "ChartStructure",
    "DependencyCRF",
    "LinearChainCRF",
    "NonProjectiveDependencyCRF",
    "SemiMarkovCRF",
    "Structure",
    "TorchStructAdapter",
    "TreeCRF",
    "gumbel_noise",
    "logistic_noise",
    "sequence_mask",
]
