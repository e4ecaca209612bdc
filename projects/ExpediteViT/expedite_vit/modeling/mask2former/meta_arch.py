"""The MaskFormer meta-architecture (as used by Mask2Former) and its segmentation head.

Example LazyConfig for the official COCO panoptic Swin-L model (133 classes, 200 queries)::

    from detectron2.config import LazyCall as L
    from detectron2.data import MetadataCatalog
    from detectron2.layers import ShapeSpec
    from expedite_vit.modeling.swin import D2SwinTransformer
    from expedite_vit.modeling.mask2former import (
        MaskFormer, build_mask2former_criterion, build_mask2former_head)

    model = L(MaskFormer)(
        backbone=L(D2SwinTransformer)(
            embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12),
        sem_seg_head=L(build_mask2former_head)(
            input_shape={
                "res2": ShapeSpec(channels=192, stride=4),
                "res3": ShapeSpec(channels=384, stride=8),
                "res4": ShapeSpec(channels=768, stride=16),
                "res5": ShapeSpec(channels=1536, stride=32),
            },
            num_classes=133,
            num_queries=200,
        ),
        criterion=L(build_mask2former_criterion)(num_classes=133, dec_layers=9),
        num_queries=200,
        object_mask_threshold=0.8,
        overlap_threshold=0.8,
        metadata=L(MetadataCatalog.get)(name="coco_2017_train_panoptic"),
        size_divisibility=32,
        pixel_mean=[123.675, 116.280, 103.530],
        pixel_std=[58.395, 57.120, 57.375],
        semantic_on=True,
        instance_on=True,
        panoptic_on=True,
        test_topk_per_image=100,
    )

The R50 model uses ``num_queries=100`` (head and MaskFormer), res2..res5 channels
256/512/1024/2048, and detectron2's ResNet, whose keys match the official checkpoint::

    backbone=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
        out_features=["res2", "res3", "res4", "res5"],
        freeze_at=0,
    )

COCO instance (Swin-L) sets ``num_classes=80``, ``semantic_on=False, panoptic_on=False``;
ADE20K semantic (Swin-L) sets ``num_classes=150, num_queries=100, instance_on=False,
panoptic_on=False``.
"""

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import ShapeSpec
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, ImageList, Instances
from detectron2.utils.memory import retry_if_cuda_oom

from .legacy_keys import rename_legacy_keys
from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import MultiScaleMaskedTransformerDecoder

__all__ = ["MaskFormerHead", "MaskClassificationModel", "MaskFormer", "build_mask2former_head"]


class MaskFormerHead(nn.Module):
    """Pixel decoder followed by the transformer decoder (``predictor``)."""

    def __init__(
        self,
        *,
        pixel_decoder: MSDeformAttnPixelDecoder,
        predictor: MultiScaleMaskedTransformerDecoder,
    ):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # MaskFormer-era checkpoints keep the pixel decoder's weights directly in the head
        # (upstream renames them on load too): legacy_keys.py.
        def new_name(key):
            if key.startswith(("predictor.", "pixel_decoder.")):
                return None
            return "pixel_decoder." + key

        model_keys = self.state_dict(keep_vars=True).keys()
        rename_legacy_keys(state_dict, prefix, new_name, model_keys, type(self).__name__)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def num_classes(self) -> int:
        return self.predictor.num_classes

    def forward(self, features: Mapping[str, torch.Tensor]) -> Dict:
        """
        Args:
            features: backbone outputs, name -> (N, C, H, W).

        Returns:
            the predictor's output dict ("pred_logits", "pred_masks", "aux_outputs").
        """
        mask_features, _, multi_scale_features = self.pixel_decoder.forward_features(features)
        return self.predictor(multi_scale_features, mask_features)


