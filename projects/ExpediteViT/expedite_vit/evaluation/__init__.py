"""Evaluation helpers of ExpediteViT."""
from .segmentation import SEGMENTATION_TASKS, build_segmentation_evaluator

__all__ = ["SEGMENTATION_TASKS", "build_segmentation_evaluator"]
