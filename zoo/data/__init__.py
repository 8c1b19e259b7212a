"""LightningDataModules: binarized MNIST and synthetic binary vectors.

``zoo.data`` stands beside ``zoo.structures``/``zoo.estimators``/``zoo.models``
and imports none of them.
"""

from zoo.data.base import resolve_data_dir
from zoo.data.mnist import DataNotFoundError, MNISTDataModule
from zoo.data.synthetic import SyntheticBinaryDataModule

__all__ = [
    "DataNotFoundError",
    "MNISTDataModule",
    "SyntheticBinaryDataModule",
    "resolve_data_dir",
]
