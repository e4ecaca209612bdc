"""The benchmark of a video model (Mask2Former-VIS), per clip: the baseline and the expedited
model of one config, on the same clips.

A video model takes one clip (T frames) per call; its backbone and pixel decoder run per frame
(``frame_chunk`` frames at a time), its video decoder over the whole clip. Measured, as
:mod:`.runner` measures images, and reported in the same JSON / table / markdown form:

* backbone FLOPs per clip (fvcore): the backbone counted on one frame of each counted clip, times
  the clip's frames (exact: every frame is padded alike and the backbone works per frame), and,
  unless ``backbone_only``, the whole model per clip up to the decoder's outputs (frame features
  and video decoder, counted on the whole clip; inference's top-k and mask resizing are not);
* latency in ms per frame (median and p90 of per-clip times divided by the clip's frames) of the
  backbone (over the clip in the model's frame chunks) and of the whole model;
* the token-reduction layers' share of backbone time;
* peak memory per clip forward: tensor memory (CUDA ``max_memory_allocated``; CPU: torch.profiler
  allocations) and on CPU the resident set size's growth (:class:`.timing.PeakRSS`), each model
  measured alone;
* agreement: the expedited model's tracks matched to the baseline's by tube IoU.

Clips come from a registered video dataset (YouTube-VIS format: ``expedite_videos_val``,
``ytvis_2019_val``, ...; its first ``frames`` frames through the config's test mapper) or, when
none is given, from the built-in video generator (:func:`expedite_vit.data.synthetic_videos.
render_video`), resized by the config's test-time resize or to ``frame_size``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import transforms as T
from detectron2.utils.registry import locate
from omegaconf import DictConfig
from torch import nn

from ..data.synthetic_videos import DEFAULT_FRAME_SIZE, render_video
from ..modeling.mask2former_video import VideoMaskFormer
from ..runtime.inputs import ImageInputError, _registered_dataset
from ..runtime.models import OutputRecorder, build_model_pair
from .fidelity import FeatureSimilarity, PredictionAgreement
from .flops import count_flops
from .runner import (
    AMP_DTYPES,
    _backbone_flops,
    check_targets,
    flops_ratios,
    gflops_summary,
    inference_context,
    latency_result,
    measure_token_reduction_time,
    results_header,
)
from .timing import PeakMemory, PeakRSS, time_interleaved

__all__ = [
    "VideoBenchmarkSettings",
    "clip_backbone_input",
    "is_video_model",
    "parse_frame_size",
    "run_video_benchmark",
]

logger = logging.getLogger(__name__)

# Clips of a run when --num-clips is not given, and frames per generated clip without --frames
# (the built-in validation videos' length).
DEFAULT_CLIPS = 2
DEFAULT_FRAMES = 6
# Generated clip i draws its randomness from np.random.default_rng([SYNTHETIC_SEED, i]).
SYNTHETIC_SEED = 0
_MIN_RENDERED_FRAMES = 5  # render_video's minimum; shorter clips are the first frames of one


@dataclass
class VideoBenchmarkSettings:
    """What to measure on a video model and how.

    ``num_clips`` None: :data:`DEFAULT_CLIPS` (fewer when a dataset has fewer videos).
    ``frames`` None: whole videos of a dataset, :data:`DEFAULT_FRAMES` for generated clips.
    ``frame_size`` (height, width): generated frames are resized to it and given to the model
    as they are (no test-time resize), as Expedit's video benchmark feeds a clip tensor.
    ``flops_only``: count FLOPs, skip timing, memory and agreement.
    """

    device: str = "cpu"
    num_clips: Optional[int] = None
    frames: Optional[int] = None
    frame_size: Optional[Tuple[int, int]] = None
    warmup: int = 2
    iters: int = 10
    amp: str = "none"
    backbone_only: bool = False
    flops_only: bool = False
    dataset: Optional[str] = None
    score_threshold: float = 0.0
    iou_threshold: float = 0.5
    flops_clips: int = 1

    def __post_init__(self):
        if self.frame_size is not None:
            self.frame_size = tuple(int(side) for side in self.frame_size)
        checks = [
            (self.num_clips is None or self.num_clips >= 1, "num_clips (--num-clips)", "at least 1"),
            (self.frames is None or self.frames >= 1, "frames (--frames)", "at least 1"),
            (self.frame_size is None or (len(self.frame_size) == 2 and min(self.frame_size) >= 32),
             "frame_size (--frame-size)", "HxW, both at least 32 pixels"),
            (self.warmup >= 0, "warmup", "at least 0"),
            (self.iters >= 1, "iters", "at least 1"),
            (self.flops_clips >= 1, "flops_clips (--flops-images)", "at least 1"),
            (self.amp in AMP_DTYPES, "amp", f"one of {sorted(AMP_DTYPES)}"),
            (0.0 <= self.score_threshold <= 1.0, "score_threshold", "in [0, 1]"),
            (0.0 < self.iou_threshold <= 1.0, "iou_threshold", "in (0, 1]"),
        ]
        for ok, name, need in checks:
            if not ok:
                value = getattr(self, name.split(" ")[0])
                raise ValueError(f"benchmark setting {name} must be {need}, got {value!r}")
        if self.dataset and self.frame_size:
            raise ValueError("--frame-size is for generated clips; a --dataset's frames keep the config's test resize")
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but CUDA is not available on this machine")


def parse_frame_size(text: str) -> Tuple[int, int]:
    """"480x832" -> (480, 832) (height x width)."""
    try:
        height, width = (int(side) for side in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--frame-size must be HxW in pixels, e.g. 480x832, got {text!r}") from None
    return height, width


def is_video_model(cfg: DictConfig) -> bool:
    """Whether the config's model is a video model (takes one clip per call)."""
    target = cfg.model.get("_target_") if isinstance(cfg.model, DictConfig) else None
    if isinstance(target, str):
        target = locate(target)
    return isinstance(target, type) and issubclass(target, VideoMaskFormer)


