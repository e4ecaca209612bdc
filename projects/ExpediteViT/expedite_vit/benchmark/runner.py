"""One benchmark run: the baseline and the expedited model of one config, on the same images.

Measures FLOPs (fvcore), latency (median and p90, after warm-up), the time share of the
token-reduction layers in the backbone, peak memory, and fidelity (agreement with the
baseline's predictions; the task metric when the images are a labelled dataset), then checks the
speed targets. Returns a JSON-ready dict; :mod:`.report` turns it into a table and markdown.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from detectron2.data import DatasetCatalog
from detectron2.export import TracingAdapter
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .fidelity import FeatureSimilarity, PredictionAgreement, TaskMetric
from .flops import count_flops
from ..runtime.inputs import (
    available_images,
    backbone_inputs,
    check_num_images,
    dataset_inputs,
    expand_image_paths,
    file_inputs,
    has_annotations,
    model_input_format,
    photograph_inputs,
    inference_augmentations,
)
from ..runtime.models import (
    TOKEN_REDUCTION_LAYERS,
    OutputRecorder,
    backbone_modules,
    build_model_pair,
    checkpoint_path,
    expedite_nodes,
    token_reduction_modules,
)
from .report import environment_info
from .timing import PeakMemory, SubmoduleTimer, latency_summary, time_interleaved

__all__ = [
    "AMP_DTYPES",
    "BenchmarkSettings",
    "check_targets",
    "flops_ratios",
    "gflops_summary",
    "inference_context",
    "latency_result",
    "model_description",
    "resolve_num_images",
    "run_benchmark",
]

logger = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}
TOKEN_REDUCTION_KINDS = tuple(TOKEN_REDUCTION_LAYERS)
# Targets: the backbone's measured speed-up should realise most of its FLOPs reduction, and
# the method's own operations (reducing + restoring) should cost little of the backbone's time:
# Expedit's clustering + reconstruction 3%, the merging methods' 5% (their issue's target).
LATENCY_FLOPS_FRACTION = 0.9
MAX_TOKEN_REDUCTION_SHARE = {"expedit": 0.03, "ailurus": 0.05, "tome": 0.05, "itpn": 0.05}
GIGA = 1e9
# Images of a --dataset run when --num-images is not given (all of COCO val would take hours on CPU).
DEFAULT_DATASET_IMAGES = 5


@dataclass
class BenchmarkSettings:
    """What to measure and how. ``inputs`` (image files or globs) and ``dataset`` (a registered
    dataset name) are exclusive; with neither, bundled photographs are used. ``num_images`` None
    means every input file or photograph, or the first ``DEFAULT_DATASET_IMAGES`` of a dataset;
    asking for more images than there are is an error (see :func:`resolve_num_images`)."""

    device: str = "cpu"
    num_images: Optional[int] = None
    warmup: int = 2
    iters: int = 10
    amp: str = "none"
    image_size: Optional[int] = None
    backbone_only: bool = False
    dataset: Optional[str] = None
    inputs: Sequence[str] = field(default_factory=list)
    score_threshold: float = 0.5
    iou_threshold: float = 0.5
    flops_images: int = 1
    flops_only: bool = False

    def __post_init__(self):
        checks = [
            (self.num_images is None or self.num_images >= 1, "num_images", "at least 1"),
            (self.warmup >= 0, "warmup", "at least 0"),
            (self.iters >= 1, "iters", "at least 1"),
            (self.flops_images >= 1, "flops_images", "at least 1"),
            (self.amp in AMP_DTYPES, "amp", f"one of {sorted(AMP_DTYPES)}"),
            (self.image_size is None or self.image_size >= 32, "image_size", "at least 32 pixels"),
            (0.0 <= self.score_threshold <= 1.0, "score_threshold", "in [0, 1]"),
            (0.0 < self.iou_threshold <= 1.0, "iou_threshold", "in (0, 1]"),
        ]
        for ok, name, need in checks:
            if not ok:
                raise ValueError(f"benchmark setting {name} must be {need}, got {getattr(self, name)!r}")
        if self.dataset and self.inputs:
            raise ValueError("give either image inputs or a dataset, not both")
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but CUDA is not available on this machine")


@contextlib.contextmanager
def inference_context(device: torch.device, amp: str) -> Iterator[None]:
    """No gradients, and autocast to the ``amp`` dtype unless it is "none"."""
    dtype = AMP_DTYPES[amp]
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        yield


def resolve_num_images(settings: BenchmarkSettings) -> BenchmarkSettings:
    """``settings`` with ``num_images`` set to the number of images the run will take.

    Raises ImageInputError (naming both numbers) when more images are asked for than the
    dataset, the input files or the bundled photographs hold, rather than measuring fewer than
    asked; also for an unregistered dataset or an input pattern matching nothing. Registered
    datasets must be loaded (by the config) first.
    """
    available, source = available_images(settings.dataset, settings.inputs)
    if settings.num_images is None:
        count = min(available, DEFAULT_DATASET_IMAGES) if settings.dataset else available
    else:
        check_num_images(settings.num_images, available, source)
        count = settings.num_images
    return dataclasses.replace(settings, num_images=count)


def load_inputs(cfg: DictConfig, model: nn.Module, settings: BenchmarkSettings) -> Tuple[List[Dict], Dict]:
    """Model inputs (as a predictor or the test loader makes them) and a description of them."""
    if settings.dataset:
        inputs = dataset_inputs(cfg, settings.dataset, settings.num_images)
        info = {"source": "dataset", "dataset": settings.dataset}
    else:
        image_format = model_input_format(model, cfg)
        augmentations = inference_augmentations(cfg)
        if settings.inputs:
            paths = expand_image_paths(settings.inputs)
            check_num_images(settings.num_images, len(paths), "--input")
            inputs = file_inputs(paths[: settings.num_images], image_format, augmentations)
            info = {"source": "files"}
        else:
            inputs = photograph_inputs(settings.num_images, image_format, augmentations)
            info = {"source": "skimage.data photographs"}
    info["files"] = [x.get("file_name") for x in inputs]
    info["num_images"] = len(inputs)
    info["model_input_sizes"] = [list(x["image"].shape[-2:]) for x in inputs]
    return inputs, info


def _backbone_flops(model: nn.Module, backbone_x: torch.Tensor) -> Dict[str, float]:
    """FLOPs of the backbone (and pyramid), with the token-reduction layers' own apart."""
    flops = {}
    for name, module in backbone_modules(model).items():
        layers = {kind: list(token_reduction_modules(module, kind)) for kind in TOKEN_REDUCTION_KINDS}
        counted = count_flops(module, backbone_x, submodules=[n for names in layers.values() for n in names])
        flops[name] = counted["total"]
        if name == "backbone":
            for kind, names in layers.items():
                flops[kind] = sum(counted.get(n, 0.0) for n in names)
    return flops


