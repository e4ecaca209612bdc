"""How close the expedited model stays to the baseline.

Two kinds of measures:

- agreement with the baseline's own outputs, which needs no labels: detections matched one to
  one (same class, IoU >= 0.5, greedy by score), a video model's tracks likewise by tube IoU,
  per-pixel agreement of semantic and panoptic labels, and cosine similarity of backbone features;
- the task metric (e.g. COCO AP by the config's COCOEvaluator) of both models on the same
  labelled images, and its change.
"""
from __future__ import annotations

import copy
import math
import os
from collections import defaultdict
from typing import Dict, List, Mapping, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from detectron2.config import instantiate
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.structures import Instances, pairwise_iou
from omegaconf import DictConfig, ListConfig

from ..data.subset import register_image_subset
from ..evaluation.ytvis import _Track, _tube_ious
from ..runtime.config import ConfigError

__all__ = [
    "FeatureSimilarity",
    "PredictionAgreement",
    "TaskMetric",
    "build_evaluator",
    "match_detections",
    "match_tracks",
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
    return len(base), len(fast), _greedy_match(ious, base.scores, iou_threshold)


def _greedy_match(ious: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> List[float]:
    """IoUs of the one-to-one matches of rows (baseline, ``scores``) to columns (expedited):
    rows best score first, each taking the untaken column of highest IoU if at least
    ``iou_threshold`` (pairs that may not match hold -1)."""
    taken = torch.zeros(ious.shape[1], dtype=torch.bool)
    matched = []
    for row in torch.argsort(scores, descending=True, stable=True):
        candidates = ious[row].masked_fill(taken, -1.0)
        best = int(candidates.argmax())
        if candidates[best] >= iou_threshold:
            taken[best] = True
            matched.append(float(candidates[best]))
    return matched


def _tube_tracks(output: Mapping, score_threshold: float) -> Tuple[List[_Track], List[int]]:
    """The tracks of a video model's output (Mask2Former-VIS: "pred_scores", "pred_labels",
    "pred_masks" (T, H, W) bool) scoring at least ``score_threshold``, as the YouTube-VIS
    evaluator holds them (an RLE per frame), and their labels."""
    tracks, labels = [], []
    for score, label, mask in zip(output["pred_scores"], output["pred_labels"], output["pred_masks"]):
        if score < score_threshold:
            continue
        mask = mask.cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
        rles = mask_util.encode(np.asfortranarray(mask.transpose(1, 2, 0).astype(np.uint8)))
        areas = np.asarray(mask_util.area(rles), dtype=np.int64)
        tracks.append(_Track(list(rles), areas, float(score), False))
        labels.append(int(label))
    return tracks, labels


def match_tracks(
    baseline: Mapping, expedited: Mapping, score_threshold: float, iou_threshold: float = 0.5
) -> Tuple[int, int, List[float]]:
    """Match the expedited model's tracks of one video to the baseline's, one to one, by tube IoU
    (the YouTube-VIS evaluator's: intersections summed over frames / unions summed over frames),
    as :func:`match_detections` matches detections: same label, baseline tracks best score first.
    Two tubes empty in every frame agree (IoU 1).

    Returns:
        (baseline tracks kept, expedited tracks kept, tube IoU of each matched pair)
    """
    base, base_labels = _tube_tracks(baseline, score_threshold)
    fast, fast_labels = _tube_tracks(expedited, score_threshold)
    if not base or not fast:
        return len(base), len(fast), []
    ious = torch.as_tensor(_tube_ious(base, fast), dtype=torch.float64)  # (baseline, expedited)
    empty_base = torch.tensor([track.areas.sum() == 0 for track in base])
    empty_fast = torch.tensor([track.areas.sum() == 0 for track in fast])
    ious[empty_base[:, None] & empty_fast[None, :]] = 1.0
    ious[torch.tensor(base_labels)[:, None] != torch.tensor(fast_labels)[None, :]] = -1.0
    scores = torch.tensor([track.score for track in base])
    return len(base), len(fast), _greedy_match(ious, scores, iou_threshold)


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

    Uses whichever outputs the model gives: "instances" (detections), "sem_seg", "panoptic_seg",
    and a video model's tracks ("pred_masks": one (T, H, W) tube per track, matched by tube IoU).
    """

    def __init__(self, score_threshold: float, iou_threshold: float = 0.5):
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        # Set by the first input with "instances" / "pred_masks".
        self._matches: Dict[str, Dict] = {}
        self._pixels: Dict[str, List[int]] = defaultdict(lambda: [0, 0])  # output -> [same, total]

    def _add_matches(self, kind: str, counts: Tuple[int, int, List[float]]) -> None:
        totals = self._matches.setdefault(kind, {"baseline": 0, "expedited": 0, "matched_ious": []})
        totals["baseline"] += counts[0]
        totals["expedited"] += counts[1]
        totals["matched_ious"].extend(counts[2])

    def add(self, baseline: Mapping, expedited: Mapping) -> None:
        if "instances" in baseline:
            self._add_matches("instances", match_detections(
                baseline["instances"], expedited["instances"], self.score_threshold, self.iou_threshold
            ))
        if "pred_masks" in baseline:
            self._add_matches("tracks", match_tracks(baseline, expedited, self.score_threshold, self.iou_threshold))
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
        for kind, totals in self._matches.items():
            num_base, num_fast = totals["baseline"], totals["expedited"]
            ious = totals["matched_ious"]
            noun = "detections" if kind == "instances" else kind
            summary[kind] = {
                "score_threshold": self.score_threshold,
                "iou_threshold": self.iou_threshold,
                f"baseline_{noun}": num_base,
                f"expedited_{noun}": num_fast,
                "matched": len(ious),
                # Share of the baseline's detections (tracks) found again, and of the expedited
                # ones that the baseline also made; None when there is nothing to find.
                "recovered": len(ious) / num_base if num_base else None,
                "precision": len(ious) / num_fast if num_fast else None,
                # Box IoU for detections, tube IoU for tracks.
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