# ---------------------------------------------------------------------------------------------
# Clips


def _frames_to_tensors(frames: Sequence[np.ndarray], augmentations: T.AugmentationList) -> List[torch.Tensor]:
    """HWC uint8 frames -> (C, H, W) uint8 tensors, one resize decision for the clip (as the mapper)."""
    aug_input = T.AugInput(frames[0])
    transforms = augmentations(aug_input)
    images = [aug_input.image] + [transforms.apply_image(frame) for frame in frames[1:]]
    return [torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))) for image in images]


def generated_clips(cfg: DictConfig, count: int, frames: int, frame_size: Optional[Tuple[int, int]]) -> List[Dict]:
    """``count`` clips of ``frames`` frames from the built-in video generator, as model inputs."""
    mapper = cfg.dataloader.test.mapper
    image_format = mapper.get("image_format", "RGB")
    if frame_size is None:
        augmentations = T.AugmentationList(instantiate(mapper.augmentations))
    else:
        augmentations = T.AugmentationList([T.Resize(frame_size)])
    clips = []
    for index in range(count):
        video = render_video(np.random.default_rng([SYNTHETIC_SEED, index]), max(frames, _MIN_RENDERED_FRAMES))
        rgb = video.frames[:frames]
        if image_format == "BGR":
            rgb = [frame[..., ::-1] for frame in rgb]
        # Outputs at the rendered size, or at --frame-size (then the clip's only size).
        height, width = frame_size or DEFAULT_FRAME_SIZE
        clips.append({
            "image": _frames_to_tensors(rgb, augmentations),
            "height": height,
            "width": width,
            "length": frames,
            "video_id": index + 1,
        })
    return clips


def dataset_clips(cfg: DictConfig, dataset_name: str, count: int, frames: Optional[int]) -> List[Dict]:
    """The first ``frames`` frames (all without it) of the first ``count`` videos of a registered
    video dataset, through the config's test mapper."""
    videos = _registered_dataset(dataset_name)
    if count > len(videos):
        raise ImageInputError(
            f"--num-clips {count}, but dataset {dataset_name!r} has only {len(videos)} videos; "
            f"ask for at most {len(videos)}"
        )
    if "file_names" not in videos[0]:
        raise ImageInputError(f"dataset {dataset_name!r} is not a video dataset (its dicts have no 'file_names')")
    mapper = instantiate(cfg.dataloader.test.mapper)
    clips = []
    for video in videos[:count]:
        video = dict(video)
        if frames is not None:
            if frames > video["length"]:
                raise ImageInputError(
                    f"--frames {frames}, but video {video['video_id']} of dataset {dataset_name!r} has only "
                    f"{video['length']} frames; ask for at most {video['length']}"
                )
            video["file_names"] = video["file_names"][:frames]
            if "annotations" in video:
                video["annotations"] = video["annotations"][:frames]
            video["length"] = frames
        clips.append(mapper(video))
    return clips


