"""
YouTube-VIS evaluation: COCO-style AP over mask tubes, computed with pycocotools' RLE operations.

The metric follows the YouTube-VIS challenge's (youtubevos/cocoapi ``YTVOSeval``, which
Mask2Former-VIS ships):

* A prediction and a ground-truth object are tracks over the frames of one video; a frame where a
  track has no mask is ``None``. Their **tube IoU** is the sum over frames of the intersections divided
  by the sum over frames of the unions, so a frame where only one of them has a mask adds that mask's
  area to the union, and frames where neither has one do not count.
* Detections are matched greedily in score order to ground truth of the same (video, category) at
  each IoU threshold 0.50:0.05:0.95, keeping at most 100 per (video, category); precision is sampled
  at 101 recall points and averaged as in COCO, with at most 1 / 10 / 100 detections for AR1 / AR10 /
  the rest.
* Crowd ground truth (``iscrowd``) is ignored: a detection matched to it counts neither way.
* Size ranges apply to a track's **mean area over the frames where its mask is not empty**. By default
  they are YouTube-VIS's (small < 128^2 <= medium < 256^2 <= large), not COCO's 32^2 / 96^2; ground
  truth outside a range is ignored in it, and so are unmatched detections outside it.

Results are AP, AP50, AP75, APs, APm, APl, AR1, AR10 and AP-<category>, in percent, NaN where there
is nothing to score (no ground truth of that size or category), as detectron2's COCOEvaluator reports.
"""

import json
import logging
import math
import os
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table
from tabulate import tabulate

__all__ = [
    "COCO_AREA_THRESHOLDS",
    "YTVIS_AREA_THRESHOLDS",
    "YTVISEvaluator",
    "evaluate_ytvis",
    "ytvis_results_from_output",
]

logger = logging.getLogger(__name__)

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETS = (1, 10, 100)
# (small/medium, medium/large) boundaries on the mean per-frame area, in pixels.
YTVIS_AREA_THRESHOLDS = (128**2, 256**2)
COCO_AREA_THRESHOLDS = (32**2, 96**2)
_MAX_AREA = 1e5**2  # the upper end of the "all" and "large" ranges, as in COCO
_AREA_NAMES = ("all", "small", "medium", "large")


@dataclass
class _Track:
    """One ground-truth object or one prediction of a video."""

    rles: List[Optional[dict]]  # per frame: compressed RLE, or None where the track has no mask
    areas: np.ndarray  # (T,) per-frame mask area, 0 where there is no mask
    score: float  # 1 for ground truth
    crowd: bool

    @property
    def mean_area(self) -> float:
        # Empty masks do not count: a model gives a mask for every frame, empty or not.
        present = self.areas[self.areas > 0]
        return float(present.mean()) if len(present) else 0.0


@dataclass
class _GroupResult:
    """The matches of one (video, category) group within one area range."""

    scores: np.ndarray  # (D,) detection scores, highest first
    matched: np.ndarray  # (num IoU thresholds, D) bool
    ignored: np.ndarray  # (num IoU thresholds, D) bool: matched to ignored ground truth, or out of range
    num_gt: int  # ground truth of the group that counts in this range


