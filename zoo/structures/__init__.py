"""Distributions over discrete structures z, all with one interface (`Structure`)."""

from zoo.structures.base import Structure, sequence_mask
from zoo.structures.factorized import Bernoulli, Categorical
from zoo.structures.linear_chain import LinearChainCRF
from zoo.structures.noise import gumbel_noise, logistic_noise

__all__ = [
    "Bernoulli",
    "Categorical",
    "LinearChainCRF",
    "Structure",
    "gumbel_noise",
    "logistic_noise",
    "sequence_mask",
]