def resolve_num_clips(settings: VideoBenchmarkSettings) -> VideoBenchmarkSettings:
    """``settings`` with ``num_clips`` set: more clips than a dataset has videos is an error."""
    if settings.dataset:
        available = len(_registered_dataset(settings.dataset))
        count = settings.num_clips if settings.num_clips is not None else min(DEFAULT_CLIPS, available)
    else:
        count = settings.num_clips if settings.num_clips is not None else DEFAULT_CLIPS
    if settings.flops_only:
        count = min(count, settings.flops_clips)  # nothing else runs: no need to make more
    return dataclasses.replace(settings, num_clips=count)


def load_clips(cfg: DictConfig, settings: VideoBenchmarkSettings) -> Tuple[List[Dict], Dict]:
    if settings.dataset:
        clips = dataset_clips(cfg, settings.dataset, settings.num_clips, settings.frames)
        info = {"source": "dataset", "dataset": settings.dataset}
    else:
        frames = settings.frames or DEFAULT_FRAMES
        clips = generated_clips(cfg, settings.num_clips, frames, settings.frame_size)
        info = {"source": "generated clips (expedite_vit.data.synthetic_videos.render_video)"}
    info["num_clips"] = len(clips)
    info["frames"] = [len(clip["image"]) for clip in clips]
    info["model_input_sizes"] = sorted({tuple(clip["image"][0].shape[-2:]) for clip in clips})
    return clips, info


def clip_backbone_input(model: VideoMaskFormer, clip: Mapping) -> torch.Tensor:
    """(T, 3, H', W'): the clip's frames normalised and padded as the model gives them to its backbone."""
    frames = list(clip["image"])
    return model._normalized_chunk(frames, model._padded_size(frames))


def run_backbone(model: VideoMaskFormer, x: torch.Tensor) -> List:
    """The backbone over a clip tensor in the model's frame chunks, as the model runs it."""
    chunk = model.frame_chunk or len(x)
    return [model.backbone(x[start : start + chunk]) for start in range(0, len(x), chunk)]


class _ClipPredictor(nn.Module):
    """A video model from its input frames (stacked, not normalised) to the video decoder's outputs, on one
    clip tensor: what fvcore's tracer can take (no dicts of lists, no Python-side top-k)."""

    def __init__(self, model: VideoMaskFormer):
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor):
        frame_list = list(frames.unbind(0))
        padded_size = self.model._padded_size(frame_list)
        mask_features, multi_scale = self.model.frame_features(frame_list, padded_size)
        outputs = self.model.sem_seg_head.predictor(multi_scale, mask_features, num_videos=1)
        return outputs["pred_logits"], outputs["pred_masks"]


# ---------------------------------------------------------------------------------------------
# Measures


