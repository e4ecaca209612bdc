from .vitdet import ExpeditedViT, run_block

__all__ = ["ExpeditedViT", "run_block"]
