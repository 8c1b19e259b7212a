"""zoo: discrete and structured latent-variable models with interchangeable gradient estimators."""

__version__ = "0.1.0"