def evaluate_ytvis(
    ground_truth: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    area_thresholds: Tuple[float, float] = YTVIS_AREA_THRESHOLDS,
) -> Dict[str, float]:
    """
    Video instance segmentation AP of `results` against `ground_truth` (no detectron2 registration
    needed).

    Args:
        ground_truth: a YouTube-VIS json dict with "videos", "annotations" and "categories"; masks as
            polygons, uncompressed or compressed RLE.
        results: the YouTube-VIS results format, one dict per predicted track:
            {"video_id", "category_id" (a dataset id), "score", "segmentations": [RLE or None] * T}.
        area_thresholds: the (small/medium, medium/large) area boundaries.

    Returns:
        {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AP-<category name>" ...}: percent,
        NaN where undefined.
    """
    if "annotations" not in ground_truth:
        raise ValueError("the ground truth has no 'annotations' (an unlabelled split): nothing to score")
    videos = {video["id"]: video for video in ground_truth["videos"]}
    categories = sorted(ground_truth["categories"], key=lambda c: c["id"])
    category_index = {c["id"]: k for k, c in enumerate(categories)}
    gts = _group_tracks(ground_truth["annotations"], videos, category_index, "ground truth")
    dts = _group_tracks(results, videos, category_index, "results")
    for tracks in dts.values():
        tracks.sort(key=lambda track: -track.score)  # stable: ties keep the input order
        del tracks[MAX_DETS[-1]:]

    small, large = area_thresholds
    area_ranges = ((0, _MAX_AREA), (0, small), (small, large), (large, _MAX_AREA))
    groups = defaultdict(list)  # (category index, area index) -> [_GroupResult]
    for video_id, category_id in sorted(set(gts) | set(dts)):
        group_gts, group_dts = gts.get((video_id, category_id), []), dts.get((video_id, category_id), [])
        ious = _tube_ious(group_dts, group_gts)
        for a, area_range in enumerate(area_ranges):
            groups[category_index[category_id], a].append(_match(group_dts, group_gts, ious, area_range))
    precision, recall = _accumulate(groups, len(categories), len(area_ranges))
    return _summarize(precision, recall, [c["name"] for c in categories])


def _tube_ious(dts: Sequence[_Track], gts: Sequence[_Track]) -> np.ndarray:
    """
    Returns:
        (D, G) tube IoU: sum over frames of |D_t & G_t| / sum over frames of |D_t | G_t| (0 when the
        union is empty).
    """
    if not dts or not gts:
        return np.zeros((len(dts), len(gts)))
    dt_areas = np.stack([track.areas for track in dts]).astype(np.float64)  # (D, T)
    gt_areas = np.stack([track.areas for track in gts]).astype(np.float64)  # (G, T)
    intersection = np.zeros((len(dts), len(gts)))
    for t in range(dt_areas.shape[1]):
        d = [i for i, track in enumerate(dts) if track.rles[t] is not None]
        g = [j for j, track in enumerate(gts) if track.rles[t] is not None]
        if not d or not g:
            continue
        # pycocotools computes all pairs' IoU = I / U in one call; I follows exactly from it and the
        # two areas, since U = a_d + a_g - I (it is an integer, rounding removes float error).
        iou = mask_util.iou([dts[i].rles[t] for i in d], [gts[j].rles[t] for j in g], [0] * len(g))
        pair_area = dt_areas[d, t][:, None] + gt_areas[g, t][None, :]
        intersection[np.ix_(d, g)] += np.rint(iou * pair_area / (1 + iou))
    union = dt_areas.sum(axis=1)[:, None] + gt_areas.sum(axis=1)[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)


def _to_rle(segmentation, height: int, width: int) -> dict:
    """A compressed RLE of one frame's mask given as polygons, uncompressed or compressed RLE."""
    if isinstance(segmentation, list):
        return mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_util.frPyObjects(segmentation, height, width)
    return segmentation


def _group_tracks(entries, videos, category_ids, source) -> Dict[Tuple[int, int], List[_Track]]:
    """Check and convert ground-truth annotations or results, grouped by (video id, category id)."""
    grouped = defaultdict(list)
    for entry in entries:
        video_id, category_id = entry["video_id"], entry["category_id"]
        if video_id not in videos:
            raise ValueError(f"{source}: video {video_id} is not a video of the ground truth")
        if category_id not in category_ids:
            raise ValueError(
                f"{source} of video {video_id}: 'category_id' {category_id} is not a category of the "
                f"dataset ({sorted(category_ids)})"
            )
        video = videos[video_id]
        height, width, length = video["height"], video["width"], video["length"]
        segmentations = entry["segmentations"]
        if len(segmentations) != length:
            raise ValueError(
                f"{source} of video {video_id}: 'segmentations' has {len(segmentations)} frames, "
                f"the video has {length}"
            )
        # Falsy entries (None, [], {}) mean "no mask in this frame", as in YTVOSeval.
        rles = [_to_rle(s, height, width) if s else None for s in segmentations]
        for t, rle in enumerate(rles):
            if rle is not None and list(rle["size"]) != [height, width]:
                raise ValueError(
                    f"{source} of video {video_id}: 'segmentations'[{t}] is a {rle['size'][0]}x"
                    f"{rle['size'][1]} mask, the video is {height}x{width}"
                )
        areas = np.array([mask_util.area(rle) if rle is not None else 0 for rle in rles], dtype=np.int64)
        grouped[video_id, category_id].append(
            _Track(rles, areas, float(entry.get("score", 1.0)), bool(entry.get("iscrowd", 0)))
        )
    return grouped