def _model_flops(model: nn.Module, model_input: Dict) -> float:
    # TracingAdapter flattens detectron2's list-of-dict inputs and Instances outputs into
    # tensors, which fvcore's jit tracing needs.
    adapter = TracingAdapter(model, [model_input], allow_non_tensor=True)
    return count_flops(adapter, *adapter.flattened_inputs)["total"]


def measure_flops(
    models: Mapping[str, nn.Module],
    inputs: Sequence[Dict],
    backbone_x: Sequence[torch.Tensor],
    settings: BenchmarkSettings,
) -> Dict:
    """GFLOPs per model (mean over the first ``settings.flops_images`` images) and their ratios."""
    count = min(settings.flops_images, len(inputs))
    result = {"unit": "GFLOPs (fvcore: one fused multiply-add counts as one flop)", "images": count}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit tracer warnings about Python control flow
        for name, model in models.items():
            totals = defaultdict(float)
            for index in range(count):
                for key, value in _backbone_flops(model, backbone_x[index]).items():
                    totals[key] += value
                if not settings.backbone_only:
                    totals["model"] += _model_flops(model, inputs[index])
            result[name] = gflops_summary(totals, count)
    result["ratio"] = flops_ratios(result)
    return result


def gflops_summary(totals: Mapping[str, float], count: int) -> Dict[str, float]:
    """Summed FLOPs over ``count`` inputs -> mean GFLOPs, with the token-reduction layers' total
    and their share of the backbone's."""
    gflops = {key: value / count / GIGA for key, value in totals.items()}
    gflops["token_reduction"] = sum(gflops.get(kind, 0.0) for kind in TOKEN_REDUCTION_KINDS)
    gflops["token_reduction_share"] = gflops["token_reduction"] / gflops["backbone"]
    return gflops


def flops_ratios(result: Mapping) -> Dict[str, float]:
    """baseline / expedited of every counted part."""
    parts = [p for p in ("backbone", "backbone_with_pyramid", "model") if p in result["baseline"]]
    return {p: result["baseline"][p] / result["expedited"][p] for p in parts}


def _calls(
    models: Mapping[str, nn.Module],
    inputs: Sequence[Dict],
    backbone_x: Sequence[torch.Tensor],
    backbone_only: bool,
) -> Dict[Tuple[str, str], Callable[[int], object]]:
    """(model name, part) -> a call on input ``i``: the backbone, and unless ``backbone_only``
    the whole model (preprocessing and postprocessing included, as a user sees it)."""
    calls = {}
    for name, model in models.items():
        backbone = backbone_modules(model)["backbone"]
        calls[(name, "backbone")] = lambda i, backbone=backbone: backbone(backbone_x[i])
        if not backbone_only:
            calls[(name, "model")] = lambda i, model=model: model([inputs[i]])
    return calls


def measure_latency(
    models: Mapping[str, nn.Module],
    inputs: Sequence[Dict],
    backbone_x: Sequence[torch.Tensor],
    settings: BenchmarkSettings,
    device: torch.device,
) -> Dict:
    """Median / p90 latency of the backbone and the whole model, and the speed-ups."""
    calls = _calls(models, inputs, backbone_x, settings.backbone_only)
    with inference_context(device, settings.amp):
        times = time_interleaved(calls, len(inputs), settings.warmup, settings.iters, device)
    return latency_result(times, {"warmup": settings.warmup, "batch_size": 1})


def latency_result(times: Mapping[Tuple[str, str], Sequence[float]], info: Mapping) -> Dict:
    """{model: {part: latency summary}}, the speed-up of each part, and ``info``, from the
    seconds of each (model name, part)."""
    result = dict(info)
    for (name, part), seconds in times.items():
        result.setdefault(name, {})[part] = latency_summary(seconds)
    result["speedup"] = {
        part: result["baseline"][part]["median_ms"] / result["expedited"][part]["median_ms"]
        for part in result["baseline"]
    }
    return result


def measure_token_reduction_time(
    model: nn.Module, backbone_x: Sequence[torch.Tensor], settings: BenchmarkSettings, device: torch.device
) -> Dict:
    """Time in the token-reduction layers (reducing and restoring), per backbone forward and as a share of it,
    from a separate pass of ``settings.iters`` forwards timed by synchronising hooks."""
    backbone = backbone_modules(model)["backbone"]
    modules = {"backbone": backbone}
    for kind in TOKEN_REDUCTION_KINDS:
        modules.update({f"{kind}:{name}": m for name, m in token_reduction_modules(backbone, kind).items()})
    with inference_context(device, settings.amp), SubmoduleTimer(modules, device) as timer:
        for iteration in range(settings.iters):
            backbone(backbone_x[iteration % len(backbone_x)])
    per_forward_ms = {kind: 0.0 for kind in TOKEN_REDUCTION_KINDS}
    for name, seconds in timer.seconds.items():
        kind = name.split(":")[0]
        if kind in per_forward_ms:
            per_forward_ms[kind] += seconds * 1000.0 / settings.iters
    backbone_ms = timer.seconds["backbone"] * 1000.0 / settings.iters
    reduction_ms = sum(per_forward_ms.values())
    return {
        "method": "forward hooks with synchronisation, in a pass of its own",
        "iters": settings.iters,
        "backbone_ms": backbone_ms,
        **{f"{kind}_ms": ms for kind, ms in per_forward_ms.items()},
        "token_reduction_ms": reduction_ms,
        "share": reduction_ms / backbone_ms,
    }


