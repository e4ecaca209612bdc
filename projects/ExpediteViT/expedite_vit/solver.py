"""Optimizer pieces that LazyConfig files refer to.

They live in the package rather than in a config file so that a config using them saves as a
loadable config.yaml: a function defined in a config file cannot be named by an import path.
"""
from functools import partial
from typing import Callable

__all__ = ["backbone_lr_factor"]


def _factor(parameter_name: str, multiplier: float) -> float:
    return multiplier if parameter_name.startswith("backbone.") else 1.0


def backbone_lr_factor(multiplier: float) -> Callable[[str], float]:
    """An ``lr_factor_func`` for detectron2's ``get_default_optimizer_params``: parameter name ->
    ``multiplier`` for the (pretrained) backbone's parameters, 1 for the rest."""
    return partial(_factor, multiplier=multiplier)