def _match(dts, gts, ious, area_range) -> _GroupResult:
    """
    COCO's greedy matching of one (video, category) group in one area range.

    Args:
        dts: detections, highest score first; gts: ground truth; ious: (D, G) tube IoU.
    """
    low, high = area_range
    gt_ignore = np.array([g.crowd or not low <= g.mean_area <= high for g in gts], dtype=bool)
    # Ground truth that counts goes first, so a detection takes ignored ground truth only when
    # nothing else matches it.
    order = np.argsort(gt_ignore, kind="mergesort")
    gt_ignore, gt_crowd, ious = gt_ignore[order], [gts[j].crowd for j in order], ious[:, order]

    matched = np.zeros((len(IOU_THRESHOLDS), len(dts)), dtype=bool)
    ignored = np.zeros_like(matched)
    for ti, threshold in enumerate(IOU_THRESHOLDS):
        taken = np.zeros(len(gts), dtype=bool)
        for d in range(len(dts)):
            best, best_iou = -1, min(threshold, 1 - 1e-10)
            for g in range(len(gts)):
                if taken[g] and not gt_crowd[g]:  # crowd regions take any number of detections
                    continue
                if best >= 0 and not gt_ignore[best] and gt_ignore[g]:
                    break
                if ious[d, g] >= best_iou:  # ">=": among equal IoUs the later ground truth wins
                    best, best_iou = g, ious[d, g]
            if best >= 0:
                matched[ti, d], ignored[ti, d], taken[best] = True, gt_ignore[best], True
    outside = np.array([not low <= dt.mean_area <= high for dt in dts], dtype=bool)
    ignored |= ~matched & outside[None, :]
    return _GroupResult(np.array([dt.score for dt in dts]), matched, ignored, int((~gt_ignore).sum()))


def _accumulate(groups, num_categories, num_areas):
    """
    Returns:
        precision (num IoU thresholds, 101, K, A, M) and recall (num IoU thresholds, K, A, M);
        -1 where the category has no ground truth in the area range.
    """
    num_thresholds = len(IOU_THRESHOLDS)
    precision = -np.ones((num_thresholds, len(RECALL_THRESHOLDS), num_categories, num_areas, len(MAX_DETS)))
    recall = -np.ones((num_thresholds, num_categories, num_areas, len(MAX_DETS)))
    for (k, a), results in groups.items():
        num_gt = sum(r.num_gt for r in results)
        if num_gt == 0:
            continue
        for m, max_det in enumerate(MAX_DETS):
            scores = np.concatenate([r.scores[:max_det] for r in results])
            order = np.argsort(-scores, kind="mergesort")
            matched = np.concatenate([r.matched[:, :max_det] for r in results], axis=1)[:, order]
            ignored = np.concatenate([r.ignored[:, :max_det] for r in results], axis=1)[:, order]
            true_pos = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
            false_pos = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
            for t in range(num_thresholds):
                rc = true_pos[t] / num_gt
                pr = true_pos[t] / (true_pos[t] + false_pos[t] + np.spacing(1))
                recall[t, k, a, m] = rc[-1] if len(rc) else 0.0
                envelope = np.maximum.accumulate(pr[::-1])[::-1]  # precision made non-increasing
                index = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
                sampled = np.zeros(len(RECALL_THRESHOLDS))
                reached = index < len(envelope)
                sampled[reached] = envelope[index[reached]]
                precision[t, :, k, a, m] = sampled
    return precision, recall


def _mean_percent(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean() * 100) if valid.size else float("nan")


