"""jsr: JAX/Flax super-resolution (SRResNet, SRGAN) with Delta-STN hyperparameter tuning."""

__version__ = "0.1.0"
