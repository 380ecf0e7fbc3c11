"""matgenbench: train, sample and score generative models of crystals on one yardstick."""

__all__ = ["__version__"]

__version__ = "0.1.0"