def _summarize(precision, recall, category_names) -> Dict[str, float]:
    all_areas, last = _AREA_NAMES.index("all"), MAX_DETS.index(100)
    at_50, at_75 = (int(np.argmin(np.abs(IOU_THRESHOLDS - iou))) for iou in (0.5, 0.75))
    metrics = {
        "AP": _mean_percent(precision[..., all_areas, last]),
        "AP50": _mean_percent(precision[at_50, ..., all_areas, last]),
        "AP75": _mean_percent(precision[at_75, ..., all_areas, last]),
        "APs": _mean_percent(precision[..., _AREA_NAMES.index("small"), last]),
        "APm": _mean_percent(precision[..., _AREA_NAMES.index("medium"), last]),
        "APl": _mean_percent(precision[..., _AREA_NAMES.index("large"), last]),
        "AR1": _mean_percent(recall[..., all_areas, MAX_DETS.index(1)]),
        "AR10": _mean_percent(recall[..., all_areas, MAX_DETS.index(10)]),
    }
    for k, name in enumerate(category_names):
        metrics[f"AP-{name}"] = _mean_percent(precision[:, :, k, all_areas, last])
    return metrics


# ---------------------------------------------------------------------------------------------
# The detectron2 evaluator


def _masks_to_numpy(mask) -> np.ndarray:
    return mask.cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)


def ytvis_results_from_output(video: Mapping[str, Any], output: Mapping[str, Any],
                              category_ids: Sequence[int]) -> List[dict]:
    """
    Convert one video's predictions, as Mask2Former-VIS's inference returns them, to YouTube-VIS
    results entries (one per predicted track, a compressed RLE for every frame).

    Args:
        video: the model's input dict of the video, with "video_id", "length", "height", "width".
        output: {"image_size": (H, W), "pred_scores": [float], "pred_labels": [int, contiguous],
            "pred_masks": [(T, H, W) bool tensor or array]}, at the video's original resolution.
        category_ids: the dataset category id of each contiguous label.
    """
    video_id, length = video["video_id"], video["length"]
    size = (video["height"], video["width"])
    if tuple(output["image_size"]) != size:
        raise ValueError(
            f"predictions of video {video_id}: 'image_size' is {tuple(output['image_size'])}, the video "
            f"is {size} (predictions must be at the original resolution)"
        )
    scores, labels, masks = output["pred_scores"], output["pred_labels"], output["pred_masks"]
    if not len(scores) == len(labels) == len(masks):
        raise ValueError(
            f"predictions of video {video_id}: 'pred_scores', 'pred_labels' and 'pred_masks' have "
            f"{len(scores)}, {len(labels)} and {len(masks)} entries"
        )
    results = []
    for index, (score, label, mask) in enumerate(zip(scores, labels, masks)):
        label = int(label)
        if not 0 <= label < len(category_ids):
            raise ValueError(
                f"predictions of video {video_id}: 'pred_labels'[{index}] is {label}, not a category "
                f"of the dataset (0..{len(category_ids) - 1})"
            )
        mask = _masks_to_numpy(mask)
        if mask.dtype != bool or mask.ndim != 3:
            raise ValueError(
                f"predictions of video {video_id}: 'pred_masks'[{index}] must be a (T, H, W) bool mask, "
                f"got {mask.dtype} of shape {tuple(mask.shape)}"
            )
        if mask.shape[0] != length:
            raise ValueError(
                f"predictions of video {video_id}: 'pred_masks'[{index}] has {mask.shape[0]} frames, "
                f"the video has {length}"
            )
        if mask.shape[1:] != size:
            raise ValueError(
                f"predictions of video {video_id}: 'pred_masks'[{index}] is {mask.shape[1]}x"
                f"{mask.shape[2]} per frame, the video is {size[0]}x{size[1]} (predictions must be at "
                f"the original resolution)"
            )
        # encode takes (H, W, N) Fortran-ordered uint8 and returns one RLE per frame.
        rles = mask_util.encode(np.asfortranarray(mask.transpose(1, 2, 0).astype(np.uint8)))
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")  # json-serialisable
        results.append({
            "video_id": video_id,
            "score": float(score),
            "category_id": category_ids[label],
            "segmentations": rles,
        })
    return results


