"""The tables the contract suites run over: one row per structure case.

A row is a `StructureCase`: a name and a function building a tiny structure
(enumerable: at most a few hundred z per batch element) in a given dtype.
Adding a structure to every contract suite (enumeration, sampling,
gradcheck, every estimator, REINFORCE unbiasedness) is one row in one of the
modules below.
"""

from tests.cases.base import StructureCase
from tests.cases.chain import CASES as CHAIN_CASES
from tests.cases.examples import CASES as EXAMPLE_CASES
from tests.cases.factorized import CASES as FACTORIZED_CASES
from tests.cases.semimarkov import CASES as SEMIMARKOV_CASES
from tests.cases.trees import CASES as TREE_CASES

STRUCTURE_CASES: list[StructureCase] = [
    *FACTORIZED_CASES,
    *CHAIN_CASES,
    *TREE_CASES,
    *SEMIMARKOV_CASES,
    *EXAMPLE_CASES,
]

__all__ = ["STRUCTURE_CASES", "StructureCase"]
