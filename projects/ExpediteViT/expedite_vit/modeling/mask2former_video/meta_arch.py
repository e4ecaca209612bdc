"""Mask2Former-VIS: the video instance segmentation meta-architecture and its head.

The backbone and the pixel decoder see frames as independent images; the video decoder then finds
video-level objects (tubes) in the features of all frames of a video. The state_dict is the one of
the official YouTube-VIS checkpoints (the image model's keys; K = 40 classes there).
"""

import contextlib
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch.nn import functional as F

from detectron2.layers import ShapeSpec
from detectron2.structures import BitMasks
from detectron2.utils.memory import retry_if_cuda_oom

from expedite import TokenReduction

from ..mask2former.meta_arch import MaskClassificationModel, MaskFormerHead, build_mask2former_head
from .transformer_decoder import VideoMultiScaleMaskedTransformerDecoder

__all__ = ["VideoMaskFormer", "build_video_mask2former_head"]


def build_video_mask2former_head(
    input_shape: Mapping[str, ShapeSpec], num_classes: int, **kwargs
) -> MaskFormerHead:
    """
    The head of the official Mask2Former-VIS configs: the image model's pixel decoder and a
    :class:`VideoMultiScaleMaskedTransformerDecoder` (``sem_seg_head.predictor``). Keyword
    arguments and defaults are those of
    :func:`expedite_vit.modeling.mask2former.build_mask2former_head` (YouTube-VIS:
    ``num_classes=40``; Swin-L ``num_queries=200``).
    """
    return build_mask2former_head(
        input_shape,
        num_classes,
        predictor_class=VideoMultiScaleMaskedTransformerDecoder,
        **kwargs,
    )


