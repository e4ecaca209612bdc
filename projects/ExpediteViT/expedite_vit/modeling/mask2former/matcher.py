"""Hungarian matching between Mask2Former's queries and ground-truth masks."""

from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from scipy.optimize import linear_sum_assignment

from detectron2.projects.point_rend.point_features import point_sample

__all__ = ["HungarianMatcher", "batch_sigmoid_ce_cost", "batch_dice_cost"]


def batch_sigmoid_ce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """
    Mean binary cross-entropy of every prediction against every target.

    Args:
        inputs: (Q, P) mask logits at P points.
        targets: (T, P) binary targets at the same points.

    Returns:
        (Q, T)
    """
    # BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x): one matrix product per term
    # instead of materialising a (Q, T, P) tensor.
    cost_pos = F.softplus(-inputs)
    cost_neg = F.softplus(inputs)
    cost = cost_pos @ targets.T + cost_neg @ (1 - targets).T
    return cost / inputs.shape[1]


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """
    Dice loss (with +1 smoothing) of every prediction against every target.

    Args:
        inputs: (Q, P) mask logits at P points.
        targets: (T, P) binary targets at the same points.

    Returns:
        (Q, T)
    """
    probs = inputs.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """
    One-to-one assignment of ground-truth masks to queries minimising
    ``cost_class * (-p(class)) + cost_mask * BCE + cost_dice * dice``, where the mask costs are
    computed on ``num_points`` random points shared by all masks of an image.

    Queries left unassigned are trained to predict "no object".
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        num_points: int = 12544,
    ):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("at least one matching cost must be non-zero")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @staticmethod
    def as_channels(masks: torch.Tensor) -> torch.Tensor:
        """(R, H, W) masks as (R, 1, H, W): one channel of points per mask."""
        return masks[:, None]

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
        Matching cost of one image.

        Args:
            pred_logits: (Q, K + 1) class logits.
            pred_masks: (Q, H, W) mask logits.
            tgt_labels: (T,) class indices.
            tgt_masks: (T, H', W') binary masks (any resolution: points are normalized).
            point_coords: (P, 2) normalized (x, y) points in [0, 1].

        Returns:
            (Q, T) float32
        """
        # The softmax probability stands in for the NLL; the constant 1 in 1 - p is dropped.
        cost_class = -pred_logits.float().softmax(-1)[:, tgt_labels]

        points = point_coords[None].to(pred_masks.dtype)

        def sample(masks: torch.Tensor) -> torch.Tensor:
            # (R, C, H, W) -> (R, C * P): the channels are sampled at the same points.
            samples = point_sample(masks, points.expand(masks.shape[0], -1, -1), align_corners=False)
            return samples.flatten(1).float()

        pred_points = sample(self.as_channels(pred_masks))
        tgt_points = sample(self.as_channels(tgt_masks).to(pred_masks.dtype))

        # Sums over thousands of points: keep them in float32 under mixed precision.
        with torch.autocast(device_type=pred_masks.device.type, enabled=False):
            return (
                self.cost_class * cost_class
                + self.cost_mask * batch_sigmoid_ce_cost(pred_points, tgt_points)
                + self.cost_dice * batch_dice_cost(pred_points, tgt_points)
            )

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            outputs: "pred_logits" (N, Q, K + 1) and "pred_masks" (N, Q, H, W).
            targets: per image, "labels" (T,) and "masks" (T, H', W').

        Returns:
            per image, (query indices, target indices), int64 tensors on the CPU of length
            min(Q, T); the target indices are listed in increasing query order.
        """
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {pred_logits.shape[0]}")
        indices = []
        # Image by image, so only one (Q, T) cost matrix is alive at a time.
        for b, target in enumerate(targets):
            if len(target["labels"]) == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            point_coords = torch.rand(self.num_points, 2, device=pred_masks.device)
            cost = self.cost_matrix(
                pred_logits[b], pred_masks[b], target["labels"], target["masks"], point_coords
            )
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices
