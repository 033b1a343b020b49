"""geomlab: learning-geometry experiments on PyTorch models."""

__version__ = "0.1.0"