class YTVISEvaluator(DatasetEvaluator):
    """
    YouTube-VIS AP of a video instance segmentation model, for detectron2's `inference_on_dataset`.

    The dataset's metadata must have ``json_file``, the YouTube-VIS json of the videos. If it has
    annotations, :meth:`evaluate` returns ``{"segm": {"AP", ..., "AR10", "AP-<category>"}}``. If not
    (YouTube-VIS's valid/test splits), it only writes ``results.json`` and, for the evaluation server,
    ``results.zip`` holding it, into `output_dir`, and returns ``{}``. With an `output_dir` the results
    are written in both cases.
    """

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None, *,
                 area_thresholds: Tuple[float, float] = YTVIS_AREA_THRESHOLDS):
        """
        Args:
            dataset_name: a registered dataset with ``json_file`` in its metadata.
            distributed: gather the predictions of all ranks and evaluate on the main one.
            output_dir: where results.json / results.zip go (nothing written when None).
            area_thresholds: (small/medium, medium/large) boundaries of the mean per-frame area;
                :data:`COCO_AREA_THRESHOLDS` gives COCO's.
        """
        json_file = MetadataCatalog.get(dataset_name).get("json_file")
        if not json_file:
            raise ValueError(f"dataset {dataset_name!r} has no 'json_file' in its metadata to evaluate with")
        with PathManager.open(json_file) as f:
            self._ground_truth = json.load(f)
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._area_thresholds = tuple(area_thresholds)
        # Contiguous labels index the categories sorted by id, as the YouTube-VIS loader assigns them.
        categories = sorted(self._ground_truth["categories"], key=lambda c: c["id"])
        self._category_ids = [c["id"] for c in categories]
        self._predictions: List[dict] = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        """
        Args:
            inputs: the model's inputs, one dict per video (Mask2Former-VIS tests one at a time).
            outputs: the model's output dict for that video, or a list of one per input.
        """
        outputs = [outputs] if isinstance(outputs, Mapping) else outputs
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} input videos but {len(outputs)} outputs")
        for video, output in zip(inputs, outputs):
            self._predictions.extend(ytvis_results_from_output(video, output, self._category_ids))

    def evaluate(self):
        predictions = self._predictions
        if self._distributed:
            comm.synchronize()
            predictions = [p for rank in comm.gather(predictions, dst=0) for p in rank]
            if not comm.is_main_process():
                return {}
        if not predictions:
            logger.warning(f"YTVISEvaluator: no predictions for {self._dataset_name}; nothing to evaluate")
            return {}
        if self._output_dir:
            self._write_results(predictions)
        if "annotations" not in self._ground_truth:
            if self._output_dir:
                logger.info(
                    f"{self._dataset_name} has no annotations: wrote "
                    f"{os.path.join(self._output_dir, 'results.zip')} for the evaluation server"
                )
            else:
                logger.warning(
                    f"{self._dataset_name} has no annotations and the evaluator has no output_dir: the "
                    f"predictions are neither evaluated nor saved"
                )
            return {}
        metrics = evaluate_ytvis(self._ground_truth, predictions, self._area_thresholds)
        self._log_metrics(metrics)
        return {"segm": metrics}

    def _write_results(self, predictions):
        PathManager.mkdirs(self._output_dir)
        json_path = os.path.join(self._output_dir, "results.json")
        with PathManager.open(json_path, "w") as f:
            json.dump(predictions, f)  # written in chunks: a full val run is large
        # The server takes a zip holding results.json at its top level.
        with zipfile.ZipFile(os.path.join(self._output_dir, "results.zip"), "w", zipfile.ZIP_DEFLATED) as z:
            z.write(json_path, arcname="results.json")

    def _log_metrics(self, metrics):
        summary = {k: v for k, v in metrics.items() if not k.startswith("AP-")}
        logger.info(
            f"YouTube-VIS segm results of {self._dataset_name} (percent):\n{create_small_table(summary)}"
        )
        per_category = [(k[len("AP-"):], v) for k, v in metrics.items() if k.startswith("AP-")]
        defined = [(name, value) for name, value in per_category if not math.isnan(value)]
        if defined:
            table = tabulate(defined, headers=["category", "AP"], tablefmt="pipe", floatfmt=".3f")
            logger.info(f"Per-category segm AP:\n{table}")