def build_mask2former_head(
    input_shape: Mapping[str, ShapeSpec],
    num_classes: int,
    *,
    num_queries: int = 100,
    hidden_dim: int = 256,
    conv_dim: int = 256,
    mask_dim: int = 256,
    nheads: int = 8,
    dim_feedforward: int = 2048,
    dec_layers: int = 9,
    enc_layers: int = 6,
    enc_dim_feedforward: int = 1024,
    transformer_in_features: Sequence[str] = ("res3", "res4", "res5"),
    common_stride: int = 4,
    norm: str = "GN",
    enforce_input_project: bool = False,
    predictor_class: type = MultiScaleMaskedTransformerDecoder,
) -> MaskFormerHead:
    """
    The head of the official Mask2Former configs (defaults are theirs; the Swin-L COCO models
    use ``num_queries=200``).

    Args:
        input_shape: backbone output name -> ShapeSpec(channels, stride), res2..res5.
        num_classes: classes without "no object" (COCO panoptic 133, instance 80, ADE20K 150).
        dec_layers: decoder rounds: YAML ``DEC_LAYERS`` minus one.
        enc_layers: deformable encoder layers (YAML ``TRANSFORMER_ENC_LAYERS``).
        enc_dim_feedforward: FFN width of the deformable encoder (fixed to 1024 upstream).
        predictor_class: the transformer decoder (``sem_seg_head.predictor``); it takes the
            arguments of :class:`MultiScaleMaskedTransformerDecoder`.
    """
    pixel_decoder = MSDeformAttnPixelDecoder(
        input_shape,
        conv_dim=conv_dim,
        mask_dim=mask_dim,
        norm=norm,
        transformer_in_features=transformer_in_features,
        common_stride=common_stride,
        transformer_enc_layers=enc_layers,
        transformer_nheads=nheads,
        transformer_dim_feedforward=enc_dim_feedforward,
    )
    predictor = predictor_class(
        conv_dim,
        num_classes=num_classes,
        hidden_dim=hidden_dim,
        num_queries=num_queries,
        nheads=nheads,
        dim_feedforward=dim_feedforward,
        dec_layers=dec_layers,
        mask_dim=mask_dim,
        enforce_input_project=enforce_input_project,
    )
    return MaskFormerHead(pixel_decoder=pixel_decoder, predictor=predictor)


class MaskClassificationModel(nn.Module):
    """
    What :class:`MaskFormer` and the video model share: ``backbone`` -> ``sem_seg_head``, the
    ``criterion`` whose ``weight_dict`` weighs the training losses, and the input normalization.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: MaskFormerHead,
        criterion: nn.Module,
        num_queries: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = 32,
    ):
        """
        Args:
            backbone: module mapping (N, 3, H, W) images (or frames) to a dict of feature maps.
            sem_seg_head: a :class:`MaskFormerHead`.
            criterion: the training losses (a :class:`SetCriterion`); its ``weight_dict`` weighs
                and filters them. Also holds ``criterion.empty_weight``, part of the checkpoints.
            num_queries: number of queries of the head (checked against it).
            pixel_mean, pixel_std: per-channel input normalization.
            size_divisibility: pad inputs to a multiple of this; negative means the backbone's
                ``size_divisibility``.
        """
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        # Configs state num_queries twice (head and here); catch a mismatch early.
        if sem_seg_head.predictor.num_queries != num_queries:
            raise ValueError(
                f"num_queries={num_queries} but the head has "
                f"{sem_seg_head.predictor.num_queries} queries"
            )
        self.num_queries = num_queries
        if size_divisibility < 0:
            size_divisibility = self.backbone.size_divisibility
        self.size_divisibility = size_divisibility

        if len(pixel_mean) != len(pixel_std):
            raise ValueError(
                f"pixel_mean {list(pixel_mean)} and pixel_std {list(pixel_std)} differ in length"
            )
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def num_classes(self) -> int:
        return self.sem_seg_head.num_classes

    def top_query_classes(
        self, mask_cls: torch.Tensor, k: int, sorted: bool
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        The ``k`` (query, class) pairs of highest class probability ("no object" aside); a query
        may appear with several classes.

        Args:
            mask_cls: (Q, K + 1) logits.
            sorted: return the pairs by decreasing probability (else in no set order).

        Returns:
            probabilities, class ids and query indices, each (min(k, Q * K),).
        """
        num_classes = self.num_classes
        scores = F.softmax(mask_cls, dim=-1)[:, :-1]  # (Q, K)
        top_scores, top_indices = scores.flatten().topk(min(k, scores.numel()), sorted=sorted)
        labels = top_indices % num_classes
        queries = torch.div(top_indices, num_classes, rounding_mode="floor")
        return top_scores, labels, queries

    def weighted_losses(
        self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]
    ) -> Dict[str, torch.Tensor]:
        """The criterion's losses times their ``weight_dict`` weights."""
        losses = self.criterion(outputs, targets)
        weights = self.criterion.weight_dict
        # Losses without a weight (e.g. auxiliary ones without deep supervision) are dropped.
        return {k: v * weights[k] for k, v in losses.items() if k in weights}