def _task_metric(
    cfg: DictConfig, settings: BenchmarkSettings, inputs: Sequence[Dict], output_dir: str
) -> Tuple[Optional[TaskMetric], Optional[str]]:
    """(the evaluator of a labelled ``--dataset``, None) or (None, why there is no task metric):
    images from files or photographs, unlabelled images, or no predictions (backbone only)."""
    if settings.backbone_only:
        return None, "backbone only: no predictions to score"
    if not settings.dataset:
        return None, "the images are not a labelled --dataset"
    if not has_annotations(DatasetCatalog.get(settings.dataset)[: len(inputs)]):
        reason = f"the {len(inputs)} images run of {settings.dataset!r} have no labels"
        logger.warning(f"{reason}: the task metric is skipped")
        return None, reason
    return TaskMetric(cfg, settings.dataset, [x["file_name"] for x in inputs], output_dir), None


def _forward_each(
    models: Mapping[str, nn.Module],
    model_input: Dict,
    backbone_x: torch.Tensor,
    memory: Mapping[str, PeakMemory],
    backbone_only: bool,
) -> Dict[str, object]:
    """Each model's output for one image (its backbone's with ``backbone_only``), memory measured."""
    outputs = {}
    for name, model in models.items():
        with memory[name].measure():
            if backbone_only:
                outputs[name] = backbone_modules(model)["backbone"](backbone_x)
            else:
                outputs[name] = model([model_input])[0]
    return outputs


def _memory_summary(memory: Mapping[str, PeakMemory], backbone_only: bool) -> Dict:
    peak = {name: meter.peak_mib for name, meter in memory.items()}
    return {
        "method": memory["baseline"].method,
        "scope": "backbone forward" if backbone_only else "whole-model forward",
        "baseline_mib": peak["baseline"],
        "expedited_mib": peak["expedited"],
        # No ratio of a figure that is zero or was not measured.
        "ratio": peak["baseline"] / peak["expedited"] if peak["baseline"] and peak["expedited"] else None,
    }


def measure_fidelity_and_memory(
    cfg: DictConfig,
    models: Mapping[str, nn.Module],
    inputs: Sequence[Dict],
    backbone_x: Sequence[torch.Tensor],
    settings: BenchmarkSettings,
    device: torch.device,
) -> Tuple[Dict, Dict]:
    """One forward per model and image: agreement of predictions and backbone features, the task
    metric on labelled data, and each model's peak memory over these forwards."""
    agreement = PredictionAgreement(settings.score_threshold, settings.iou_threshold)
    similarity = {part: FeatureSimilarity() for part in backbone_modules(models["baseline"])}
    memory = {name: PeakMemory(device) for name in models}
    recorders = {name: OutputRecorder(backbone_modules(model)) for name, model in models.items()}
    with tempfile.TemporaryDirectory(prefix="expedite_benchmark_eval_") as eval_dir:
        task_metric, skipped = _task_metric(cfg, settings, inputs, eval_dir)
        with inference_context(device, settings.amp), contextlib.ExitStack() as hooks:
            for recorder in recorders.values():
                hooks.enter_context(recorder)
            for model_input, x in zip(inputs, backbone_x):
                outputs = _forward_each(models, model_input, x, memory, settings.backbone_only)
                for part, meter in similarity.items():
                    if part in recorders["baseline"].outputs:
                        meter.add(recorders["baseline"].outputs[part], recorders["expedited"].outputs[part])
                if not settings.backbone_only:
                    agreement.add(outputs["baseline"], outputs["expedited"])
                    if task_metric is not None:
                        task_metric.add(model_input, outputs)
        cosines = {part: meter.summary() for part, meter in similarity.items()}
        fidelity = {
            "agreement": agreement.summary(),
            # Parts that did not run (the pyramid with --backbone-only) have no entry.
            "feature_cosine": {part: cosine for part, cosine in cosines.items() if cosine},
            "task_metric": task_metric.summary() if task_metric is not None else None,
        }
        if skipped:
            fidelity["task_metric_skipped"] = skipped
    return fidelity, _memory_summary(memory, settings.backbone_only)


