"""LightningDataModules: MNIST (binarized; semi-supervised with a few labels), tagged
sentences (Universal Dependencies, a synthetic HMM), ListOps, synthetic binary vectors.

``zoo.data`` stands beside ``zoo.structures``/``zoo.estimators``/``zoo.models``
and imports none of them.
"""

from zoo.data.base import DataError, DataNotFoundError, resolve_data_dir
from zoo.data.hmm import SyntheticHMMDataModule
from zoo.data.listops import ListOpsDataModule
from zoo.data.mnist import MNISTDataModule
from zoo.data.semi_supervised import SemiSupervisedMNISTDataModule
from zoo.data.synthetic import SyntheticBinaryDataModule
from zoo.data.ud import UDTaggingDataModule

__all__ = [
    "DataError",
    "DataNotFoundError",
    "ListOpsDataModule",
    "MNISTDataModule",
    "SemiSupervisedMNISTDataModule",
    "SyntheticBinaryDataModule",
    "SyntheticHMMDataModule",
    "UDTaggingDataModule",
    "resolve_data_dir",
]
