"""Pictures of what a model predicted and of what token clustering merged.

Predictions are drawn by detectron2's Visualizer. The token-cluster picture colours every patch
of the image by the cluster it was merged into at the clustering layer: its most heavily
weighted cluster in token reconstruction (the nearest centre), with cluster borders outlined.
Clusters never cross attention windows, so window borders show up as cluster borders too.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.data import Metadata
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer

from expedite import ReducedMap, TokenSet, WindowClusterState

__all__ = [
    "PREDICTION_KINDS",
    "PredictionKindError",
    "add_caption",
    "cluster_labels",
    "describe_reduced_tokens",
    "draw_predictions",
    "draw_token_clusters",
    "side_by_side",
    "to_rgb",
    "token_labels",
]


def to_rgb(image: np.ndarray, image_format: str) -> np.ndarray:
    """An HWC uint8 image in a model's format ("RGB" or "BGR") as RGB, for drawing."""
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"cannot draw images in format {image_format!r}; expected 'RGB' or 'BGR'")
    return image if image_format == "RGB" else image[:, :, ::-1]


PREDICTION_KINDS = ("panoptic_seg", "instances", "sem_seg")


class PredictionKindError(ValueError):
    """The kind of predictions asked to draw is unknown, or the model does not give it."""


MASK2FORMER_SWITCHES = {"panoptic_seg": "panoptic_on", "instances": "instance_on", "sem_seg": "semantic_on"}


def draw_predictions(
    image_rgb: np.ndarray,
    predictions: Dict,
    metadata: Metadata,
    confidence_threshold: float,
    kind: str = "auto",
) -> np.ndarray:
    """Draw one kind of a model's outputs for one image on it: ``kind`` is one of
    :data:`PREDICTION_KINDS`, or "auto" to draw as detectron2's demo does (the panoptic
    segmentation if there is one, else the semantic segmentation with the instances on top).
    Instances are drawn when they score at least ``confidence_threshold``.
    Returns an RGB image of the same size."""
    if kind == "auto":
        kinds = ["panoptic_seg"] if "panoptic_seg" in predictions else [
            k for k in ("sem_seg", "instances") if k in predictions
        ]
    elif kind in PREDICTION_KINDS:
        if kind not in predictions:
            raise PredictionKindError(
                f"the model gives no {kind!r} predictions, only {sorted(predictions)} "
                f"(a Mask2Former model gives them with model.{MASK2FORMER_SWITCHES[kind]}=True)"
            )
        kinds = [kind]
    else:
        raise PredictionKindError(f"unknown prediction kind {kind!r}; choose 'auto' or one of {PREDICTION_KINDS}")

    visualizer = Visualizer(image_rgb, metadata)
    drawn = visualizer.output
    for kind in kinds:
        if kind == "panoptic_seg":
            segment_ids, segments_info = predictions["panoptic_seg"]
            drawn = visualizer.draw_panoptic_seg(segment_ids.to("cpu"), segments_info)
        elif kind == "sem_seg":
            drawn = visualizer.draw_sem_seg(predictions["sem_seg"].argmax(dim=0).to("cpu"))
        else:
            instances = predictions["instances"].to("cpu")
            drawn = visualizer.draw_instance_predictions(instances[instances.scores >= confidence_threshold])
    return drawn.get_image()


def cluster_labels(state: WindowClusterState, image_index: int = 0) -> np.ndarray:
    """(H, W) cluster id of every token of one image of a clustered batch.

    A token's cluster is the centre nearest to it at clustering time among the valid centres of
    its window, i.e. the cluster with the largest weight when reconstruction rebuilds it. Ids
    are unique across windows (window index * centres per window + centre index).
    """
    context = state.context
    distances = torch.cdist(context.tokens, context.centres)  # (windows, N, M)
    distances = distances.masked_fill(~context.centre_valid.unsqueeze(1), float("inf"))
    groups, _, num_centres = distances.shape
    labels = distances.argmin(dim=-1) + num_centres * torch.arange(groups, device=distances.device)[:, None]
    # Windows are laid out (image, window row, window col, token row, token col); put the token
    # rows of each window row together to get back the padded map.
    (n_h, n_w), window = state.num_windows, state.window
    labels = labels.reshape(-1, n_h, n_w, window, window).permute(0, 1, 3, 2, 4)
    labels = labels.reshape(-1, n_h * window, n_w * window)
    height, width = state.size
    return labels[image_index, :height, :width].cpu().numpy()


