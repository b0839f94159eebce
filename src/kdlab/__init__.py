"""kdlab: knowledge-distillation research at thesis scale."""

__version__ = "0.1.0"
