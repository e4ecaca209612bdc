"""Training dataset mappers for Mask2Former (:class:`~expedite_vit.modeling.mask2former.MaskFormer`).

Each mapper reads an image and its ground truth, applies the same augmentations to both, and
returns the dict the meta-architecture's training forward takes: ``"image"`` (C, H, W) uint8 in
``image_format`` and ``"instances"`` with ``gt_classes`` (contiguous ids) and ``gt_masks``
(:class:`~detectron2.structures.BitMasks`), one mask per target:

* :class:`MaskFormerPanopticDatasetMapper`: every non-crowd segment of the panoptic PNG, things and
  stuff alike (dataset dicts of ``register_coco_panoptic``);
* :class:`MaskFormerInstanceDatasetMapper`: every non-crowd instance annotation, polygon or RLE
  (dataset dicts of ``register_coco_instances``);
* :class:`MaskFormerSemanticDatasetMapper`: one mask per class present in the semantic PNG
  (dataset dicts of ``load_sem_seg``).

Targets whose mask is empty after cropping are dropped: a target without pixels gives the matcher
and the mask losses nothing to fit. Leave padding to the model, which pads images and masks with
zeros per batch: use ``T.FixedSizeCrop(..., pad=False)``, since detectron2 pads RLE instance masks
with its segmentation pad value (255, i.e. foreground).

Evaluation uses detectron2's ``DatasetMapper(is_train=False)``; these mappers are for training.
"""

import copy
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from panopticapi.utils import rgb2id

import detectron2.data.transforms as T
from detectron2.data import detection_utils as utils
from detectron2.structures import BitMasks, Instances

__all__ = [
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
]


def _instances(image_size, classes: Sequence[int], masks: Sequence[np.ndarray]) -> Instances:
    """Instances with gt_classes (T,) int64 and gt_masks BitMasks (T, H, W), empty masks dropped."""
    kept = [(c, m) for c, m in zip(classes, masks) if m.any()]
    instances = Instances(image_size)
    instances.gt_classes = torch.tensor([c for c, _ in kept], dtype=torch.int64)
    if kept:
        mask_tensor = torch.from_numpy(np.ascontiguousarray(np.stack([m for _, m in kept])))
    else:
        mask_tensor = torch.zeros((0, *image_size), dtype=torch.bool)
    instances.gt_masks = BitMasks(mask_tensor)
    return instances


