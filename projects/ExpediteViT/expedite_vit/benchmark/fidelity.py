"""How close the expedited model stays to the baseline.

Two kinds of measures:

- agreement with the baseline's own outputs, which needs no labels: detections matched one to
  one (same class, IoU >= 0.5, greedy by score), per-pixel agreement of semantic and panoptic
  labels, and cosine similarity of backbone features;
- the task metric (e.g. COCO AP by the config's COCOEvaluator) of both models on the same
  labelled images, and its change.
"""
from __future__ import annotations

import copy
import math
import os
from collections import defaultdict
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import instantiate
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.structures import Instances, pairwise_iou
from omegaconf import DictConfig, ListConfig

from ..data.subset import register_image_subset
from ..runtime.config import ConfigError

__all__ = [
    "FeatureSimilarity",
    "PredictionAgreement",
    "TaskMetric",
    "build_evaluator",
    "match_detections",
]


def _confident(instances: Instances, score_threshold: float) -> Instances:
    """Detections a user would see: score at least the threshold, non-empty box."""
    instances = instances.to("cpu")
    keep = (instances.scores >= score_threshold) & instances.pred_boxes.nonempty()
    return instances[keep]


def match_detections(
    baseline: Instances, expedited: Instances, score_threshold: float, iou_threshold: float = 0.5
) -> Tuple[int, int, List[float]]:
    """Match expedited detections to the baseline's, one to one.

    Both sides keep the detections scoring at least ``score_threshold``. Baseline detections,
    best score first, each take the unmatched expedited detection of the same class with the
    highest IoU, if that IoU is at least ``iou_threshold``.

    Returns:
        (baseline detections kept, expedited detections kept, IoU of each matched pair)
    """
    base = _confident(baseline, score_threshold)
    fast = _confident(expedited, score_threshold)
    if len(base) == 0 or len(fast) == 0:
        return len(base), len(fast), []
    ious = pairwise_iou(base.pred_boxes, fast.pred_boxes)
    ious[base.pred_classes[:, None] != fast.pred_classes[None, :]] = -1.0
    taken = torch.zeros(len(fast), dtype=torch.bool)
    matched = []
    for row in torch.argsort(base.scores, descending=True, stable=True):
        candidates = ious[row].masked_fill(taken, -1.0)
        best = int(candidates.argmax())
        if candidates[best] >= iou_threshold:
            taken[best] = True
            matched.append(float(candidates[best]))
    return len(base), len(fast), matched


def _panoptic_categories(panoptic_seg) -> torch.Tensor:
    """(H, W) category of each pixel of a (segment ids, segments_info) result, -1 where void."""
    segment_ids, segments_info = panoptic_seg
    segment_ids = segment_ids.to("cpu")
    categories = torch.full_like(segment_ids, -1, dtype=torch.long)
    for segment in segments_info:
        categories[segment_ids == segment["id"]] = segment["category_id"]
    return categories


class PredictionAgreement:
    """Agreement of the expedited model's predictions with the baseline's, over many images.

    Uses whichever outputs the model gives: "instances" (detections), "sem_seg", "panoptic_seg".
    """

    def __init__(self, score_threshold: float, iou_threshold: float = 0.5):
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self._detections: Optional[Dict] = None  # set by the first image with "instances"
        self._pixels: Dict[str, List[int]] = defaultdict(lambda: [0, 0])  # output -> [same, total]

    def add(self, baseline: Mapping, expedited: Mapping) -> None:
        if "instances" in baseline:
            if self._detections is None:
                self._detections = {"baseline": 0, "expedited": 0, "matched_ious": []}
            num_base, num_fast, ious = match_detections(
                baseline["instances"], expedited["instances"], self.score_threshold, self.iou_threshold
            )
            self._detections["baseline"] += num_base
            self._detections["expedited"] += num_fast
            self._detections["matched_ious"].extend(ious)
        if "sem_seg" in baseline:
            self._add_pixels("sem_seg", baseline["sem_seg"].argmax(0), expedited["sem_seg"].argmax(0))
        if "panoptic_seg" in baseline:
            self._add_pixels(
                "panoptic_seg",
                _panoptic_categories(baseline["panoptic_seg"]),
                _panoptic_categories(expedited["panoptic_seg"]),
            )

    def _add_pixels(self, output: str, baseline_labels: torch.Tensor, expedited_labels: torch.Tensor) -> None:
        counts = self._pixels[output]
        counts[0] += int((baseline_labels.cpu() == expedited_labels.cpu()).sum())
        counts[1] += baseline_labels.numel()

    def summary(self) -> Dict:
        summary = {}
        if self._detections is not None:
            num_base, num_fast = self._detections["baseline"], self._detections["expedited"]
            ious = self._detections["matched_ious"]
            summary["instances"] = {
                "score_threshold": self.score_threshold,
                "iou_threshold": self.iou_threshold,
                "baseline_detections": num_base,
                "expedited_detections": num_fast,
                "matched": len(ious),
                # Share of the baseline's detections found again, and of the expedited ones that
                # the baseline also made; None when there is nothing to find.
                "recovered": len(ious) / num_base if num_base else None,
                "precision": len(ious) / num_fast if num_fast else None,
                "mean_iou": sum(ious) / len(ious) if ious else None,
            }
        for output, (same, total) in self._pixels.items():
            summary[output] = {"pixel_agreement": same / total if total else None, "pixels": total}
        return summary


