"""One evaluator for the segmentation tasks of a Mask2Former-style model.

A model such as Mask2Former returns "panoptic_seg", "instances" and "sem_seg" for the same images,
while detectron2 keeps the ground truth of each task in a dataset of its own (COCO panoptic, COCO
instances, semantic PNGs). :func:`build_segmentation_evaluator` pairs each task with the dataset
that holds its ground truth and returns detectron2's evaluators for them:

=============== ======================================= ==========================================
task            evaluator                               dataset needed (``evaluator_type``)
=============== ======================================= ==========================================
"panoptic_seg"  ``COCOPanopticEvaluator``               COCO panoptic ("coco_panoptic_seg")
"segm"          ``COCOEvaluator(tasks=("segm",))``      COCO instances json (``json_file``)
"sem_seg"       ``SemSegEvaluator``                     semantic PNGs (``sem_seg_file_name``:
                                                        "sem_seg" or "..._panoptic_with_sem_seg")
=============== ======================================= ==========================================

The test loader may read any of these datasets as long as they describe the same images:
COCOEvaluator matches predictions by ``image_id``, SemSegEvaluator by ``file_name``, the panoptic
evaluator by the PNG name derived from ``file_name``.
"""

import difflib
from typing import Mapping, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)

__all__ = ["SEGMENTATION_TASKS", "build_segmentation_evaluator"]

SEGMENTATION_TASKS = ("panoptic_seg", "segm", "sem_seg")


def _check_dataset(task: str, dataset_name: str) -> None:
    registered = DatasetCatalog.list()
    if dataset_name not in registered:
        close = difflib.get_close_matches(dataset_name, registered, n=3)
        raise ValueError(
            f"evaluation of {task!r}: dataset {dataset_name!r} is not registered"
            + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else "")
        )
    metadata = MetadataCatalog.get(dataset_name)
    evaluator_type = metadata.get("evaluator_type")
    if task == "panoptic_seg" and evaluator_type != "coco_panoptic_seg":
        raise ValueError(
            f"'panoptic_seg' needs a COCO panoptic dataset (evaluator_type 'coco_panoptic_seg'); "
            f"{dataset_name!r} has evaluator_type {evaluator_type!r}"
        )
    if task == "segm" and not metadata.get("json_file"):
        raise ValueError(
            f"'segm' needs a dataset with a COCO instances json (metadata json_file); "
            f"{dataset_name!r} (evaluator_type {evaluator_type!r}) has none"
        )
    # A panoptic dataset registered with semantic PNGs (register_panoptic_with_sem_seg) has a
    # sem_seg_root but keeps its panoptic evaluator_type.
    if task == "sem_seg" and evaluator_type != "sem_seg" and not metadata.get("sem_seg_root"):
        raise ValueError(
            f"'sem_seg' needs a semantic segmentation dataset (evaluator_type 'sem_seg', or a "
            f"panoptic one with semantic PNGs such as 'coco_2017_val_panoptic_with_sem_seg'); "
            f"{dataset_name!r} has evaluator_type {evaluator_type!r} and no sem_seg_root"
        )


def build_segmentation_evaluator(
    datasets: Mapping[str, str],
    *,
    output_dir: Optional[str] = None,
    max_dets_per_image: int = 100,
) -> DatasetEvaluator:
    """
    Args:
        datasets: task -> name of the registered dataset holding its ground truth, tasks among
            "panoptic_seg", "segm" and "sem_seg", e.g.
            ``{"panoptic_seg": "coco_2017_val_panoptic", "segm": "coco_2017_val"}``.
        output_dir: where the evaluators write their predictions (none written when None).
        max_dets_per_image: instance predictions kept per image by COCOEvaluator.

    Returns:
        the evaluator of the single task, or a DatasetEvaluators of all of them; its results are
        ``{"panoptic_seg": {"PQ", ...}, "segm": {"AP", ...}, "sem_seg": {"mIoU", ...}}`` for the
        tasks asked.
    """
    if not datasets:
        raise ValueError(f"no task to evaluate: give datasets for some of {SEGMENTATION_TASKS}")
    unknown = sorted(set(datasets) - set(SEGMENTATION_TASKS))
    if unknown:
        raise ValueError(f"unknown evaluation tasks {unknown}; choose among {SEGMENTATION_TASKS}")
    evaluators = []
    for task in SEGMENTATION_TASKS:
        if task not in datasets:
            continue
        dataset_name = datasets[task]
        _check_dataset(task, dataset_name)
        if task == "panoptic_seg":
            evaluators.append(COCOPanopticEvaluator(dataset_name, output_dir=output_dir))
        elif task == "segm":
            evaluators.append(
                COCOEvaluator(
                    dataset_name,
                    tasks=("segm",),
                    output_dir=output_dir,
                    max_dets_per_image=max_dets_per_image,
                    # The fast implementation is a compiled extension this install does not have.
                    use_fast_impl=False,
                )
            )
        else:
            evaluators.append(SemSegEvaluator(dataset_name, output_dir=output_dir))
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