class _MaskFormerDatasetMapper:
    """Shared part of the mappers: read the image, augment it, and package the result."""

    def __init__(self, *, augmentations: List[T.Augmentation], image_format: str = "RGB"):
        """
        Args:
            augmentations: applied to the image and, identically, to its ground truth.
            image_format: format of the returned image ("RGB" for the official checkpoints).
        """
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format

    def __repr__(self) -> str:
        return f"{type(self).__name__}(augmentations={self.augmentations}, image_format={self.image_format!r})"

    def __call__(self, dataset_dict: Dict) -> Dict:
        # detectron2's annotation utilities rewrite annotations in place; the dataset's own dict
        # must stay as it was for the next epoch.
        return self._map(copy.deepcopy(dataset_dict))

    def _map(self, dataset_dict: Dict) -> Dict:
        raise NotImplementedError

    def _read_image(self, dataset_dict: Dict) -> np.ndarray:
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        return image

    def _augment(self, image: np.ndarray, sem_seg: Optional[np.ndarray] = None):
        """Returns (augmented image, augmented sem_seg or None, the transforms applied)."""
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        return aug_input.image, aug_input.sem_seg, transforms

    @staticmethod
    def _package(dataset_dict: Dict, image: np.ndarray, instances: Instances) -> Dict:
        mapped = {k: v for k, v in dataset_dict.items() if k not in ("annotations", "segments_info")}
        mapped["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        mapped["instances"] = instances
        return mapped


class MaskFormerPanopticDatasetMapper(_MaskFormerDatasetMapper):
    """Panoptic training targets: one (class, mask) per non-crowd segment, things and stuff.

    Reads ``pan_seg_file_name`` (COCO panoptic PNG, segment id = R + 256 G + 256^2 B) and
    ``segments_info`` (``id``, contiguous ``category_id``, ``iscrowd``). Crowd segments get no
    target, so their pixels count as background of every mask, as in Mask2Former.
    """

    def _map(self, dataset_dict: Dict) -> Dict:
        if "pan_seg_file_name" not in dataset_dict or "segments_info" not in dataset_dict:
            raise ValueError(
                f"{type(self).__name__} needs panoptic dataset dicts with 'pan_seg_file_name' and "
                f"'segments_info' (register_coco_panoptic); {dataset_dict.get('file_name')} has "
                f"keys {sorted(dataset_dict)}"
            )
        image = self._read_image(dataset_dict)
        # The RGB-encoded PNG is augmented as a 3-channel uint8 map, which every transform handles
        # with nearest-neighbour resampling; ids are decoded afterwards.
        pan_rgb = utils.read_image(dataset_dict["pan_seg_file_name"], format="RGB")
        image, pan_rgb, _ = self._augment(image, pan_rgb)
        segment_ids = rgb2id(pan_rgb)

        segments = [s for s in dataset_dict["segments_info"] if not s.get("iscrowd", 0)]
        instances = _instances(
            image.shape[:2],
            [s["category_id"] for s in segments],
            [segment_ids == s["id"] for s in segments],
        )
        return self._package(dataset_dict, image, instances)


class MaskFormerInstanceDatasetMapper(_MaskFormerDatasetMapper):
    """Instance training targets: one (class, mask) per non-crowd annotation.

    Reads ``annotations`` with ``segmentation`` as polygons or COCO RLE; the masks are rasterised
    at the augmented size.
    """

    def _map(self, dataset_dict: Dict) -> Dict:
        if "annotations" not in dataset_dict:
            raise ValueError(
                f"{type(self).__name__} needs instance dataset dicts with 'annotations' "
                f"(register_coco_instances); {dataset_dict.get('file_name')} has keys "
                f"{sorted(dataset_dict)}"
            )
        annotations = [a for a in dataset_dict["annotations"] if not a.get("iscrowd", 0)]
        if any("segmentation" not in a for a in annotations):
            raise ValueError(
                f"an annotation of {dataset_dict.get('file_name')} has no 'segmentation': "
                "Mask2Former trains on masks"
            )
        image = self._read_image(dataset_dict)
        image, _, transforms = self._augment(image)
        image_size = image.shape[:2]
        annotations = [
            utils.transform_instance_annotations(a, transforms, image_size) for a in annotations
        ]
        if annotations:
            converted = utils.annotations_to_instances(annotations, image_size, mask_format="bitmask")
            classes, masks = converted.gt_classes.tolist(), converted.gt_masks.tensor.numpy()
        else:  # annotations_to_instances leaves gt_masks out when there is no annotation
            classes, masks = [], []
        return self._package(dataset_dict, image, _instances(image_size, classes, masks))


class MaskFormerSemanticDatasetMapper(_MaskFormerDatasetMapper):
    """Semantic training targets: one (class, mask) per class present, ``ignore_label`` excluded.

    Reads ``sem_seg_file_name`` (a PNG of contiguous class ids). Pixels of ``ignore_label`` belong
    to no mask.
    """

    def __init__(
        self,
        *,
        augmentations: List[T.Augmentation],
        image_format: str = "RGB",
        ignore_label: int = 255,
    ):
        """
        Args:
            augmentations, image_format: see :class:`_MaskFormerDatasetMapper`;
                ``T.RandomCrop_CategoryAreaConstraint`` may be among the augmentations (it reads
                the semantic map).
            ignore_label: label of unannotated pixels.
        """
        super().__init__(augmentations=augmentations, image_format=image_format)
        self.ignore_label = ignore_label

    def _map(self, dataset_dict: Dict) -> Dict:
        if "sem_seg_file_name" not in dataset_dict:
            raise ValueError(
                f"{type(self).__name__} needs semantic dataset dicts with 'sem_seg_file_name' "
                f"(load_sem_seg); {dataset_dict.get('file_name')} has keys {sorted(dataset_dict)}"
            )
        image = self._read_image(dataset_dict)
        sem_seg = utils.read_image(dataset_dict["sem_seg_file_name"])
        if sem_seg.ndim != 2:
            raise ValueError(
                f"{dataset_dict['sem_seg_file_name']} is not a single-channel label map "
                f"(shape {sem_seg.shape})"
            )
        if sem_seg.dtype != np.uint8:
            # Transforms resample non-uint8 maps through float tensors; float64 keeps every
            # integer label exact.
            sem_seg = sem_seg.astype(np.float64)
        image, sem_seg, _ = self._augment(image, sem_seg)
        sem_seg = sem_seg.astype(np.int64)
        classes = [int(c) for c in np.unique(sem_seg) if c != self.ignore_label]
        instances = _instances(image.shape[:2], classes, [sem_seg == c for c in classes])
        mapped = self._package(dataset_dict, image, instances)
        mapped["sem_seg"] = torch.as_tensor(sem_seg)
        return mapped
