"""kdlab: knowledge distillation on PyTorch."""

__version__ = "0.1.0"
