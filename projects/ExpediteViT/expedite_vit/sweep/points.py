"""Measure many token-reduction settings ("points") against one baseline, on the same images.

Each point is measured as ``tools/benchmark.py`` measures its expedited model, by the same
functions: backbone FLOPs ratio (fvcore), backbone and end-to-end latency ratio (median, timed
interleaved with the baseline), agreement with the baseline's own predictions, and the task
metric when the images are a labelled dataset.

The baseline is built once, with the checkpoint; each point's model is built from the config with
the point applied and takes the baseline's parameter tensors (token reduction has no parameters),
so a point is exactly what its overrides give on the command line, whatever the method. Each
point is measured with the baseline beside it, by the benchmark's own functions (which take the
pair): timing the two interleaved keeps a slowdown of the machine out of the ratio, and the
baseline's predictions are recomputed rather than held for every image.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from detectron2.config import instantiate
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from ..benchmark.runner import (
    BenchmarkSettings,
    load_inputs,
    measure_fidelity_and_memory,
    measure_flops,
    measure_latency,
    resolve_num_images,
)
from ..runtime.inputs import backbone_inputs
from ..runtime.models import build_model, with_expedite_disabled
from .grid import DEFAULT_METHOD, METHOD, apply_point, expedite_settings, format_point, point_overrides

__all__ = ["PRIMARY_METRICS", "SPEEDUP_MEASURES", "agreement_score", "measure_points", "summarize", "sweep_points"]

logger = logging.getLogger(__name__)

# Speed-up measures a point can be ranked by: summary key and description.
SPEEDUP_MEASURES = {
    "flops": ("flops_ratio", "backbone FLOPs ratio"),
    "latency": ("latency_speedup", "backbone latency speed-up (median)"),
}
# The task metric a point is scored by: the first of these the evaluator reports.
PRIMARY_METRICS = (("panoptic_seg", "PQ"), ("bbox", "AP"), ("segm", "AP"), ("sem_seg", "mIoU"))


def _expedited_model(point_cfg: DictConfig, baseline: nn.Module, device: torch.device) -> nn.Module:
    """The point's model on the baseline's parameter tensors (shared, not copied)."""
    model = instantiate(point_cfg.model).to(device).eval()
    model.load_state_dict(baseline.state_dict(), strict=True, assign=True)
    return model


def measure_points(
    cfg: DictConfig, settings: BenchmarkSettings, points: Sequence[Mapping[str, Any]]
) -> Iterator[Dict]:
    """Measure each point against the baseline of ``cfg``; yields one result per point, in order,
    as soon as it is measured (so that a caller can keep it before the next one starts).

    Every point is applied and checked first (:func:`apply_point`, a one-line ConfigError naming
    the point), before anything is built. A result holds the point, its effective settings and
    overrides, the benchmark's ``flops``, ``latency_ms``, ``fidelity`` and ``memory`` sections,
    and their :func:`summarize` scalars.
    """
    settings = resolve_num_images(settings)
    point_cfgs = [apply_point(cfg, point) for point in points]
    return _measure(cfg, settings, points, point_cfgs)


def _measure(cfg, settings, points, point_cfgs) -> Iterator[Dict]:
    """The body of :func:`measure_points`, run as its results are asked for."""
    device = torch.device(settings.device)
    baseline = build_model(cfg, device, with_expedite_disabled(cfg.model))
    inputs, _ = load_inputs(cfg, baseline, settings)
    with torch.no_grad():
        backbone_x = backbone_inputs(baseline, inputs, settings.image_size)
    for point, point_cfg in zip(points, point_cfgs):
        models = {"baseline": baseline, "expedited": _expedited_model(point_cfg, baseline, device)}
        logger.info(f"Measuring {format_point(point)} ...")
        result = {
            "point": dict(point),
            "expedite": expedite_settings(point_cfg),
            "overrides": point_overrides(cfg, point),
            "flops": measure_flops(models, inputs, backbone_x, settings),
            "latency_ms": measure_latency(models, inputs, backbone_x, settings, device),
        }
        result["fidelity"], result["memory"] = measure_fidelity_and_memory(
            cfg, models, inputs, backbone_x, settings, device
        )
        result["summary"] = summarize(result)
        yield result


def agreement_score(agreement: Mapping) -> Optional[float]:
    """One number in [0, 1] for how well a point's predictions agree with the baseline's: the
    mean, over the model's outputs, of

    - detections: panoptic quality against the baseline's detections taken as ground truth,
      2 * (sum of matched IoUs) / (baseline + expedited detections), which counts missed and
      extra detections and how well matched ones overlap;
    - semantic and panoptic maps: the share of pixels labelled as the baseline labels them.

    None when nothing can be compared (no detections on either side, no outputs).
    """
    scores = []
    detections = agreement.get("instances")
    if detections and detections["baseline_detections"] + detections["expedited_detections"]:
        matched_iou = detections["matched"] * (detections["mean_iou"] or 0.0)
        scores.append(2.0 * matched_iou / (detections["baseline_detections"] + detections["expedited_detections"]))
    for output in ("sem_seg", "panoptic_seg"):
        if output in agreement and agreement[output]["pixel_agreement"] is not None:
            scores.append(agreement[output]["pixel_agreement"])
    return sum(scores) / len(scores) if scores else None


def _finite_or_none(value) -> Optional[float]:
    """NaN (a metric without ground truth) as None, as a cached point holds it after JSON."""
    return value if value is not None and math.isfinite(value) else None


def _primary_metric(task_metric: Optional[Mapping]) -> Tuple[Optional[str], Optional[float], Optional[float]]:
    """(name, point's value, baseline's value) of the first of ``PRIMARY_METRICS`` reported."""
    if not task_metric:
        return None, None, None
    for task, metric in PRIMARY_METRICS:
        value = _finite_or_none(task_metric["expedited"].get(task, {}).get(metric))
        if value is not None:
            return f"{task} {metric}", value, _finite_or_none(task_metric["baseline"][task].get(metric))
    return None, None, None


def summarize(result: Mapping) -> Dict:
    """The scalars a sweep ranks points by: speed-ups, agreement, and the task metric."""
    first_node = next(iter(result["expedite"].values()))
    metric_name, metric, baseline_metric = _primary_metric(result["fidelity"]["task_metric"])
    speedup = result["latency_ms"]["speedup"]
    return {
        "method": first_node.get(METHOD) or DEFAULT_METHOD,
        "flops_ratio": result["flops"]["ratio"]["backbone"],
        "latency_speedup": speedup["backbone"],
        "e2e_latency_speedup": speedup.get("model"),
        "agreement": agreement_score(result["fidelity"]["agreement"]),
        "metric_name": metric_name,
        "metric": metric,
        "baseline_metric": baseline_metric,
    }


def sweep_points(
    cfg: DictConfig,
    settings: BenchmarkSettings,
    points: Sequence[Mapping[str, Any]],
    cache,
    on_point: Optional[Callable[[Dict], None]] = None,
) -> List[Dict]:
    """The results of all ``points``, those in ``cache`` (a :class:`~.cache.PointCache`) reused
    and the others measured, each saved to the cache as soon as it is measured, then passed to
    ``on_point``. A progress bar shows the points left and the time they will take. Each result
    says whether it has the config's own settings (``preset``)."""
    keys = [cache.key(apply_point(cfg, point)) for point in points]
    preset_key = cache.key(apply_point(cfg, {}))
    results = {key: cache.load(key) for key in keys}
    todo = [(key, point) for key, point in zip(keys, points) if results[key] is None]
    if len(todo) < len(points):
        logger.info(f"Reusing {len(points) - len(todo)} of {len(points)} points measured before ({cache.folder})")
    if todo:
        measured = measure_points(cfg, settings, [point for _, point in todo])
        with tqdm(total=len(todo), desc="sweep points", unit="point") as progress:
            for (key, _), result in zip(todo, measured):
                result["preset"] = key == preset_key
                cache.save(key, result)
                results[key] = result
                progress.update()
                if on_point is not None:
                    on_point(result)
    return [results[key] for key in keys]
