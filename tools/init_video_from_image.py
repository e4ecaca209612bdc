#!/usr/bin/env python
"""Make a video Mask2Former's starting checkpoint from an image Mask2Former's checkpoint.

Usage:
    python tools/init_video_from_image.py IMAGE.pth OUT.pth \\
        [--image-dataset expedite_scenes_train_panoptic] [--video-dataset expedite_videos_train]

The video model (configs/Mask2Former-VIS/builtin/) has the image model's backbone, pixel decoder
and transformer-decoder layout, so every weight is copied unchanged except the class-dependent
ones: the rows of ``sem_seg_head.predictor.class_embed`` (weight and bias) and of
``criterion.empty_weight``. The image model scores the classes of its dataset's ``stuff_classes``
(for a panoptic model: things and stuff, in contiguous-id order) plus a last "no object" row; the
video model scores its dataset's ``thing_classes`` plus "no object". Each video class takes the
image row of the class of the same name; the "no object" row stays last. A video class that the
image model does not know is an error, not a silently random row.

The output holds float32 weights only, ready for ``train_net.py ... train.init_checkpoint=OUT.pth``.
"""
import argparse
import os
from typing import Dict, List, Sequence

import torch

# The class-dependent tensors of a Mask2Former (image or video): their first dimension is
# num_classes + 1, the last entry being "no object".
CLASS_ROW_KEYS = (
    "sem_seg_head.predictor.class_embed.weight",
    "sem_seg_head.predictor.class_embed.bias",
    "criterion.empty_weight",
)


def class_rows(image_classes: Sequence[str], video_classes: Sequence[str]) -> List[int]:
    """The image model's row for each of the video model's rows.

    Args:
        image_classes: the image model's classes, in the order of its class rows.
        video_classes: the video model's classes, in the order of its class rows.

    Returns:
        ``len(video_classes) + 1`` indices into the image model's ``len(image_classes) + 1`` rows:
        one per video class (the image row of the class with the same name), then the image model's
        "no object" row (its last).

    Raises:
        ValueError: a video class is missing from the image classes, or a name is not unique.
    """
    for name, classes in (("image", image_classes), ("video", video_classes)):
        if len(set(classes)) != len(classes):
            raise ValueError(f"the {name} classes repeat a name: {list(classes)}")
    index = {name: i for i, name in enumerate(image_classes)}
    missing = [name for name in video_classes if name not in index]
    if missing:
        raise ValueError(f"video classes {missing} are not among the image classes {list(image_classes)}")
    return [index[name] for name in video_classes] + [len(image_classes)]


def slice_class_rows(
    weights: Dict[str, torch.Tensor], image_classes: Sequence[str], video_classes: Sequence[str]
) -> Dict[str, torch.Tensor]:
    """A copy of the image model's ``weights`` with the class rows of the video model.

    Every tensor of CLASS_ROW_KEYS present must have ``len(image_classes) + 1`` rows; the others are
    returned unchanged (the same tensors).
    """
    rows = torch.tensor(class_rows(image_classes, video_classes))
    out = dict(weights)
    for key in CLASS_ROW_KEYS:
        if key not in weights:
            continue
        tensor = weights[key]
        if tensor.shape[0] != len(image_classes) + 1:
            raise ValueError(
                f"{key} has {tensor.shape[0]} rows; {len(image_classes)} image classes + no-object "
                f"make {len(image_classes) + 1}"
            )
        out[key] = tensor.index_select(0, rows).clone()
    return out


def dataset_classes(name: str, kind: str) -> List[str]:
    """The classes a model trained on dataset ``name`` scores: ``kind`` "image" reads a panoptic
    dataset's ``stuff_classes`` (things and stuff) if it has them, else ``thing_classes``; "video"
    reads ``thing_classes``."""
    import expedite_vit.data  # noqa: F401  (registers the built-in image and video datasets)
    from detectron2.data import MetadataCatalog

    metadata = MetadataCatalog.get(name)
    if kind == "image" and metadata.get("stuff_classes") is not None:
        return list(metadata.stuff_classes)
    return list(metadata.thing_classes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image_checkpoint")
    parser.add_argument("target")
    parser.add_argument("--image-dataset", default="expedite_scenes_train_panoptic")
    parser.add_argument("--video-dataset", default="expedite_videos_train")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    from expedite_vit.runtime.checkpoint import CheckpointFileError, read_checkpoint

    if os.path.exists(args.target) and not args.overwrite:
        parser.error(f"{args.target} exists; pass --overwrite to replace it")
    try:
        weights = {k: torch.as_tensor(v) for k, v in read_checkpoint(args.image_checkpoint)["model"].items()}
        weights = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
        image_classes = dataset_classes(args.image_dataset, "image")
        video_classes = dataset_classes(args.video_dataset, "video")
        weights = slice_class_rows(weights, image_classes, video_classes)
    except (CheckpointFileError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    os.makedirs(os.path.dirname(os.path.abspath(args.target)), exist_ok=True)
    torch.save({"model": weights}, args.target)
    rows = class_rows(image_classes, video_classes)
    print(f"{args.target}: {len(weights)} tensors; class rows {rows} of the image model "
          f"({', '.join(video_classes)}, no object)")


if __name__ == "__main__":
    main()
