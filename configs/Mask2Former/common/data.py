# Data loaders and evaluators of the Mask2Former configs.
#
# Test time is detectron2's DatasetMapper with one ResizeShortestEdge, as in the official configs
# (COCO: detectron2's default INPUT.MIN_SIZE_TEST 800 / MAX_SIZE_TEST 1333; ADE20K res640: 640 /
# 2560). Training uses the mappers of expedite_vit.data.mask2former_mappers with the official
# augmentations: COCO large-scale jitter at 1024 (flip, ResizeScale 0.1-2.0, 1024 crop),
# ADE20K resize of the short edge to 320..1280, 640 crop, photometric jitter, flip.
#
# Datasets are detectron2's built-in registrations under $DETECTRON2_DATASETS:
# coco_2017_{train,val}_panoptic (coco/panoptic_{split}2017 + annotations/panoptic_{split}2017.json),
# coco_2017_val_panoptic_with_sem_seg (registered by expedite_vit.data: + coco/panoptic_semseg_val2017),
# coco_2017_{train,val} (instances), ade20k_sem_seg_{train,val}
# (ADEChallengeData2016/images + annotations_detectron2, made by detectron2's
# datasets/prepare_ade20k_sem_seg.py).
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from omegaconf import OmegaConf

from expedite_vit.data.mask2former_mappers import (
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)
from expedite_vit.evaluation import build_segmentation_evaluator


def lsj_augmentations(image_size, min_scale=0.1, max_scale=2.0):
    """Large-scale jitter. Crops are not padded: the model pads each batch (with zeros after
    normalisation, where upstream pads crops with grey first)."""
    return [
        L(T.RandomFlip)(horizontal=True),
        L(T.ResizeScale)(
            min_scale=min_scale, max_scale=max_scale, target_height=image_size, target_width=image_size
        ),
        L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
    ]


def train_loader(dataset_names, mapper, *, total_batch_size=16, num_workers=4):
    return L(build_detection_train_loader)(
        # Panoptic and semantic dicts have no "annotations", and detectron2 filters only those
        # that do: images without instances are dropped from instance datasets only.
        dataset=L(get_detection_dataset_dicts)(names=dataset_names, filter_empty=True),
        mapper=mapper,
        total_batch_size=total_batch_size,
        num_workers=num_workers,
    )


def test_loader(dataset_names, *, short_edge_length, max_size, num_workers=4):
    return L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=dataset_names, filter_empty=False),
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=short_edge_length, max_size=max_size)],
            image_format="RGB",
        ),
        num_workers=num_workers,
    )


def coco_panoptic_dataloader():
    """COCO panoptic, evaluated as upstream evaluates its panoptic models: PQ, mask AP, and mIoU on
    coco_2017_val_panoptic_with_sem_seg (semantic PNGs made from the panoptic ones once, by
    tools/prepare_panoptic_semantic.py coco_2017_val_panoptic)."""
    dataloader = OmegaConf.create()
    dataloader.train = train_loader(
        "coco_2017_train_panoptic",
        L(MaskFormerPanopticDatasetMapper)(augmentations=lsj_augmentations(1024), image_format="RGB"),
    )
    dataloader.test = test_loader("coco_2017_val_panoptic", short_edge_length=800, max_size=1333)
    # Instances are scored against coco_2017_val: the same images and image ids, and the
    # 80 thing classes come first in COCO panoptic, so their contiguous ids agree.
    dataloader.evaluator = L(build_segmentation_evaluator)(
        datasets={
            "panoptic_seg": "coco_2017_val_panoptic",
            "segm": "coco_2017_val",
            "sem_seg": "coco_2017_val_panoptic_with_sem_seg",
        }
    )
    return dataloader


def coco_instance_dataloader():
    dataloader = OmegaConf.create()
    dataloader.train = train_loader(
        "coco_2017_train",
        L(MaskFormerInstanceDatasetMapper)(augmentations=lsj_augmentations(1024), image_format="RGB"),
    )
    dataloader.test = test_loader("coco_2017_val", short_edge_length=800, max_size=1333)
    dataloader.evaluator = L(build_segmentation_evaluator)(datasets={"segm": "coco_2017_val"})
    return dataloader


def ade20k_semantic_dataloader(crop_size=640):
    """ADE20K-150 at a crop size of ``crop_size`` (the res640 models: 640, tested at 640 / 2560)."""
    dataloader = OmegaConf.create()
    dataloader.train = train_loader(
        "ade20k_sem_seg_train",
        L(MaskFormerSemanticDatasetMapper)(
            augmentations=[
                L(T.ResizeShortestEdge)(
                    short_edge_length=[int(crop_size * x / 10) for x in range(5, 21)],
                    max_size=4 * crop_size,
                    sample_style="choice",
                ),
                L(T.RandomCrop_CategoryAreaConstraint)(
                    crop_type="absolute",
                    crop_size=(crop_size, crop_size),
                    single_category_max_area=1.0,
                    ignored_category=255,
                ),
                # Upstream's SSD colour jitter (brightness, contrast, saturation, hue); detectron2
                # has the first three.
                L(T.RandomBrightness)(intensity_min=0.875, intensity_max=1.125),
                L(T.RandomContrast)(intensity_min=0.5, intensity_max=1.5),
                L(T.RandomSaturation)(intensity_min=0.5, intensity_max=1.5),
                L(T.RandomFlip)(horizontal=True),
            ],
            image_format="RGB",
            ignore_label=255,
        ),
    )
    dataloader.test = test_loader(
        "ade20k_sem_seg_val", short_edge_length=crop_size, max_size=4 * crop_size
    )
    dataloader.evaluator = L(build_segmentation_evaluator)(datasets={"sem_seg": "ade20k_sem_seg_val"})
    return dataloader
