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

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import _apply_exif_orientation, convert_PIL_to_numpy
from omegaconf import DictConfig
from PIL import Image

__all__ = [
    "MIN_IMAGE_SIDE",
    "ImageInputError",
    "available_images",
    "backbone_inputs",
    "check_num_images",
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
# Smallest image side accepted: two 16-pixel patches. Below this a picture carries no content a
# detector could find (the test-time resize would blow each pixel up into a flat block).
MIN_IMAGE_SIDE = 32
# 16 bits per channel map to 8 by v / 257 (rounded), the inverse of the v * 257 that widens
# 8-bit data to 16 bits: 0 -> 0, 65535 -> 255, and an 8-bit image saved as 16 bits comes back.
_UINT16_PER_UINT8 = 257


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


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _rawmode(image: Image.Image) -> str:
    """How the file stores its pixels, e.g. "RGB;16B" for a 48-bit PNG ("" when unknown)."""
    args = image.tile[0].args if image.tile else None
    args = args[0] if isinstance(args, tuple) and args else args
    return args if isinstance(args, str) else ""


def _to_8_bits(pixels: np.ndarray) -> np.ndarray:
    """uint16 pixels -> uint8, by v / 257 rounded (see ``_UINT16_PER_UINT8``)."""
    scaled = np.rint(pixels.astype(np.float32) / _UINT16_PER_UINT8)
    return scaled.astype(np.uint8)


def _decode_16_bit(path: str, image: Image.Image) -> Image.Image:
    """A 16-bit image as an 8-bit PIL image ("L" or "RGB"), EXIF orientation applied.

    PIL's own conversion clips 16-bit grey to 0 or 255 (a white picture), and keeps only the
    high byte of 16-bit colour; grey is read by PIL as uint16, colour by OpenCV (which applies
    the EXIF orientation itself with these flags).
    """
    if image.mode.startswith("I;16"):
        pixels = np.asarray(_apply_exif_orientation(image)).astype(np.uint16)
        return Image.fromarray(_to_8_bits(pixels), "L")
    pixels = cv2.imread(path, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if pixels is None or pixels.dtype != np.uint16:
        raise ImageInputError(f"cannot read the 16-bit image {path!r}; save it with 8 bits per channel")
    if pixels.ndim == 2:
        return Image.fromarray(_to_8_bits(pixels), "L")
    return Image.fromarray(np.ascontiguousarray(_to_8_bits(pixels[:, :, 2::-1])), "RGB")  # BGR(A) -> RGB


def load_image(path: str, image_format: str, min_side: int = MIN_IMAGE_SIDE) -> np.ndarray:
    """An image file as an HWC uint8 array in ``image_format``, like detectron2's read_image (EXIF
    orientation, grayscale to 3 channels when the format has 3), and:

    - 16 bits per channel scaled to 8 (v / 257), where PIL would clip grey to white;
    - 32-bit integer or float images refused (their value range is unknown);
    - images smaller than ``min_side`` pixels on a side refused;

    all with an :class:`ImageInputError` naming the file.
    """
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            width, height = image.size
            if min(width, height) < min_side:
                raise ImageInputError(
                    f"image {path!r} is {width}x{height} pixels, too small: "
                    f"at least {min_side} pixels on each side are needed"
                )
            if image.mode in ("I", "F") and not _rawmode(image).startswith("I;16"):
                raise ImageInputError(
                    f"image {path!r} has 32-bit pixels (PIL mode {image.mode}) of unknown range; "
                    "save it with 8 or 16 bits per channel"
                )
            if image.mode.startswith("I") or _rawmode(image).endswith(("16B", "16L", "16N", ";16")):
                image = _decode_16_bit(path, image)
            else:
                image = _apply_exif_orientation(image)
            return convert_PIL_to_numpy(image, image_format)
    # PIL's UnidentifiedImageError and truncated files are OSErrors; damaged headers can raise
    # others, and a decompression bomb its own error.
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        if isinstance(error, ImageInputError):
            raise
        message = f"cannot read image {path!r} (not an image, or damaged): {_one_line(error)}"
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
    """The first ``count`` photographs bundled with scikit-image, as model inputs."""
    from skimage import data  # only needed when no images are given

    check_num_images(count, len(PHOTOGRAPHS), "the set of bundled photographs")
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
    """Whether the images carry ground truth an evaluator can score against: some object
    annotation (COCO loaders give every image an "annotations" list, empty when unlabelled), or
    semantic / panoptic label files."""
    files = ("sem_seg_file_name", "pan_seg_file_name")
    return any(d.get("annotations") or any(d.get(key) for key in files) for d in dataset_dicts)


def check_num_images(wanted: int, available: int, source: str) -> None:
    """Raise ImageInputError when ``wanted`` images are asked of a ``source`` holding fewer:
    a run on fewer images than asked would report numbers for a different set."""
    if wanted > available:
        plural = "" if available == 1 else "s"
        raise ImageInputError(
            f"--num-images {wanted}, but {source} has only {available} image{plural}; ask for at most {available}"
        )


def _registered_dataset(dataset_name: str) -> List[Dict]:
    if dataset_name not in DatasetCatalog.list():
        raise ImageInputError(
            f"dataset {dataset_name!r} is not registered (is the config or module that registers it loaded?)"
        )
    dataset_dicts = DatasetCatalog.get(dataset_name)
    if not dataset_dicts:
        raise ImageInputError(f"dataset {dataset_name!r} has no images")
    return dataset_dicts


def available_images(dataset: Optional[str], patterns: Sequence[str]) -> Tuple[int, str]:
    """How many images a run can take, and from what: a registered dataset, image files or globs,
    else the bundled photographs. Raises ImageInputError for an unknown dataset or a bad pattern."""
    if dataset:
        return len(_registered_dataset(dataset)), f"dataset {dataset!r}"
    if patterns:
        return len(expand_image_paths(patterns)), "--input"
    return len(PHOTOGRAPHS), "the set of bundled photographs"


def dataset_inputs(cfg: DictConfig, dataset_name: str, count: int) -> List[Dict]:
    """The first ``count`` images of a registered dataset, through the config's test mapper."""
    dataset_dicts = _registered_dataset(dataset_name)
    check_num_images(count, len(dataset_dicts), f"dataset {dataset_name!r}")
    dataset_dicts = dataset_dicts[:count]
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