class FeatureSimilarity:
    """Mean cosine similarity, over positions and images, of two models' feature maps."""

    def __init__(self):
        self._sums: Dict[str, float] = defaultdict(float)
        self._counts: Dict[str, int] = defaultdict(int)

    def add(self, baseline: Mapping[str, torch.Tensor], expedited: Mapping[str, torch.Tensor]) -> None:
        """Feature dicts {name: (B, C, H, W)} as backbones return them."""
        for name, base in baseline.items():
            # float64, so that identical maps give 1 up to rounding of the last digit.
            similarity = F.cosine_similarity(base.double(), expedited[name].double(), dim=1)
            self._sums[name] += float(similarity.mean())
            self._counts[name] += 1

    def summary(self) -> Dict[str, float]:
        return {name: self._sums[name] / self._counts[name] for name in self._sums}


def build_evaluator(cfg: DictConfig, dataset_name: str, output_dir: str, file_names=None) -> DatasetEvaluator:
    """The config's ``dataloader.evaluator`` (one or a list) pointed at ``dataset_name``, or,
    given ``file_names``, at those images of it only (see :func:`register_image_subset`).

    An evaluator node with a ``datasets`` mapping (:func:`build_segmentation_evaluator`) keeps
    its own datasets, which must include ``dataset_name``: they hold the ground truth of each
    task for the same images.
    """
    def scored(name: str) -> str:
        if file_names is None:
            return name
        return register_image_subset(name, file_names, os.path.join(output_dir, "ground_truth"))

    evaluator_cfg = copy.deepcopy(cfg.dataloader.evaluator)
    nodes = list(evaluator_cfg) if isinstance(evaluator_cfg, ListConfig) else [evaluator_cfg]
    evaluators = []
    for node in nodes:
        # output_dir is where COCOEvaluator converts datasets that have no COCO json.
        node.output_dir = output_dir
        if "datasets" in node:
            if dataset_name not in node.datasets.values():
                raise ConfigError(
                    f"the config's evaluator scores the datasets {dict(node.datasets)}; the images "
                    f"to run must come from one of them, not from {dataset_name!r}"
                )
            node.datasets = {task: scored(name) for task, name in node.datasets.items()}
        else:
            # detectron2's evaluators (COCO, SemSeg, COCOPanoptic) all take dataset_name.
            node.dataset_name = scored(dataset_name)
        evaluators.append(instantiate(node))
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


def _finite_or_none(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _metric_deltas(baseline: Mapping, expedited: Mapping) -> Dict:
    """expedited - baseline for every numeric metric of every task."""
    deltas = {}
    for task, metrics in baseline.items():
        deltas[task] = {}
        for name, value in metrics.items():
            base, fast = _finite_or_none(value), _finite_or_none(expedited.get(task, {}).get(name))
            deltas[task][name] = fast - base if base is not None and fast is not None else None
    return deltas


class TaskMetric:
    """The config's evaluator run over the baseline's and the expedited model's predictions of the
    same labelled images (streamed: predictions are not kept), scored on those images only."""

    def __init__(self, cfg: DictConfig, dataset_name: str, file_names: List[str], output_dir: str):
        self.dataset_name = dataset_name
        self.evaluators = {
            name: build_evaluator(cfg, dataset_name, os.path.join(output_dir, name), file_names)
            for name in ("baseline", "expedited")
        }
        for evaluator in self.evaluators.values():
            evaluator.reset()
        self.num_images = 0

    def add(self, model_input: Dict, outputs: Mapping[str, Dict]) -> None:
        self.num_images += 1
        for name, evaluator in self.evaluators.items():
            evaluator.process([model_input], [outputs[name]])

    def summary(self) -> Dict:
        results = {
            name: {task: dict(metrics) for task, metrics in (e.evaluate() or {}).items()}
            for name, e in self.evaluators.items()
        }
        return {
            "dataset": self.dataset_name,
            "evaluator": type(self.evaluators["baseline"]).__name__,
            "images": self.num_images,
            **results,
            "delta": _metric_deltas(results["baseline"], results["expedited"]),
        }
