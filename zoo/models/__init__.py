"""Models: `LatentVariableModel`, the injected latents and one file per model family.

Importing this package makes the models' and latents' class names usable as
shorthand on the command line (``--model=VAE --model.latent=ChainLatent``).
"""

from zoo.models.base import Batch, LatentVariableModel
from zoo.models.components import MLP, bernoulli_nll, image_grid
from zoo.models.latent import BernoulliLatent, CategoricalLatent, ChainLatent, Latent
from zoo.models.sbn import SBN, BernoulliSBN, CategoricalSBN
from zoo.models.vae import VAE, BernoulliVAE, CategoricalVAE

__all__ = [
    "MLP",
    "SBN",
    "VAE",
    "Batch",
    "BernoulliLatent",
    "BernoulliSBN",
    "BernoulliVAE",
    "CategoricalLatent",
    "CategoricalSBN",
    "CategoricalVAE",
    "ChainLatent",
    "Latent",
    "LatentVariableModel",
    "bernoulli_nll",
    "image_grid",
]
