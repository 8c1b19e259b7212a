"""Models: `LatentVariableModel`, the injected latents and one file per model family:
the VAEs and SBNs of MNIST (`vae`, `sbn`), the semi-supervised `m2`, the
unsupervised `tagger` (linear-chain latents) and the `listops` latent-tree
classifiers.

Importing this package makes the models' and latents' class names usable as
shorthand on the command line (``--model=VAE --model.latent=ChainLatent``).
"""

from zoo.models.base import Batch, LatentVariableModel
from zoo.models.components import MLP, bernoulli_nll, image_grid
from zoo.models.latent import BernoulliLatent, CategoricalLatent, ChainLatent, Latent
from zoo.models.listops import (
    BinaryComposer,
    DependencyComposer,
    GoldTreeClassifier,
    LatentTreeClassifier,
    ListOpsClassifier,
    LSTMClassifier,
)
from zoo.models.m2 import M2
from zoo.models.sbn import SBN
from zoo.models.tagger import (
    BiLSTMEncoder,
    ChainEncoder,
    ChainTagger,
    ConvEncoder,
    HMMPosterior,
    LSTMTagger,
    NeuralHMMTagger,
)
from zoo.models.vae import VAE

__all__ = [
    "Batch",
    "BernoulliLatent",
    "BiLSTMEncoder",
    "BinaryComposer",
    "CategoricalLatent",
    "ChainEncoder",
    "ChainLatent",
    "ChainTagger",
    "ConvEncoder",
    "DependencyComposer",
    "GoldTreeClassifier",
    "HMMPosterior",
    "LSTMClassifier",
    "LSTMTagger",
    "Latent",
    "LatentTreeClassifier",
    "LatentVariableModel",
    "ListOpsClassifier",
    "M2",
    "MLP",
    "NeuralHMMTagger",
    "SBN",
    "VAE",
    "bernoulli_nll",
    "image_grid",
]
