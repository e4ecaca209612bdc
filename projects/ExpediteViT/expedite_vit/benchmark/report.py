"""Benchmark results as a terminal table, a JSON file and a markdown section.

Files are never replaced by accident: an existing output is an error unless the caller says to
overwrite it (or, for markdown, to append to it), and this is checked before any measuring.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
from typing import Dict, List, Mapping, Optional

import detectron2
import torch
from tabulate import tabulate

__all__ = [
    "check_output_path",
    "environment_info",
    "format_table",
    "markdown_section",
    "result_rows",
    "write_json",
    "write_markdown",
]

HEADERS = ["metric", "baseline", "expedited", "baseline / expedited"]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info(device: torch.device) -> Dict:
    """What the numbers depend on besides the model: hardware, versions, threads, date."""
    return {
        "device": str(device),
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "detectron2": detectron2.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def check_output_path(path: Optional[str], overwrite: bool, append: bool = False) -> None:
    """Raise FileExistsError for an existing ``path`` unless replacing or appending is allowed,
    and NotADirectoryError / PermissionError when it could not be written."""
    if not path:
        return
    if os.path.isdir(path):
        raise IsADirectoryError(f"output {path!r} is a folder; give a file name")
    if os.path.exists(path) and not (overwrite or append):
        raise FileExistsError(f"output {path!r} exists; pass --overwrite to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"folder {folder!r} of output {path!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"folder {folder!r} of output {path!r} is not writable")


def _json_ready(value):
    """NaN and infinities (e.g. AP of a class without ground truth) become null: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def write_json(results: Mapping, path: str) -> None:
    with open(path, "w") as f:
        json.dump(_json_ready(results), f, indent=2)
        f.write("\n")


NOT_AVAILABLE = "n/a"