def check_targets(results: Mapping) -> Dict:
    """Pass / fail of the speed targets (reported, never raised)."""
    flops_ratio = results["flops"]["ratio"]["backbone"]
    speedup = results["latency_ms"]["speedup"]["backbone"]
    share = results["token_reduction_time"]["share"]
    required = LATENCY_FLOPS_FRACTION * flops_ratio
    methods = {node.get("method", "expedit") for node in results["model"]["expedite"].values() if node.get("enabled", True)}
    limit = max((MAX_TOKEN_REDUCTION_SHARE[m] for m in methods), default=min(MAX_TOKEN_REDUCTION_SHARE.values()))
    return {
        "latency_vs_flops": {
            "description": f"backbone latency speed-up >= {LATENCY_FLOPS_FRACTION} x backbone FLOPs ratio",
            "required": required,
            "measured": speedup,
            "passed": speedup >= required,
        },
        "token_reduction_share": {
            "description": f"token reduction's own operations <= {limit:.0%} of backbone time",
            "limit": limit,
            "measured": share,
            "passed": share <= limit,
        },
    }


def model_description(cfg: DictConfig) -> Dict:
    checkpoint = checkpoint_path(cfg)
    nodes = expedite_nodes(cfg.model)
    return {
        "checkpoint": checkpoint or None,
        "weights": "checkpoint" if checkpoint else "random (no train.init_checkpoint)",
        "expedite": {path: OmegaConf.to_container(node, resolve=True) for path, node in nodes},
    }


def results_header(cfg: DictConfig, settings, inputs_info: Dict, device: torch.device, command: str) -> Dict:
    """What every benchmark's results start with: how they were made and on what."""
    return {
        "command": command,
        "environment": environment_info(device),
        "settings": asdict(settings),
        "model": model_description(cfg),
        "inputs": inputs_info,
    }


def run_benchmark(cfg: DictConfig, settings: BenchmarkSettings, command: str = "") -> Dict:
    """Build both models from ``cfg`` and measure them; see the module docstring."""
    settings = resolve_num_images(settings)  # refuses too few images before anything is built
    device = torch.device(settings.device)
    baseline, expedited = build_model_pair(cfg, device)
    models = {"baseline": baseline, "expedited": expedited}
    inputs, inputs_info = load_inputs(cfg, baseline, settings)
    with torch.no_grad():
        backbone_x = backbone_inputs(baseline, inputs, settings.image_size)
    inputs_info["backbone_input_sizes"] = sorted({tuple(x.shape[-2:]) for x in backbone_x})

    results = results_header(cfg, settings, inputs_info, device, command)
    logger.info("Counting FLOPs ...")
    results["flops"] = measure_flops(models, inputs, backbone_x, settings)
    if settings.flops_only:
        return results
    logger.info(f"Timing ({settings.warmup} warm-up + {settings.iters} iterations per model) ...")
    results["latency_ms"] = measure_latency(models, inputs, backbone_x, settings, device)
    results["token_reduction_time"] = measure_token_reduction_time(expedited, backbone_x, settings, device)
    logger.info("Comparing predictions and measuring memory ...")
    results["fidelity"], results["memory"] = measure_fidelity_and_memory(
        cfg, models, inputs, backbone_x, settings, device
    )
    results["targets"] = check_targets(results)
    return results
