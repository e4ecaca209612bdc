"""Mask2Former's training losses: classification CE plus point-sampled mask BCE and dice, after
Hungarian matching, on the final and on every auxiliary prediction."""

from typing import Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.utils import comm

from .matcher import HungarianMatcher

__all__ = ["SetCriterion", "sigmoid_ce_loss", "dice_loss", "build_mask2former_criterion"]


def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """
    Args:
        inputs: (R, P) mask logits at P points; targets: (R, P) in [0, 1].

    Returns:
        scalar: per-mask mean BCE, summed over masks, divided by ``num_masks``.
    """
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """
    Args:
        inputs: (R, P) mask logits at P points; targets: (R, P) in [0, 1].

    Returns:
        scalar: dice loss with +1 smoothing, summed over masks, divided by ``num_masks``.
    """
    probs = inputs.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


def _uncertainty(logits: torch.Tensor) -> torch.Tensor:
    # Points whose logit is closest to 0 are the least certain.
    return -logits.abs()


class SetCriterion(nn.Module):
    """
    Computes, for the final prediction and each entry of ``outputs["aux_outputs"]``:
      * ``loss_ce``: cross-entropy over K + 1 classes, unmatched queries labelled "no object"
        with weight ``eos_coef`` (the ``empty_weight`` buffer, part of the checkpoints);
      * ``loss_mask`` / ``loss_dice``: BCE and dice of matched masks on ``num_points`` points,
        a share ``importance_sample_ratio`` of them picked where the prediction is most
        uncertain among ``oversample_ratio * num_points`` random candidates (PointRend).
    Auxiliary losses get suffix ``_i``. Losses are returned unweighted; ``weight_dict`` holds
    the weights the meta-architecture applies.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: Mapping[str, float],
        eos_coef: float,
        losses: Sequence[str] = ("labels", "masks"),
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ):
        super().__init__()
        unknown = set(losses) - {"labels", "masks"}
        if unknown:
            raise ValueError(f"unknown losses {sorted(unknown)}; choose from 'labels', 'masks'")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = list(losses)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    @staticmethod
    def as_point_masks(masks: torch.Tensor) -> torch.Tensor:
        """Matched (R, H, W) masks as the (R, 1, H, W) single-channel masks the points sample."""
        return masks[:, None]

    def loss_labels(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        logits = outputs["pred_logits"].float()  # (N, Q, K + 1)
        batch_idx, query_idx = _prediction_index(indices)
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        target_classes[batch_idx, query_idx] = torch.cat(
            [t["labels"][tgt.to(t["labels"].device)] for t, (_, tgt) in zip(targets, indices)]
        ).to(logits.device)
        loss = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        return {"loss_ce": loss}

    def loss_masks(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        batch_idx, query_idx = _prediction_index(indices)
        src_masks = outputs["pred_masks"][batch_idx, query_idx]  # (R, H, W)
        if src_masks.shape[0] == 0:
            # No ground truth in the batch: zero losses that still reach the graph, so every
            # parameter gets a (zero) gradient as in a normal step.
            zero = outputs["pred_masks"].sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}

        target_sizes = {tuple(t["masks"].shape[-2:]) for t in targets}
        if len(target_sizes) != 1:
            raise ValueError(
                f"target masks of a batch must share one (padded) size, got {sorted(target_sizes)}"
            )
        target_masks = torch.cat(
            [t["masks"][tgt.to(t["masks"].device)] for t, (_, tgt) in zip(targets, indices)]
        ).to(src_masks)

        # Normalized point coordinates make the two resolutions irrelevant.
        src_masks = self.as_point_masks(src_masks)
        target_masks = self.as_point_masks(target_masks)
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

    def _losses_for(self, outputs, targets, num_masks) -> Dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        losses = {}
        if "labels" in self.losses:
            losses.update(self.loss_labels(outputs, targets, indices, num_masks))
        if "masks" in self.losses:
            losses.update(self.loss_masks(outputs, targets, indices, num_masks))
        return losses

    def forward(
        self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: decoder output: "pred_logits" (N, Q, K + 1), "pred_masks" (N, Q, H, W) and
                optionally "aux_outputs", a list of dicts with the same two keys.
            targets: per image, "labels" (T,) int64 and "masks" (T, H', W'), all images padded to
                the same (H', W').

        Returns:
            dict of scalar losses.
        """
        # Normalize by the average number of masks per GPU, over all GPUs.
        num_masks = torch.as_tensor(
            [float(sum(len(t["labels"]) for t in targets))], device=outputs["pred_logits"].device
        )
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(num_masks)
        num_masks = torch.clamp(num_masks / comm.get_world_size(), min=1).item()

        final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        losses = self._losses_for(final, targets, num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update(
                {f"{k}_{i}": v for k, v in self._losses_for(aux, targets, num_masks).items()}
            )
        return losses


def _prediction_index(
    indices: List[Tuple[torch.Tensor, torch.Tensor]],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(batch index, query index) of every matched prediction, images in order."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    return batch_idx, query_idx


def build_mask2former_criterion(
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
    matcher_class: type = HungarianMatcher,
    criterion_class: type = SetCriterion,
) -> SetCriterion:
    """
    The criterion of the official Mask2Former configs (defaults are theirs), with its matcher
    and the loss weights for the final and the ``dec_layers`` auxiliary predictions.

    Args:
        dec_layers: decoder rounds, as :class:`MultiScaleMaskedTransformerDecoder`'s
            ``dec_layers`` (YAML ``DEC_LAYERS`` minus one).
        matcher_class, criterion_class: the matcher and the criterion to build, taking the
            arguments of :class:`HungarianMatcher` and :class:`SetCriterion`.
    """
    matcher = matcher_class(
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
    return criterion_class(
        num_classes,
        matcher=matcher,
        weight_dict=weight_dict,
        eos_coef=no_object_weight,
        losses=("labels", "masks"),
        num_points=train_num_points,
        oversample_ratio=oversample_ratio,
        importance_sample_ratio=importance_sample_ratio,
    )
