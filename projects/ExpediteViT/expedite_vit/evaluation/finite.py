"""NaN and infinity in predictions or metrics are errors, never results.

A setting that overflows (e.g. a huge temperature) would otherwise give NaN boxes or masks,
which detectron2's evaluators turn into a plausible-looking table of NaN or zero metrics.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping

import torch
from detectron2.structures import Boxes, Instances
from torch import nn

__all__ = ["FiniteOutputs", "NonFiniteError", "check_finite_metrics", "non_finite_fields"]


class NonFiniteError(RuntimeError):
    """A prediction or a metric that is NaN or infinite; the message names it."""


def non_finite_fields(output: Mapping[str, Any]) -> List[str]:
    """Names of the floating-point tensors (and floats) of one input's predictions that hold NaN or
    inf, e.g. ``["instances.pred_boxes", "sem_seg"]`` or, for a video, ``["pred_scores[3]"]``."""
    found = []

    def visit(name: str, value: Any) -> None:
        if isinstance(value, Boxes):
            value = value.tensor
        if isinstance(value, Instances):
            for field, child in value.get_fields().items():
                visit(f"{name}.{field}", child)
        elif isinstance(value, (tuple, list)):
            for index, child in enumerate(value):
                visit(f"{name}[{index}]", child)
        elif torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            found.append(name)
        elif isinstance(value, float) and not math.isfinite(value):
            found.append(name)

    for key, value in output.items():
        visit(key, value)
    return found


def input_name(item: Mapping[str, Any]) -> str:
    """How a message names one model input: an image by its file (else its id), a video by its id
    and first frame file."""
    if "file_name" in item:
        return str(item["file_name"])
    frames = item.get("file_names")
    video = f"video {item['video_id']}" if "video_id" in item else None
    if frames:
        return f"{video or 'the video'} (first frame {frames[0]})"
    return video or str(item.get("image_id", "an input image"))


class FiniteOutputs(nn.Module):
    """Wraps a detectron2 model for inference: each input's (image's or video's) predictions are
    checked, and one that holds NaN or inf raises :class:`NonFiniteError` naming the input and
    the fields."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        outputs = self.model(inputs)
        for item, output in zip(inputs, outputs):
            bad = non_finite_fields(output)
            if bad:
                raise NonFiniteError(
                    f"the model's predictions for {input_name(item)} hold NaN or inf ({', '.join(bad)}); "
                    f"check the token-reduction settings (e.g. temperatures) and the weights"
                )
        return outputs


# NaN by the evaluators' convention when there is nothing to score: a category or an object
# size (COCO's small/medium/large) absent from the ground truth.
def _may_be_nan(metric: str) -> bool:
    return "-" in metric or metric in ("APs", "APm", "APl")


def check_finite_metrics(results: Mapping[str, Mapping[str, float]]) -> None:
    """Raise :class:`NonFiniteError` naming every task metric that is NaN or inf, except those
    the evaluators leave NaN when the ground truth has nothing to score (per category, per size).
    detectron2's COCOEvaluator reports all-NaN when a model made no prediction at all."""
    bad = [
        f"{task}/{metric}"
        for task, metrics in results.items()
        for metric, value in (metrics.items() if isinstance(metrics, Mapping) else [])
        if isinstance(value, float) and not math.isfinite(value) and not _may_be_nan(metric)
    ]
    if bad:
        raise NonFiniteError(
            f"metrics {', '.join(bad)} are NaN or inf (did the model predict nothing?); "
            f"no results are written"
        )