def measure_video_flops(
    models: Mapping[str, VideoMaskFormer], clips: Sequence[Dict], backbone_x: Sequence[torch.Tensor],
    settings: VideoBenchmarkSettings,
) -> Dict:
    """GFLOPs per clip (mean over the first ``settings.flops_clips`` clips) and their ratios."""
    count = min(settings.flops_clips, len(clips))
    result = {
        "unit": "GFLOPs per clip (fvcore: one fused multiply-add counts as one flop)",
        "per": "clip",
        "clips": count,
        "frames": [len(x) for x in backbone_x[:count]],
        "backbone_method": "one frame counted, times the clip's frames (the backbone runs per frame)",
    }
    if not settings.backbone_only:
        result["model_scope"] = (
            "frame features and video decoder over the whole clip (inference's top-k and mask resizing not counted)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit tracer warnings about Python control flow
        for name, model in models.items():
            totals = defaultdict(float)
            for index in range(count):
                x = backbone_x[index]
                for key, value in _backbone_flops(model, x[:1]).items():
                    totals[key] += value * len(x)
                if not settings.backbone_only:
                    frames = torch.stack(list(clips[index]["image"])).to(x.device, torch.float32)
                    totals["model"] += count_flops(_ClipPredictor(model), frames)["total"]
            gflops = gflops_summary(totals, count)
            gflops["backbone_per_frame"] = gflops["backbone"] * count / sum(result["frames"])
            result[name] = gflops
    result["ratio"] = flops_ratios(result)
    return result


def measure_video_latency(
    models: Mapping[str, VideoMaskFormer], clips: Sequence[Dict], backbone_x: Sequence[torch.Tensor],
    settings: VideoBenchmarkSettings, device: torch.device,
) -> Dict:
    """Median / p90 ms per frame of the backbone and the whole model, and the speed-ups."""
    calls = {}
    for name, model in models.items():
        calls[(name, "backbone")] = lambda i, model=model: run_backbone(model, backbone_x[i])
        if not settings.backbone_only:
            calls[(name, "model")] = lambda i, model=model: model([clips[i]])
    with inference_context(device, settings.amp):
        times = time_interleaved(calls, len(clips), settings.warmup, settings.iters, device)
    # time_interleaved takes input ``iteration % len(clips)`` at each iteration.
    per_frame = {
        key: [s / len(clips[i % len(clips)]["image"]) for i, s in enumerate(seconds)] for key, seconds in times.items()
    }
    return latency_result(per_frame, {"per": "frame", "warmup": settings.warmup, "batch_size": "1 clip"})


def measure_video_fidelity_and_memory(
    models: Mapping[str, VideoMaskFormer], clips: Sequence[Dict], settings: VideoBenchmarkSettings,
    device: torch.device,
) -> Tuple[Dict, Dict]:
    """One forward per model and clip: track agreement, backbone feature similarity (the last
    frame chunk), and each model's peak tensor memory; on CPU a second forward each for the
    peak RSS growth (the profiler that counts tensors would inflate the RSS)."""
    agreement = PredictionAgreement(settings.score_threshold, settings.iou_threshold)
    similarity = FeatureSimilarity()
    memory = {name: PeakMemory(device) for name in models}
    rss = {name: PeakRSS() for name in models} if device.type == "cpu" else None
    recorders = {name: OutputRecorder({"backbone": model.backbone}) for name, model in models.items()}
    with inference_context(device, settings.amp):
        for clip in clips:
            outputs = {}
            with contextlib.ExitStack() as hooks:
                for recorder in recorders.values():
                    hooks.enter_context(recorder)
                for name, model in models.items():
                    with memory[name].measure():
                        outputs[name] = model([clip])[0]
            similarity.add(recorders["baseline"].outputs["backbone"], recorders["expedited"].outputs["backbone"])
            agreement.add(outputs["baseline"], outputs["expedited"])
            del outputs
            if rss is not None:
                for name, model in models.items():
                    with rss[name].measure():
                        model([clip])
    fidelity = {
        "agreement": agreement.summary(),
        "feature_cosine": {"backbone": similarity.summary()},
        "task_metric": None,
        "task_metric_skipped": "per-clip benchmark; YouTube-VIS AP: train_net.py --eval-only",
    }
    peak = {name: meter.peak_mib for name, meter in memory.items()}
    summary = {
        "method": memory["baseline"].method,
        "scope": "whole-model forward of a clip",
        "baseline_mib": peak["baseline"],
        "expedited_mib": peak["expedited"],
        "ratio": peak["baseline"] / peak["expedited"] if peak["baseline"] and peak["expedited"] else None,
    }
    if rss is not None:
        rss_peak = {name: meter.peak_mib for name, meter in rss.items()}
        summary.update({
            "rss_method": PeakRSS.method,
            "rss_baseline_mib": rss_peak["baseline"],
            "rss_expedited_mib": rss_peak["expedited"],
            "rss_ratio": rss_peak["baseline"] / rss_peak["expedited"]
            if rss_peak["baseline"] and rss_peak["expedited"] else None,
        })
    return fidelity, summary


def run_video_benchmark(cfg: DictConfig, settings: VideoBenchmarkSettings, command: str = "") -> Dict:
    """Build both models from ``cfg`` and measure them per clip; see the module docstring."""
    settings = resolve_num_clips(settings)  # refuses too few videos before anything is built
    device = torch.device(settings.device)
    clips, inputs_info = load_clips(cfg, settings)  # a video too short is refused before building
    baseline, expedited = build_model_pair(cfg, device)
    models = {"baseline": baseline, "expedited": expedited}
    with torch.no_grad():
        backbone_x = [clip_backbone_input(baseline, clip) for clip in clips]
    inputs_info["backbone_input_sizes"] = sorted({tuple(x.shape[-2:]) for x in backbone_x})
    inputs_info["frame_chunk"] = baseline.frame_chunk

    results = results_header(cfg, settings, inputs_info, device, command)
    logger.info("Counting FLOPs ...")
    results["flops"] = measure_video_flops(models, clips, backbone_x, settings)
    if settings.flops_only:
        return results
    logger.info(f"Timing ({settings.warmup} warm-up + {settings.iters} iterations per model) ...")
    results["latency_ms"] = measure_video_latency(models, clips, backbone_x, settings, device)
    results["token_reduction_time"] = measure_token_reduction_time(expedited, backbone_x, settings, device)
    logger.info("Comparing tracks and measuring memory ...")
    results["fidelity"], results["memory"] = measure_video_fidelity_and_memory(models, clips, settings, device)
    results["targets"] = check_targets(results)
    return results