def token_labels(state, image_index: int = 0) -> np.ndarray:
    """(H, W) id of the reduced token each grid position belongs to, for the state a host hands
    its restoring layer: Expedit's clusters (:func:`cluster_labels`) or a merged token set."""
    if isinstance(state, ReducedMap):
        return cluster_labels(state.clusters, image_index)
    if not isinstance(state, TokenSet):
        raise TypeError(f"no token layout to draw in a {type(state).__name__}")
    padded_h, padded_w = state.padded_size
    labels = state.source[image_index].reshape(padded_h, padded_w)
    return labels[: state.height, : state.width].cpu().numpy()


def describe_reduced_tokens(state, image_index: int = 0) -> str:
    """A caption for :func:`token_labels`' drawing: what the tokens are and how many remain."""
    if isinstance(state, ReducedMap):
        clusters = state.clusters
        grid = "x".join(map(str, clusters.grid))
        return f"token clusters ({grid} per {clusters.window}x{clusters.window} window)"
    kept = int(state.mergeable[image_index].sum())
    total = state.height * state.width
    return f"merged tokens ({kept} of {total}, {kept / total:.0%})"


def draw_token_clusters(
    image_rgb: np.ndarray,
    labels: np.ndarray,
    model_input_size: Tuple[int, int],
    padded_size: Tuple[int, int],
    alpha: float = 0.55,
) -> np.ndarray:
    """Colour ``image_rgb`` by token cluster and outline the clusters.

    Args:
        image_rgb: the original image (H0, W0, 3).
        labels: (h, w) per-token cluster ids from :func:`cluster_labels`.
        model_input_size: size of the resized image the model got (before padding).
        padded_size: size of the padded batch the backbone saw; tokens tile it evenly.
    """
    height, width = image_rgb.shape[:2]
    stride_h, stride_w = padded_size[0] / labels.shape[0], padded_size[1] / labels.shape[1]
    # Token under the centre of each original pixel, through the test-time resize.
    rows = ((np.arange(height) + 0.5) * model_input_size[0] / height / stride_h).astype(int)
    cols = ((np.arange(width) + 0.5) * model_input_size[1] / width / stride_w).astype(int)
    rows, cols = np.minimum(rows, labels.shape[0] - 1), np.minimum(cols, labels.shape[1] - 1)
    pixel_labels = labels[rows[:, None], cols[None, :]]

    palette = colormap(rgb=True, maximum=255)
    colours = palette[pixel_labels % len(palette)]
    blended = (1 - alpha) * image_rgb.astype(np.float32) + alpha * colours
    border = np.zeros((height, width), dtype=bool)
    border[:, 1:] |= pixel_labels[:, 1:] != pixel_labels[:, :-1]
    border[1:, :] |= pixel_labels[1:, :] != pixel_labels[:-1, :]
    blended[border] = 255
    return blended.round().astype(np.uint8)


def add_caption(image_rgb: np.ndarray, text: str) -> np.ndarray:
    """A copy of the image with ``text`` on a dark band in its top-left corner."""
    out = np.ascontiguousarray(image_rgb).copy()
    scale = max(0.4, out.shape[1] / 900)
    thickness = max(1, round(scale * 1.5))
    font, white = cv2.FONT_HERSHEY_SIMPLEX, (255, 255, 255)
    (text_w, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
    pad = max(2, text_h // 3)
    cv2.rectangle(out, (0, 0), (text_w + 2 * pad, text_h + baseline + 2 * pad), (0, 0, 0), thickness=-1)
    cv2.putText(out, text, (pad, pad + text_h), font, scale, white, thickness, cv2.LINE_AA)
    return out


def side_by_side(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Panels of equal height, left to right."""
    heights = {p.shape[0] for p in panels}
    if len(heights) != 1:
        raise ValueError(f"panels must have one height to go side by side, got {sorted(heights)}")
    return np.concatenate(panels, axis=1)
