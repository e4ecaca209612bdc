"""Mask2Former-VIS's training losses: the image model's matcher and criterion over mask tubes.

A tube is matched and supervised on the same random points in each of its T frames; the mask
losses then treat every (tube, frame) pair as one mask, normalized by the number of tubes.
"""

from typing import Dict

import torch

from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)

from ..mask2former.criterion import (
    SetCriterion,
    _prediction_index,
    _uncertainty,
    dice_loss,
    sigmoid_ce_loss,
)
from ..mask2former.matcher import HungarianMatcher, batch_dice_cost, batch_sigmoid_ce_cost

__all__ = ["VideoHungarianMatcher", "VideoSetCriterion", "build_video_mask2former_criterion"]


class VideoHungarianMatcher(HungarianMatcher):
    """:class:`HungarianMatcher` for tubes: ``pred_masks`` (N, Q, T, H, W) and target ``masks``
    (G, T, H', W'); the mask costs use ``num_points`` points shared by all frames."""

    @torch.no_grad()
    def cost_matrix(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        tgt_labels: torch.Tensor,
        tgt_masks: torch.Tensor,
        point_coords: torch.Tensor,
    ) -> torch.Tensor:
        """
        Matching cost of one video.

        Args:
            pred_logits: (Q, K + 1) class logits.
            pred_masks: (Q, T, H, W) mask logits.
            tgt_labels: (G,) class indices.
            tgt_masks: (G, T, H', W') binary masks.
            point_coords: (P, 2) normalized (x, y) points in [0, 1].

        Returns:
            (Q, G) float32
        """
        cost_class = -pred_logits.float().softmax(-1)[:, tgt_labels]

        # Frames as channels: every frame is sampled at the same P points, giving T * P values.
        points = point_coords[None].to(pred_masks.dtype)
        pred_points = point_sample(
            pred_masks, points.expand(pred_masks.shape[0], -1, -1), align_corners=False
        ).flatten(1)
        tgt = tgt_masks.to(pred_masks.dtype)
        tgt_points = point_sample(tgt, points.expand(tgt.shape[0], -1, -1), align_corners=False)
        pred_points, tgt_points = pred_points.float(), tgt_points.flatten(1).float()

        with torch.autocast(device_type=pred_masks.device.type, enabled=False):
            return (
                self.cost_class * cost_class
                + self.cost_mask * batch_sigmoid_ce_cost(pred_points, tgt_points)
                + self.cost_dice * batch_dice_cost(pred_points, tgt_points)
            )


class VideoSetCriterion(SetCriterion):
    """:class:`SetCriterion` for tubes: ``outputs["pred_masks"]`` (N, Q, T, H, W), target
    ``masks`` (G, T, H', W'). Each frame of a matched tube is point-sampled as its own mask."""

    def loss_masks(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        batch_idx, query_idx = _prediction_index(indices)
        src_masks = outputs["pred_masks"][batch_idx, query_idx]  # (R, T, H, W)
        if src_masks.shape[0] == 0:
            # No ground truth in the batch: zero losses that still reach the graph.
            zero = outputs["pred_masks"].sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        target_masks = torch.cat(
            [t["masks"][tgt.to(t["masks"].device)] for t, (_, tgt) in zip(targets, indices)]
        ).to(src_masks)

        src_masks = src_masks.flatten(0, 1)[:, None]  # (R * T, 1, H, W)
        target_masks = target_masks.flatten(0, 1)[:, None]
        with torch.no_grad():
            point_coords = get_uncertain_point_coords_with_randomness(
                src_masks,
                _uncertainty,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
            point_labels = point_sample(target_masks, point_coords, align_corners=False)[:, 0]
        point_logits = point_sample(src_masks, point_coords, align_corners=False)[:, 0]
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }


def build_video_mask2former_criterion(
    num_classes: int,
    *,
    dec_layers: int = 9,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    no_object_weight: float = 0.1,
    deep_supervision: bool = True,
    train_num_points: int = 12544,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
) -> VideoSetCriterion:
    """
    The criterion of the official Mask2Former-VIS configs (defaults are theirs), with its matcher
    and the loss weights of the final and the ``dec_layers`` auxiliary predictions.
    """
    matcher = VideoHungarianMatcher(
        cost_class=class_weight,
        cost_mask=mask_weight,
        cost_dice=dice_weight,
        num_points=train_num_points,
    )
    base_weights = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    weight_dict = dict(base_weights)
    if deep_supervision:
        for i in range(dec_layers):
            weight_dict.update({f"{k}_{i}": v for k, v in base_weights.items()})
    return VideoSetCriterion(
        num_classes,
        matcher=matcher,
        weight_dict=weight_dict,
        eos_coef=no_object_weight,
        losses=("labels", "masks"),
        num_points=train_num_points,
        oversample_ratio=oversample_ratio,
        importance_sample_ratio=importance_sample_ratio,
    )