def _fmt(value, spec: str, suffix: str = "") -> str:
    """``value`` formatted, or "n/a" when it was not measured (None) or is undefined (NaN, e.g.
    the AP of images without labels): never "nan" in a table."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return NOT_AVAILABLE
    return f"{value:{spec}}{suffix}"


def _ratio(value) -> str:
    return _fmt(value, ".2f", "x")


def _flops_rows(flops: Mapping) -> List[List[str]]:
    rows = []
    labels = {"backbone": "backbone", "backbone_with_pyramid": "backbone + pyramid", "model": "whole model"}
    per = f" per {flops['per']}" if flops.get("per") else ""  # video models: per clip
    for part, ratio in flops["ratio"].items():
        base, fast = _fmt(flops["baseline"][part], ".2f"), _fmt(flops["expedited"][part], ".2f")
        rows.append([f"GFLOPs{per}, {labels[part]}", base, fast, _ratio(ratio)])
    if "backbone_per_frame" in flops["baseline"]:
        base, fast = flops["baseline"]["backbone_per_frame"], flops["expedited"]["backbone_per_frame"]
        rows.append(["GFLOPs per frame, backbone", _fmt(base, ".2f"), _fmt(fast, ".2f"), _ratio(base / fast)])
    fast = flops["expedited"]
    rows.append(
        [
            "GFLOPs, token reduction's own (share of backbone)",
            "-",
            f"{fast['token_reduction']:.3f} ({fast['token_reduction_share']:.1%})",
            "",
        ]
    )
    return rows


def _latency_rows(latency: Mapping, reduction: Mapping) -> List[List[str]]:
    rows = []
    per = f" per {latency['per']}" if latency.get("per") else ""  # video models: per frame
    for part, speedup in latency["speedup"].items():
        base, fast = latency["baseline"][part], latency["expedited"][part]
        label = "backbone" if part == "backbone" else "whole model"
        rows.append(
            [
                f"latency ms{per}, {label} (median / p90)",
                f"{base['median_ms']:.1f} / {base['p90_ms']:.1f}",
                f"{fast['median_ms']:.1f} / {fast['p90_ms']:.1f}",
                _ratio(speedup),
            ]
        )
    rows.append(
        [
            "time ms, token reduction's own (share of backbone)",
            "-",
            f"{reduction['token_reduction_ms']:.2f} ({reduction['share']:.1%})",
            "",
        ]
    )
    return rows


def _fidelity_rows(fidelity: Mapping) -> List[List[str]]:
    rows = []
    tracks = fidelity["agreement"].get("tracks")
    if tracks:
        rows += [
            [f"tracks (score >= {tracks['score_threshold']:g})", str(tracks["baseline_tracks"]),
             str(tracks["expedited_tracks"]), ""],
            [f"baseline tracks recovered (tube IoU >= {tracks['iou_threshold']:g})", "",
             _fmt(tracks["recovered"], ".1%"), ""],
            ["mean tube IoU of matched tracks", "", _fmt(tracks["mean_iou"], ".3f"), ""],
        ]
    detections = fidelity["agreement"].get("instances")
    if detections:
        rows.append(
            [
                f"detections (score >= {detections['score_threshold']:g})",
                str(detections["baseline_detections"]),
                str(detections["expedited_detections"]),
                "",
            ]
        )
        rows.append(
            [
                f"baseline detections recovered (IoU >= {detections['iou_threshold']:g})",
                "",
                _fmt(detections["recovered"], ".1%"),
                "",
            ]
        )
        rows.append(["mean IoU of matched detections", "", _fmt(detections["mean_iou"], ".3f"), ""])
    for output in ("sem_seg", "panoptic_seg"):
        if output in fidelity["agreement"]:
            agreement = fidelity["agreement"][output]["pixel_agreement"]
            rows.append([f"{output} pixels agreeing with the baseline", "", _fmt(agreement, ".1%"), ""])
    for part, features in fidelity["feature_cosine"].items():
        for name, cosine in features.items():
            rows.append([f"cosine similarity of {part} features '{name}'", "", _fmt(cosine, ".4f"), ""])
    task = fidelity["task_metric"]
    if not task and fidelity.get("task_metric_skipped"):
        rows.append([f"task metric ({fidelity['task_metric_skipped']})", NOT_AVAILABLE, NOT_AVAILABLE, ""])
    if task:
        for task_name, metrics in task["baseline"].items():
            for metric in ("AP", "AP50", "AP75", "mIoU", "PQ"):
                if metric in metrics:
                    delta = task["delta"][task_name][metric]
                    expedited = _fmt(task["expedited"][task_name].get(metric), ".2f")
                    if delta is not None:
                        expedited += f" ({_fmt(delta, '+.2f')})"
                    rows.append(
                        [
                            f"{task_name} {metric} on {task['dataset']} ({task['images']} images)",
                            _fmt(metrics[metric], ".2f"),
                            expedited,
                            "",
                        ]
                    )
    return rows


def _memory_rows(memory: Mapping) -> List[List[str]]:
    rows = [
        [
            f"peak memory MiB, {memory['scope']}",
            _fmt(memory["baseline_mib"], ".1f"),
            _fmt(memory["expedited_mib"], ".1f"),
            _ratio(memory["ratio"]),
        ]
    ]
    if "rss_method" in memory:  # video models on CPU: the process's resident memory too
        rows.append(
            [
                f"peak RSS growth MiB, {memory['scope']}",
                _fmt(memory["rss_baseline_mib"], ".1f"),
                _fmt(memory["rss_expedited_mib"], ".1f"),
                _ratio(memory["rss_ratio"]),
            ]
        )
    return rows


def result_rows(results: Mapping) -> List[List[str]]:
    """Table rows of every measure the results hold (a FLOPs-only run holds FLOPs only)."""
    rows = _flops_rows(results["flops"])
    if "latency_ms" in results:
        rows += _latency_rows(results["latency_ms"], results["token_reduction_time"])
    if "memory" in results:
        rows += _memory_rows(results["memory"])
    if "fidelity" in results:
        rows += _fidelity_rows(results["fidelity"])
    return rows


def _target_lines(targets: Mapping) -> List[str]:
    lines = []
    for target in targets.values():
        verdict = "PASS" if target["passed"] else "FAIL"
        if "required" in target:
            detail = f"measured {target['measured']:.2f}x, required {target['required']:.2f}x"
        else:
            detail = f"measured {target['measured']:.1%}, limit {target['limit']:.0%}"
        lines.append(f"{verdict}: {target['description']} ({detail})")
    return lines


def format_table(results: Mapping) -> str:
    """The results as a terminal table, followed by the target checks."""
    table = tabulate(result_rows(results), headers=HEADERS, tablefmt="simple", disable_numparse=True)
    if "targets" not in results:
        return table
    return table + "\n\n" + "\n".join(_target_lines(results["targets"]))


def _inputs_line(results: Mapping) -> str:
    inputs, settings = results["inputs"], results["settings"]
    sizes = ", ".join("x".join(map(str, s)) for s in inputs["backbone_input_sizes"])
    source = inputs["source"] + (f", {inputs['dataset']}" if inputs.get("dataset") else "")
    timed = "" if "latency_ms" not in results else (
        f", {settings['warmup']} warm-up + {settings['iters']} timed iterations"
    )
    if "num_clips" in inputs:
        frames = sorted(set(inputs["frames"]))
        chunk = inputs.get("frame_chunk")
        return (
            f"- clips: {inputs['num_clips']} ({source}) of {', '.join(map(str, frames))} frames, "
            f"backbone input {sizes} per frame, frame_chunk {chunk if chunk else 'none (all frames at once)'}"
            f"{timed}"
        )
    return f"- images: {inputs['num_images']} ({source}), backbone input {sizes}, batch 1{timed}"


def markdown_section(results: Mapping, title: str) -> str:
    """A self-describing markdown section: the command, the machine, the table, the targets."""
    env, model = results["environment"], results["model"]
    settings = results["settings"]
    lines = [
        f"### {title}",
        "",
        "```bash",
        results["command"],
        "```",
        "",
        f"- date: {env['date']}",
        f"- device: {env['device_name']} ({env['device']}), torch {env['torch']}, detectron2 "
        f"{env['detectron2']}, {env['threads']} threads, amp: {settings['amp']}",
        f"- weights: {model['checkpoint'] or model['weights']}",
        _inputs_line(results),
    ]
    if "memory" in results:
        memory = results["memory"]
        lines.append(f"- memory: {memory['method']}" + (f"; {memory['rss_method']}" if "rss_method" in memory else ""))
    lines += [
        "",
        tabulate(result_rows(results), headers=HEADERS, tablefmt="pipe", disable_numparse=True),
        "",
    ]
    lines += [f"- {line}" for line in _target_lines(results.get("targets", {}))]
    return "\n".join(lines) + "\n"


def write_markdown(section: str, path: str, append: bool) -> None:
    """Write ``section`` to ``path``, after what it holds when ``append``."""
    if append and os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, "a") as f:
            f.write("\n" + section)
    else:
        with open(path, "w") as f:
            f.write(section)
