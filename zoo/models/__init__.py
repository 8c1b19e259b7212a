"""Models: `LatentVariableModel` and one file per model family.

Importing this package makes the models' class names usable as shorthand on
the command line (``--model=CategoricalVAE``).
"""

from zoo.models.base import Batch, LatentVariableModel
from zoo.models.components import MLP, bernoulli_nll, image_grid
from zoo.models.sbn import SBN, BernoulliSBN, CategoricalSBN
from zoo.models.vae import VAE, BernoulliVAE, CategoricalVAE

__all__ = [
    "MLP",
    "SBN",
    "VAE",
    "Batch",
    "BernoulliSBN",
    "BernoulliVAE",
    "CategoricalSBN",
    "CategoricalVAE",
    "LatentVariableModel",
    "bernoulli_nll",
    "image_grid",
]
