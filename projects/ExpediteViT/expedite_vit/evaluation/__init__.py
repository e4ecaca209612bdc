"""Evaluation helpers of ExpediteViT."""
from .finite import FiniteOutputs, NonFiniteError, check_finite_metrics
from .segmentation import SEGMENTATION_TASKS, build_segmentation_evaluator
from .ytvis import (
    COCO_AREA_THRESHOLDS,
    YTVIS_AREA_THRESHOLDS,
    YTVISEvaluator,
    evaluate_ytvis,
    ytvis_results_from_output,
)

__all__ = [
    "COCO_AREA_THRESHOLDS",
    "FiniteOutputs",
    "NonFiniteError",
    "SEGMENTATION_TASKS",
    "YTVISEvaluator",
    "YTVIS_AREA_THRESHOLDS",
    "build_segmentation_evaluator",
    "check_finite_metrics",
    "evaluate_ytvis",
    "ytvis_results_from_output",
]
