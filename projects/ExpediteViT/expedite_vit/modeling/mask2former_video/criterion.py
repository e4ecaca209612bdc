"""Mask2Former-VIS's training losses: the image model's matcher and criterion over mask tubes.

A tube is matched and supervised on the same random points in each of its T frames; the mask
losses then treat every (tube, frame) pair as one mask, normalized by the number of tubes.
"""

import torch

from ..mask2former.criterion import SetCriterion, build_mask2former_criterion
from ..mask2former.matcher import HungarianMatcher

__all__ = ["VideoHungarianMatcher", "VideoSetCriterion", "build_video_mask2former_criterion"]


class VideoHungarianMatcher(HungarianMatcher):
    """:class:`HungarianMatcher` for tubes: ``pred_masks`` (N, Q, T, H, W) and target ``masks``
    (G, T, H', W'); the mask costs use ``num_points`` points shared by all frames."""

    @staticmethod
    def as_channels(masks: torch.Tensor) -> torch.Tensor:
        """(R, T, H, W) tubes stay as they are: frames as channels, every frame sampled at the
        same P points, giving T * P values per tube."""
        return masks


class VideoSetCriterion(SetCriterion):
    """:class:`SetCriterion` for tubes: ``outputs["pred_masks"]`` (N, Q, T, H, W), target
    ``masks`` (G, T, H', W'). Each frame of a matched tube is point-sampled as its own mask."""

    @staticmethod
    def as_point_masks(masks: torch.Tensor) -> torch.Tensor:
        """Matched (R, T, H, W) tubes as R * T single-channel (1, H, W) masks."""
        return masks.flatten(0, 1)[:, None]


def build_video_mask2former_criterion(num_classes: int, **kwargs) -> VideoSetCriterion:
    """
    The criterion of the official Mask2Former-VIS configs, with its matcher and the loss weights
    of the final and the ``dec_layers`` auxiliary predictions. Keyword arguments and defaults are
    those of :func:`expedite_vit.modeling.mask2former.build_mask2former_criterion`.
    """
    return build_mask2former_criterion(
        num_classes,
        matcher_class=VideoHungarianMatcher,
        criterion_class=VideoSetCriterion,
        **kwargs,
    )
