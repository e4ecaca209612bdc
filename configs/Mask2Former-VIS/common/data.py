# Data loaders and evaluator of the Mask2Former-VIS configs: YouTube-VIS format datasets
# (expedite_vit.data.ytvis), the video mapper (expedite_vit.data.video_mapper), one video per test
# batch, YTVISEvaluator (AP on labelled splits; results.json / results.zip for the evaluation
# server on the official valid splits, which have no labels).
#
# As upstream: test frames resized to a short edge of MIN_SIZE_TEST (max 1333); training clips of
# SAMPLING_FRAME_NUM 2 frames within 20 frames of each other, one short edge from (360, 480) and one
# flip per clip.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from omegaconf import OmegaConf

from expedite_vit.data.video_mapper import YTVISDatasetMapper
from expedite_vit.evaluation import YTVISEvaluator


def video_dataset(names):
    # Video dicts hold per-frame annotation lists, which detectron2's empty-image filter and class
    # histogram do not read.
    return L(get_detection_dataset_dicts)(names=names, filter_empty=False, check_consistency=False)


def video_train_loader(
    dataset_name, augmentations, *, sampling_frame_num=2, total_batch_size=16, num_workers=4
):
    return L(build_detection_train_loader)(
        dataset=video_dataset(dataset_name),
        mapper=L(YTVISDatasetMapper)(
            is_train=True,
            augmentations=augmentations,
            image_format="RGB",
            sampling_frame_num=sampling_frame_num,
            sampling_frame_range=20,
        ),
        total_batch_size=total_batch_size,
        num_workers=num_workers,
    )


def video_test_loader(dataset_name, *, short_edge_length, max_size=1333, num_workers=4):
    return L(build_detection_test_loader)(
        dataset=video_dataset(dataset_name),
        mapper=L(YTVISDatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=short_edge_length, max_size=max_size)],
            image_format="RGB",
        ),
        batch_size=1,  # the model takes one video per call at test time
        num_workers=num_workers,
    )


def ytvis_dataloader(year, *, test_short_edge):
    """ytvis_<year>_train / ytvis_<year>_val under $DETECTRON2_DATASETS."""
    dataloader = OmegaConf.create()
    dataloader.train = video_train_loader(
        f"ytvis_{year}_train",
        [
            L(T.ResizeShortestEdge)(short_edge_length=(360, 480), max_size=1333, sample_style="choice"),
            L(T.RandomFlip)(horizontal=True),
        ],
    )
    dataloader.test = video_test_loader(f"ytvis_{year}_val", short_edge_length=test_short_edge)
    dataloader.evaluator = L(YTVISEvaluator)(dataset_name=f"ytvis_{year}_val", output_dir=None)
    return dataloader
