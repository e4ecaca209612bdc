"""Pictures of video instance segmentation: the tracks of a video model, frame by frame.

A video model (Mask2Former-VIS) predicts tracks: one query followed over all frames of the clip,
with one class, one score and a (T, H, W) mask. Each track keeps one colour on every frame where it
has a mask, and carries its class name and score there; drawing is detectron2's Visualizer. When
two models' tracks of one clip are drawn side by side (baseline | expedited), a track of the second
takes the colour of the first's track it overlaps most, so one object has one colour in both.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
from detectron2.data import Metadata
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer

__all__ = [
    "draw_track_frame",
    "draw_video_tracks",
    "matched_track_colours",
    "select_tracks",
    "track_captions",
    "track_colours",
    "tube_iou",
]


def select_tracks(prediction: Dict, confidence_threshold: float) -> Dict[str, list]:
    """The tracks of a video model's output (``pred_scores``, ``pred_labels``, ``pred_masks``)
    scoring at least ``confidence_threshold``, best first: {"scores", "labels", "masks"}, masks
    as (T, H, W) bool numpy arrays."""
    keep = [i for i, score in enumerate(prediction["pred_scores"]) if score >= confidence_threshold]
    keep.sort(key=lambda i: -prediction["pred_scores"][i])
    return {
        "scores": [float(prediction["pred_scores"][i]) for i in keep],
        "labels": [int(prediction["pred_labels"][i]) for i in keep],
        "masks": [np.asarray(prediction["pred_masks"][i], dtype=bool) for i in keep],
    }


def track_colours(num_tracks: int) -> List[np.ndarray]:
    """One RGB colour (floats in [0, 1]) per track of a video, by rank: track i always gets the
    i-th colour of detectron2's palette (cycled), so it is the same on every frame, and tracks
    of one video differ while there are fewer than the palette's 74."""
    palette = colormap(rgb=True, maximum=1)
    return [palette[i % len(palette)] for i in range(num_tracks)]


def tube_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (T, H, W) masks, summed over all frames."""
    intersection = int(np.logical_and(a, b).sum())
    union = int(a.sum()) + int(b.sum()) - intersection
    return intersection / union if union else 0.0


def matched_track_colours(
    reference_masks: Sequence[np.ndarray],
    reference_colours: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    min_iou: float = 0.5,
) -> List[np.ndarray]:
    """Colours for the tracks ``masks``: each takes the colour of the reference track it overlaps
    (tube IoU at least ``min_iou``, best pairs first, each reference track once); the others take
    palette colours that no reference track has, in order."""
    pairs = sorted(
        ((tube_iou(r, m), i, j) for i, r in enumerate(reference_masks) for j, m in enumerate(masks)),
        key=lambda pair: (-pair[0], pair[1], pair[2]),
    )
    colours: List = [None] * len(masks)
    used = set()
    for iou, i, j in pairs:
        if iou >= min_iou and i not in used and colours[j] is None:
            colours[j] = reference_colours[i]
            used.add(i)
    taken = {tuple(c) for c in reference_colours}
    palette = colormap(rgb=True, maximum=1)
    spare = [c for c in palette if tuple(c) not in taken] or list(palette)
    unmatched = [j for j, c in enumerate(colours) if c is None]
    for n, j in enumerate(unmatched):
        colours[j] = spare[n % len(spare)]
    return colours


def track_captions(tracks: Dict[str, list], metadata: Metadata) -> List[str]:
    """"<class> <score>%" for each track, as detectron2 captions instances."""
    names = metadata.get("thing_classes", None)
    captions = []
    for label, score in zip(tracks["labels"], tracks["scores"]):
        name = names[label] if names and 0 <= label < len(names) else str(label)
        captions.append(f"{name} {score * 100:.0f}%")
    return captions


def draw_track_frame(
    frame_rgb: np.ndarray,
    masks: Sequence[np.ndarray],
    captions: Sequence[str],
    colours: Sequence[np.ndarray],
    metadata: Metadata,
) -> np.ndarray:
    """One frame with the tracks that have a mask in it: ``masks`` are their (H, W) masks in this
    frame, ``captions`` and ``colours`` theirs. Returns an RGB image of the frame's size."""
    visualizer = Visualizer(frame_rgb, metadata)
    present = [i for i, mask in enumerate(masks) if mask.any()]
    if not present:
        return visualizer.output.get_image()
    drawn = visualizer.overlay_instances(
        masks=[masks[i] for i in present],
        labels=[captions[i] for i in present],
        assigned_colors=[colours[i] for i in present],
    )
    return drawn.get_image()


def draw_video_tracks(
    frames_rgb: Sequence[np.ndarray],
    tracks: Dict[str, list],
    metadata: Metadata,
    colours: Optional[Sequence[np.ndarray]] = None,
) -> Iterator[np.ndarray]:
    """Each frame of a clip with the ``tracks`` (:func:`select_tracks`; masks at the frames' size)
    that have a mask in it, one colour per track: ``colours``, by default :func:`track_colours`."""
    for masks in tracks["masks"]:
        if masks.shape != (len(frames_rgb), *frames_rgb[0].shape[:2]):
            raise ValueError(
                f"track masks of shape {masks.shape} do not fit {len(frames_rgb)} frames of "
                f"{frames_rgb[0].shape[0]}x{frames_rgb[0].shape[1]}"
            )
    captions = track_captions(tracks, metadata)
    colours = track_colours(len(captions)) if colours is None else colours
    for t, frame in enumerate(frames_rgb):
        yield draw_track_frame(frame, [m[t] for m in tracks["masks"]], captions, colours, metadata)
