"""CIESS: continuous input embedding size search for latent-factor recommenders."""

__version__ = "0.1.0"
