"""Distributions over discrete structures z, all with one interface (`Structure`)."""

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