class VideoMaskFormer(MaskClassificationModel):
    """
    Offline video instance segmentation: every frame of a video goes through ``backbone`` and the
    pixel decoder of ``sem_seg_head`` (``frame_chunk`` frames at a time), then its video decoder
    predicts Q (class, mask tube) pairs for the whole video. Training returns the weighted losses
    of ``criterion``; inference returns the top ``test_topk_per_video`` (query, class) pairs.

    Chunking gives the same features as one pass over all frames because every module before the
    video decoder works per frame (Swin with or without token reduction, LayerNorm, GroupNorm,
    frozen BatchNorm). It bounds the backbone's activation memory; the decoder's inputs (three
    feature levels and the stride-4 mask features of every frame) still grow with the video.

    Temporal warm start (opt-in, ``expedite.expedit.warm_start``): the model is the one place that
    knows its backbone batches are consecutive frames of one video, so around each video's
    backbone calls it enters :meth:`expedite.TokenReduction.frame_sequence` on every token
    reduction of the backbone that warm-starts (:attr:`~expedite.TokenReduction.warm_start`).
    Each frame's clustering then starts from the previous frame's centres, across chunks too (the
    last frame of a chunk starts the next chunk), so chunking still gives the same features; a
    chunk then never holds frames of two videos. With warm start off nothing of this runs.
    """

    def __init__(
        self,
        *,
        frame_chunk: Optional[int] = None,
        test_topk_per_video: int = 10,
        **kwargs,
    ):
        """
        Args:
            kwargs: those of :class:`MaskClassificationModel`: backbone (run on (N, 3, H, W)
                frames), sem_seg_head (its predictor a
                :class:`VideoMultiScaleMaskedTransformerDecoder`:
                :func:`build_video_mask2former_head`), criterion (losses over mask tubes),
                num_queries, pixel_mean, pixel_std, size_divisibility (frames are padded).
            frame_chunk: frames per pass through the backbone and pixel decoder; None: all frames
                of the batch in one pass.
            test_topk_per_video: inference keeps this many (query, class) pairs (10 upstream).
        """
        if frame_chunk is not None and (isinstance(frame_chunk, bool) or int(frame_chunk) != frame_chunk
                                        or frame_chunk < 1):
            raise ValueError(f"frame_chunk must be None or an integer >= 1, got {frame_chunk!r}")
        if test_topk_per_video < 1:
            raise ValueError(f"test_topk_per_video must be >= 1, got {test_topk_per_video}")
        super().__init__(**kwargs)
        predictor = self.sem_seg_head.predictor
        if not isinstance(predictor, VideoMultiScaleMaskedTransformerDecoder):
            raise TypeError(
                "VideoMaskFormer needs a VideoMultiScaleMaskedTransformerDecoder as "
                f"sem_seg_head.predictor, got {type(predictor).__name__}"
            )
        self.frame_chunk = None if frame_chunk is None else int(frame_chunk)
        self.test_topk_per_video = test_topk_per_video

    def _frames(self, batched_inputs: List[Dict]) -> Tuple[List[torch.Tensor], int]:
        """All frames of the batch, videos in order, and the frame count T every video has."""
        lengths = {len(video["image"]) for video in batched_inputs}
        if len(lengths) != 1:
            raise ValueError(
                f"the videos of a batch must have the same number of frames, got {sorted(lengths)}"
            )
        num_frames = lengths.pop()
        if num_frames == 0:
            raise ValueError("a video has no frames ('image' is an empty list)")
        channels = self.pixel_mean.shape[0]
        for video in batched_inputs:
            shapes = {tuple(frame.shape) for frame in video["image"]}
            bad = [s for s in shapes if len(s) != 3 or s[0] != channels]
            if bad:
                raise ValueError(
                    f"video {video.get('video_id')}: 'image' frames must be ({channels}, H, W), "
                    f"got {bad[0]}"
                )
            # The mapper resizes every frame of a video alike; masks are cropped with one size.
            if len(shapes) != 1:
                raise ValueError(
                    f"video {video.get('video_id')}: 'image' frames differ in size {sorted(shapes)}"
                )
        frames = [frame for video in batched_inputs for frame in video["image"]]
        return frames, num_frames

    def _padded_size(self, frames: Sequence[torch.Tensor]) -> Tuple[int, int]:
        height = max(frame.shape[-2] for frame in frames)
        width = max(frame.shape[-1] for frame in frames)
        if self.size_divisibility > 1:
            stride = self.size_divisibility
            height, width = math.ceil(height / stride) * stride, math.ceil(width / stride) * stride
        return height, width

    def _normalized_chunk(self, frames: Sequence[torch.Tensor], size: Tuple[int, int]) -> torch.Tensor:
        """(N, C, H', W') normalized frames, zero-padded (after normalization) to ``size``."""
        batch = torch.zeros((len(frames), self.pixel_mean.shape[0], *size), device=self.device)
        for i, frame in enumerate(frames):
            frame = frame.to(self.device)
            batch[i, :, : frame.shape[-2], : frame.shape[-1]] = (frame - self.pixel_mean) / self.pixel_std
        return batch

    def warm_start_reductions(self) -> List[TokenReduction]:
        """The backbone's token reductions whose settings link consecutive frames (temporal warm
        start); empty when warm start is off (the default)."""
        return [m for m in self.backbone.modules() if isinstance(m, TokenReduction) and m.warm_start]

    def frame_features(
        self,
        frames: Sequence[torch.Tensor],
        padded_size: Tuple[int, int],
        frames_per_video: Optional[int] = None,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """
        Backbone and pixel decoder over ``frames``, ``frame_chunk`` at a time.

        Args:
            frames: N (C, H, W) frames in the model's input format, video after video, each
                video's frames in order.
            padded_size: (H', W') every frame is padded to.
            frames_per_video: frames of each video (N a multiple of it); None: the N frames are
                one video. Only used by the temporal warm start (one frame sequence per video).

        Returns:
            mask_features (N, mask_dim, H'/4, W'/4) and the multi-scale features, coarse to fine,
            each (N, conv_dim, H_l, W_l).
        """
        reductions = self.warm_start_reductions()
        if not reductions:
            return self._chunked_features(frames, padded_size)
        per_video = frames_per_video or len(frames)
        if len(frames) % per_video:
            raise ValueError(f"{len(frames)} frames are not whole videos of {per_video} frames")
        masks, levels = [], []
        for start in range(0, len(frames), per_video):
            with contextlib.ExitStack() as sequences:
                for reduction in reductions:
                    sequences.enter_context(reduction.frame_sequence())
                mask_features, multi_scale = self._chunked_features(frames[start : start + per_video], padded_size)
            masks.append(mask_features)
            levels.append(multi_scale)
        if len(masks) == 1:
            return masks[0], levels[0]
        return torch.cat(masks, dim=0), [torch.cat(level, dim=0) for level in zip(*levels)]

    def _chunked_features(
        self, frames: Sequence[torch.Tensor], padded_size: Tuple[int, int]
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """:meth:`frame_features` over ``frames`` in chunks of ``frame_chunk``."""
        chunk = self.frame_chunk or len(frames)
        mask_chunks, level_chunks = [], []
        for start in range(0, len(frames), chunk):
            images = self._normalized_chunk(frames[start : start + chunk], padded_size)
            features = self.backbone(images)
            del images
            mask_features, _, multi_scale = self.sem_seg_head.pixel_decoder.forward_features(features)
            del features
            mask_chunks.append(mask_features)
            level_chunks.append(multi_scale)
        if len(mask_chunks) == 1:
            return mask_chunks[0], level_chunks[0]
        levels = [torch.cat(level, dim=0) for level in zip(*level_chunks)]
        return torch.cat(mask_chunks, dim=0), levels

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: one dict per video with "image": a list of T (C, H, W) frames in the
                model's input format (every video of a batch with the same T); for training
                "instances" with ``gt_classes`` (N,) and ``gt_masks`` (N, T, H, W) bool, one row per
                object track; for inference optionally the output "height" and "width".
                Inference takes one video per call.

        Returns:
            training: dict of weighted losses.
            inference: a list with one dict for the video: "image_size" (height, width),
              "pred_scores" (list of floats), "pred_labels" (list of contiguous class ids),
              "pred_masks" (list of (T, height, width) bool CPU tensors), at most
              ``test_topk_per_video`` of each.
        """
        if not self.training and len(batched_inputs) != 1:
            raise ValueError(
                f"VideoMaskFormer infers one video per call, got a batch of {len(batched_inputs)}; "
                f"use a test loader with batch size 1"
            )
        frames, num_frames = self._frames(batched_inputs)
        padded_size = self._padded_size(frames)
        mask_features, multi_scale = self.frame_features(frames, padded_size, num_frames)
        outputs = self.sem_seg_head.predictor(
            multi_scale, mask_features, num_videos=len(batched_inputs)
        )
        del mask_features, multi_scale

        if self.training:
            if any("instances" not in video for video in batched_inputs):
                raise ValueError("training needs 'instances' (gt_classes, gt_masks) in every video")
            targets = self.prepare_targets(batched_inputs, num_frames, padded_size)
            return self.weighted_losses(outputs, targets)

        video = batched_inputs[0]
        image_size = tuple(frames[0].shape[-2:])
        height = video.get("height", image_size[0])
        width = video.get("width", image_size[1])
        return [
            retry_if_cuda_oom(self.inference_video)(
                outputs["pred_logits"][0], outputs["pred_masks"][0], padded_size, image_size,
                (height, width),
            )
        ]

    def prepare_targets(
        self, batched_inputs: List[Dict], num_frames: int, padded_size: Tuple[int, int]
    ) -> List[Dict[str, torch.Tensor]]:
        """Per video {"labels": (N,), "masks": (N, T, H', W')}, masks zero-padded to the batch size."""
        targets = []
        for video in batched_inputs:
            instances = video["instances"].to(self.device)
            gt_masks = instances.gt_masks
            if isinstance(gt_masks, BitMasks):
                gt_masks = gt_masks.tensor
            if gt_masks.dim() != 4 or gt_masks.shape[1] != num_frames:
                raise ValueError(
                    f"video {video.get('video_id')}: 'instances.gt_masks' must be (N, {num_frames}, H, W), "
                    f"got {tuple(gt_masks.shape)}"
                )
            padded = gt_masks.new_zeros((gt_masks.shape[0], num_frames, *padded_size))
            padded[..., : gt_masks.shape[-2], : gt_masks.shape[-1]] = gt_masks
            targets.append({"labels": instances.gt_classes, "masks": padded})
        return targets

    def inference_video(
        self,
        mask_cls: torch.Tensor,
        mask_pred: torch.Tensor,
        padded_size: Tuple[int, int],
        image_size: Tuple[int, int],
        output_size: Tuple[int, int],
    ) -> Dict:
        """
        Top ``test_topk_per_video`` (query, class) pairs by class probability, as upstream (a
        query may appear with several classes, no mask-score re-weighting). They are chosen before
        the masks are upsampled, so only their tubes are resized, one at a time: memory does not
        grow with the number of queries.

        Args:
            mask_cls: (Q, K + 1) logits.
            mask_pred: (Q, T, H_m, W_m) mask logits at stride 4 of the padded frames.
            padded_size: (H', W') of the padded frames.
            image_size: (h, w) of the frames before padding.
            output_size: (height, width) of the original video.

        Returns:
            the per-video output dict of :meth:`forward`.
        """
        # Sorted, so the output order does not depend on the device.
        top_scores, labels, queries = self.top_query_classes(
            mask_cls, self.test_topk_per_video, sorted=True
        )

        masks = []
        for query in queries.tolist():
            # Frames as channels: (1, T, H_m, W_m) -> padded size -> crop -> original size.
            tube = F.interpolate(
                mask_pred[query][None], size=padded_size, mode="bilinear", align_corners=False
            )
            tube = tube[..., : image_size[0], : image_size[1]]
            tube = F.interpolate(tube, size=output_size, mode="bilinear", align_corners=False)
            masks.append((tube[0] > 0).cpu())
        return {
            "image_size": tuple(output_size),
            "pred_scores": top_scores.tolist(),
            "pred_labels": labels.tolist(),
            "pred_masks": masks,
        }