class MaskFormer(MaskClassificationModel):
    """
    Mask classification segmentation: ``backbone`` -> ``sem_seg_head`` predicts Q (class, mask)
    pairs; training returns the weighted losses of ``criterion``; inference turns the pairs into
    semantic, panoptic and/or instance results in the formats of detectron2's evaluators.
    """

    def __init__(
        self,
        *,
        object_mask_threshold: float,
        overlap_threshold: float,
        metadata=None,
        sem_seg_postprocess_before_inference: Optional[bool] = None,
        semantic_on: bool = True,
        panoptic_on: bool = False,
        instance_on: bool = False,
        test_topk_per_image: int = 100,
        **kwargs,
    ):
        """
        Args:
            kwargs: those of :class:`MaskClassificationModel`: backbone, sem_seg_head,
                criterion, num_queries, pixel_mean, pixel_std, size_divisibility.
            object_mask_threshold: panoptic: drop queries whose class score is not above this.
            overlap_threshold: panoptic: drop a segment when less than this fraction of its
                mask survives the per-pixel argmax.
            metadata: dataset metadata; panoptic and instance+panoptic inference need
                ``thing_dataset_id_to_contiguous_id``.
            sem_seg_postprocess_before_inference: resize masks to the output size before
                combining them (required, and the default, when panoptic or instance inference
                is on; combining first is cheaper for semantic-only inference).
            semantic_on, panoptic_on, instance_on: which results inference returns.
            test_topk_per_image: instance inference keeps this many (query, class) pairs.
        """
        super().__init__(**kwargs)
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.metadata = metadata

        needs_full_resolution = panoptic_on or instance_on
        if sem_seg_postprocess_before_inference is None:
            sem_seg_postprocess_before_inference = needs_full_resolution
        elif needs_full_resolution and not sem_seg_postprocess_before_inference:
            raise ValueError(
                "panoptic and instance inference need sem_seg_postprocess_before_inference=True"
            )
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference

        self.semantic_on = semantic_on
        self.panoptic_on = panoptic_on
        self.instance_on = instance_on
        self.test_topk_per_image = test_topk_per_image

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalize and pad the (C, H, W) images into one (N, C, H', W') batch."""
        images = []
        for x in batched_inputs:
            image = x["image"].to(self.device)
            if image.dim() != 3 or image.shape[0] != self.pixel_mean.shape[0]:
                raise ValueError(
                    f"expected images of shape ({self.pixel_mean.shape[0]}, H, W), got {tuple(image.shape)}"
                )
            images.append((image - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, self.size_divisibility)

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: one dict per image with "image" (C, H, W) in the model's input
                format; for training "instances" with ``gt_classes`` and ``gt_masks``
                (a (T, H, W) tensor or BitMasks); for inference optionally the output "height"
                and "width".

        Returns:
            training: dict of weighted losses.
            inference: one dict per image with, as enabled,
              "sem_seg": (K, height, width) class scores,
              "panoptic_seg": (segment ids (height, width) int32, segments_info list of
                  {"id", "isthing", "category_id"} with contiguous category ids),
              "instances": Instances with pred_masks, pred_boxes, scores, pred_classes.
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        outputs = self.sem_seg_head(features)

        if self.training:
            if any("instances" not in x for x in batched_inputs):
                raise ValueError("training needs 'instances' (gt_classes, gt_masks) in every input")
            targets = self.prepare_targets(
                [x["instances"].to(self.device) for x in batched_inputs], images
            )
            return self.weighted_losses(outputs, targets)

        mask_cls_results = outputs["pred_logits"]
        # Masks come at stride 4; bring them to the padded input size.
        mask_pred_results = F.interpolate(
            outputs["pred_masks"],
            size=images.tensor.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
        del outputs

        processed_results = []
        for mask_cls, mask_pred, input_per_image, image_size in zip(
            mask_cls_results, mask_pred_results, batched_inputs, images.image_sizes
        ):
            height = input_per_image.get("height", image_size[0])
            width = input_per_image.get("width", image_size[1])
            result = {}
            if self.sem_seg_postprocess_before_inference:
                mask_pred = retry_if_cuda_oom(sem_seg_postprocess)(
                    mask_pred, image_size, height, width
                )
                mask_cls = mask_cls.to(mask_pred)

            if self.semantic_on:
                sem_seg = retry_if_cuda_oom(self.semantic_inference)(mask_cls, mask_pred)
                if not self.sem_seg_postprocess_before_inference:
                    sem_seg = retry_if_cuda_oom(sem_seg_postprocess)(
                        sem_seg, image_size, height, width
                    )
                result["sem_seg"] = sem_seg
            if self.panoptic_on:
                result["panoptic_seg"] = retry_if_cuda_oom(self.panoptic_inference)(
                    mask_cls, mask_pred
                )
            if self.instance_on:
                result["instances"] = retry_if_cuda_oom(self.instance_inference)(
                    mask_cls, mask_pred
                )
            processed_results.append(result)
        return processed_results

    def prepare_targets(
        self, gt_instances: List[Instances], images: ImageList
    ) -> List[Dict[str, torch.Tensor]]:
        """Per image {"labels": (T,), "masks": (T, H', W')}, masks zero-padded to the batch size."""
        h_pad, w_pad = images.tensor.shape[-2:]
        targets = []
        for instances in gt_instances:
            gt_masks = instances.gt_masks
            if isinstance(gt_masks, BitMasks):
                gt_masks = gt_masks.tensor
            padded = gt_masks.new_zeros((gt_masks.shape[0], h_pad, w_pad))
            padded[:, : gt_masks.shape[1], : gt_masks.shape[2]] = gt_masks
            targets.append({"labels": instances.gt_classes, "masks": padded})
        return targets

    def semantic_inference(self, mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
        """
        Args:
            mask_cls: (Q, K + 1) logits; mask_pred: (Q, H, W) logits.

        Returns:
            (K, H, W): sum over queries of p(class) * p(pixel in mask).
        """
        probs = F.softmax(mask_cls, dim=-1)[..., :-1]
        return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())

    def _thing_class_ids(self) -> set:
        mapping = getattr(self.metadata, "thing_dataset_id_to_contiguous_id", None)
        if mapping is None:
            raise ValueError(
                "panoptic inference needs metadata with thing_dataset_id_to_contiguous_id"
            )
        return set(mapping.values())

    def panoptic_inference(
        self, mask_cls: torch.Tensor, mask_pred: torch.Tensor
    ) -> Tuple[torch.Tensor, List[Dict]]:
        """
        Mask-wise merging: keep confident non-"no object" queries, give each pixel to the query
        with the highest score * mask probability, drop segments that lost more than
        ``1 - overlap_threshold`` of their own mask, merge segments of the same stuff class.

        Args:
            mask_cls: (Q, K + 1) logits; mask_pred: (Q, H, W) logits.

        Returns:
            segment ids (H, W) int32 (0 = void) and segments_info.
        """
        scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
        mask_probs = mask_pred.sigmoid()
        keep = labels.ne(self.num_classes) & (scores > self.object_mask_threshold)
        cur_scores = scores[keep]
        cur_classes = labels[keep]
        cur_masks = mask_probs[keep]

        h, w = cur_masks.shape[-2:]
        panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=cur_masks.device)
        segments_info = []
        if cur_masks.shape[0] == 0:
            return panoptic_seg, segments_info

        thing_ids = self._thing_class_ids()
        cur_mask_ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
        stuff_segment_ids = {}
        current_segment_id = 0
        for k in range(cur_classes.shape[0]):
            pred_class = int(cur_classes[k].item())
            isthing = pred_class in thing_ids
            won = cur_mask_ids == k
            own = cur_masks[k] >= 0.5
            mask = won & own
            mask_area = won.sum().item()
            original_area = own.sum().item()
            if mask_area == 0 or original_area == 0 or mask.sum().item() == 0:
                continue
            if mask_area / original_area < self.overlap_threshold:
                continue
            if not isthing:
                if pred_class in stuff_segment_ids:
                    panoptic_seg[mask] = stuff_segment_ids[pred_class]
                    continue
                stuff_segment_ids[pred_class] = current_segment_id + 1
            current_segment_id += 1
            panoptic_seg[mask] = current_segment_id
            segments_info.append(
                {"id": current_segment_id, "isthing": isthing, "category_id": pred_class}
            )
        return panoptic_seg, segments_info

    def instance_inference(self, mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> Instances:
        """
        Top ``test_topk_per_image`` (query, class) pairs by class probability; a query may
        appear with several classes. When panoptic inference is on, only thing classes are kept.
        Score = class probability * mean mask probability inside the binarised mask.

        Args:
            mask_cls: (Q, K + 1) logits; mask_pred: (Q, H, W) logits at output resolution.
        """
        image_size = mask_pred.shape[-2:]
        scores_per_image, labels_per_image, query_indices = self.top_query_classes(
            mask_cls, self.test_topk_per_image, sorted=False
        )
        mask_pred = mask_pred[query_indices]

        if self.panoptic_on:
            thing_ids = self._thing_class_ids()
            keep = torch.tensor(
                [int(label) in thing_ids for label in labels_per_image.tolist()],
                dtype=torch.bool,
                device=labels_per_image.device,
            )
            scores_per_image = scores_per_image[keep]
            labels_per_image = labels_per_image[keep]
            mask_pred = mask_pred[keep]

        result = Instances(image_size)
        binary_masks = mask_pred > 0
        result.pred_masks = binary_masks.float()
        result.pred_boxes = BitMasks(binary_masks).get_bounding_boxes().to(mask_pred.device)
        flat_masks = result.pred_masks.flatten(1)
        mask_scores = (mask_pred.sigmoid().flatten(1) * flat_masks).sum(1) / (
            flat_masks.sum(1) + 1e-6
        )
        result.scores = scores_per_image * mask_scores
        result.pred_classes = labels_per_image
        return result
