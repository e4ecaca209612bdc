"""Evaluation helpers of ExpediteViT."""
from .finite import FiniteOutputs, NonFiniteError, check_finite_metrics
from .segmentation import SEGMENTATION_TASKS, build_segmentation_evaluator

__all__ = [
    "FiniteOutputs",
    "NonFiniteError",
    "SEGMENTATION_TASKS",
    "build_segmentation_evaluator",
    "check_finite_metrics",
]
