"""Is a registered dataset on disk? Checked from its metadata before a run writes anything, so
that a missing dataset is one line naming the dataset and the path, not a traceback from deep
inside a loader after the output folder was claimed."""
import os
from typing import Iterable, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["DATASET_PATH_KEYS", "DatasetMissingError", "check_datasets_present", "dataset_names"]

# The metadata fields in which detectron2's register_* helpers (and ours) record the files a
# dataset's loader reads.
DATASET_PATH_KEYS = ("json_file", "image_root", "panoptic_json", "panoptic_root", "sem_seg_root")


class DatasetMissingError(FileNotFoundError):
    """A registered dataset's files are not where its registration points; the message names the
    dataset, the path and how to get it."""


def _default_hint(name: str) -> str:
    root = os.getenv("DETECTRON2_DATASETS", "datasets")
    return (
        f"put the dataset there, or point $DETECTRON2_DATASETS (now {root!r}) at the folder holding it "
        f"(the layout of {name!r} is in the datasets/README.md of detectron2, or of Mask2Former for YouTube-VIS)"
    )


def check_datasets_present(names: Union[str, Sequence[str]]) -> None:
    """Raise :class:`DatasetMissingError` for the first of ``names`` that is not registered or
    whose registered files (:data:`DATASET_PATH_KEYS`) do not exist. A registration may say how to
    make the dataset in its metadata field ``missing_hint`` (the built-in generated ones do)."""
    for name in [names] if isinstance(names, str) else names:
        if name not in DatasetCatalog:
            known = ", ".join(sorted(DatasetCatalog.list()))
            raise DatasetMissingError(f"dataset {name!r} is not registered; registered datasets: {known}")
        metadata = MetadataCatalog.get(name)
        for key in DATASET_PATH_KEYS:
            path = metadata.get(key, None)
            if path and not os.path.exists(path):
                hint = metadata.get("missing_hint", None) or _default_hint(name)
                raise DatasetMissingError(f"dataset {name!r}: its {key} {path} does not exist; {hint}")


def dataset_names(node) -> Iterable[str]:
    """The dataset names of a loader's config node (``dataloader.test`` or ``.train``), if any."""
    dataset = node.get("dataset", None) if node is not None else None
    names = dataset.get("names", None) if dataset is not None and hasattr(dataset, "get") else None
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)
