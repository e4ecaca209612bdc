"""Real images for running a model the way detectron2's predictor and test loader do.

Images come from files (paths or globs), from a registered dataset (through the config's test
mapper, so ground truth stays attached for evaluation), or from photographs bundled with
scikit-image when nothing is given. Timing and fidelity on real images matter here: token
clustering merges similar tokens, so random noise would make it look worse than it is.
"""
from __future__ import annotations

import glob
import logging
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from omegaconf import DictConfig

__all__ = [
    "ImageInputError",
    "backbone_inputs",
    "dataset_inputs",
    "expand_image_paths",
    "file_inputs",
    "has_annotations",
    "inference_augmentations",
    "load_image",
    "model_input_format",
    "photograph_inputs",
    "predictor_input",
    "split_trailing_overrides",
]

logger = logging.getLogger(__name__)

# Bundled with scikit-image (no download), with COCO-like content: person, cat, cup, rocket.
PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket", "camera")
_GLOB_CHARS = ("*", "?", "[")
_OVERRIDE = re.compile(r"^\+{0,2}[A-Za-z_][\w.]*=")


class ImageInputError(ValueError):
    """An image, pattern or dataset that cannot be used as input; the message names it."""


def expand_image_paths(patterns: Sequence[str]) -> List[str]:
    """Paths of the images named by ``patterns`` (files or globs), in the order given.

    Raises ImageInputError for a glob that matches nothing or a plain path that is not a file,
    rather than running on fewer images than the user meant.
    """
    paths = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if any(c in expanded for c in _GLOB_CHARS):
            matches = sorted(p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
            if not matches:
                raise ImageInputError(f"no image file matches {pattern!r}")
            paths.extend(matches)
        elif os.path.isfile(expanded):
            paths.append(expanded)
        else:
            raise ImageInputError(f"image file {pattern!r} does not exist")
    return paths


def split_trailing_overrides(inputs: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Split ``key=value`` config overrides off the end of an ``--input`` list.

    argparse gives every word after ``--input`` to it, so trailing overrides, written as for
    train_net.py, would land among the images; a word that is an existing file stays an input.
    """
    inputs = list(inputs)
    split = len(inputs)
    while split > 0 and _OVERRIDE.match(inputs[split - 1]) and not os.path.exists(inputs[split - 1]):
        split -= 1
    return inputs[:split], inputs[split:]


def load_image(path: str, image_format: str) -> np.ndarray:
    """detectron2's read_image (EXIF orientation, grayscale to 3 channels when the format has 3),
    with an error naming the file when it is not a readable image."""
    try:
        return read_image(path, format=image_format)
    except OSError as error:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        message = f"cannot read image {path!r} (not an image, or damaged): {error}"
        raise ImageInputError(message) from error


def model_input_format(model: torch.nn.Module, cfg: DictConfig) -> str:
    """The channel order the model takes: its ``input_format``, else the test mapper's."""
    image_format = getattr(model, "input_format", None)
    if image_format is None:
        image_format = cfg.dataloader.test.mapper.get("image_format", "BGR")
    return image_format


def inference_augmentations(cfg: DictConfig) -> T.AugmentationList:
    """The config's test-time augmentation (resizing), as a predictor applies it."""
    return T.AugmentationList(instantiate(cfg.dataloader.test.mapper.augmentations))


def predictor_input(image: np.ndarray, augmentations: T.AugmentationList) -> Dict:
    """One model input from an HWC uint8 image in the model's format, as DefaultPredictor makes it:
    the augmented image as a CHW float tensor, and the original size for the outputs."""
    height, width = image.shape[:2]
    aug_input = T.AugInput(image)
    augmentations(aug_input)
    tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)).astype("float32"))
    return {"image": tensor, "height": height, "width": width}


def photograph_inputs(count: int, image_format: str, augmentations: T.AugmentationList) -> List[Dict]:
    """Up to ``count`` photographs bundled with scikit-image, as model inputs."""
    from skimage import data  # only needed when no images are given

    if count > len(PHOTOGRAPHS):
        logger.warning(f"only {len(PHOTOGRAPHS)} bundled photographs; using {len(PHOTOGRAPHS)} images")
    inputs = []
    for name in PHOTOGRAPHS[:count]:
        rgb = getattr(data, name)()
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
        image = rgb[:, :, ::-1] if image_format == "BGR" else rgb
        model_input = predictor_input(image, augmentations)
        model_input["file_name"] = f"skimage.data.{name}"
        inputs.append(model_input)
    return inputs


def file_inputs(paths: Sequence[str], image_format: str, augmentations: T.AugmentationList) -> List[Dict]:
    """The images at ``paths`` (see :func:`expand_image_paths`), as model inputs."""
    inputs = []
    for path in paths:
        model_input = predictor_input(load_image(path, image_format), augmentations)
        model_input["file_name"] = path
        inputs.append(model_input)
    return inputs


def has_annotations(dataset_dicts: Sequence[Dict]) -> bool:
    """Whether the dataset carries ground truth an evaluator can score against."""
    keys = ("annotations", "sem_seg_file_name", "pan_seg_file_name")
    return any(key in d for d in dataset_dicts for key in keys)


def dataset_inputs(cfg: DictConfig, dataset_name: str, count: int) -> List[Dict]:
    """The first ``count`` images of a registered dataset, through the config's test mapper."""
    if dataset_name not in DatasetCatalog.list():
        raise ImageInputError(
            f"dataset {dataset_name!r} is not registered (is the config or module that registers it loaded?)"
        )
    dataset_dicts = DatasetCatalog.get(dataset_name)[:count]
    if not dataset_dicts:
        raise ImageInputError(f"dataset {dataset_name!r} has no images")
    mapper = instantiate(cfg.dataloader.test.mapper)
    return [mapper(d) for d in dataset_dicts]


def backbone_inputs(
    model: torch.nn.Module, inputs: Sequence[Dict], image_size: Optional[int]
) -> List[torch.Tensor]:
    """What the model's backbone receives for each input: normalised and padded by the model's own
    ``preprocess_image``, or, with ``image_size``, the unpadded image resized to a square."""
    if not hasattr(model, "preprocess_image"):
        raise TypeError(f"{type(model).__name__} has no preprocess_image; cannot build its backbone inputs")
    tensors = []
    for model_input in inputs:
        images = model.preprocess_image([model_input])
        if image_size is None:
            tensors.append(images.tensor)
            continue
        height, width = images.image_sizes[0]
        unpadded = images.tensor[..., :height, :width]
        square = F.interpolate(unpadded, size=(image_size, image_size), mode="bilinear", align_corners=False)
        tensors.append(square)
    return tensors
