"""The dataset mapper of video instance segmentation (Mask2Former-VIS,
:class:`~expedite_vit.modeling.mask2former_video.VideoMaskFormer`), for the YouTube-VIS format
dataset dicts of :func:`expedite_vit.data.load_ytvis_json`.

* Test: every frame of the video, each resized by the same (deterministic) augmentations.
* Train: ``sampling_frame_num`` frames around a random reference frame, one augmentation decision
  (resize, flip, ...) for the whole clip, and one target per object track seen in the clip.
"""

import copy
from typing import Dict, List, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch

import detectron2.data.transforms as T
from detectron2.data import detection_utils as utils
from detectron2.structures import Instances

__all__ = ["YTVISDatasetMapper"]


class YTVISDatasetMapper:
    """
    Reads the frames of a video dict and returns what the model takes: "image", a list of T
    (C, H, W) uint8 tensors in ``image_format``, plus "height", "width", "length", "video_id" and
    "file_names" (the frames read). For training, also "instances" with ``gt_classes`` (N,),
    ``gt_ids`` (N,) track ids and ``gt_masks`` (N, T, H, W) bool: one row per track that has a
    mask in at least one of the sampled frames (empty in frames where it has none).
    """

    def __init__(
        self,
        *,
        is_train: bool,
        augmentations: List[T.Augmentation],
        image_format: str = "RGB",
        sampling_frame_num: int = 2,
        sampling_frame_range: int = 20,
        sampling_frame_shuffle: bool = False,
    ):
        """
        Args:
            is_train: sample a clip and build targets (True), or read every frame (False).
            augmentations: applied alike to every frame of a clip (and its masks).
            image_format: detectron2's read_image format of the frames given to the model.
            sampling_frame_num: frames per training clip (2 in the official configs).
            sampling_frame_range: training frames are drawn within this many frames of the
                reference frame.
            sampling_frame_shuffle: keep the drawn frames in random order instead of time order.
        """
        if sampling_frame_num < 1 or sampling_frame_range < 0:
            raise ValueError(
                f"sampling_frame_num must be >= 1 and sampling_frame_range >= 0, got "
                f"{sampling_frame_num} and {sampling_frame_range}"
            )
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.sampling_frame_num = sampling_frame_num
        self.sampling_frame_range = sampling_frame_range
        self.sampling_frame_shuffle = sampling_frame_shuffle

    def _sample_frames(self, length: int) -> List[int]:
        """Indices of a training clip: a random reference frame and the rest drawn near it,
        without repeats unless the video has too few frames within range."""
        reference = int(np.random.randint(length))
        lo = max(0, reference - self.sampling_frame_range)
        hi = min(length, reference + self.sampling_frame_range + 1)
        candidates = [i for i in range(lo, hi) if i != reference] or [reference]
        needed = self.sampling_frame_num - 1
        others = np.random.choice(candidates, needed, replace=len(candidates) < needed).tolist()
        frames = [reference] + [int(i) for i in others]
        if self.sampling_frame_shuffle:
            np.random.shuffle(frames)
        else:
            frames.sort()
        return frames

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        length = dataset_dict["length"]
        file_names = dataset_dict["file_names"]
        if len(file_names) != length:
            raise ValueError(
                f"video {dataset_dict.get('video_id')}: 'file_names' has {len(file_names)} entries, "
                f"'length' is {length}"
            )
        indices = self._sample_frames(length) if self.is_train else list(range(length))

        images, transforms = [], None
        for t in indices:
            image = utils.read_image(file_names[t], format=self.image_format)
            # Names the file and the expected size when a frame differs from the video's size.
            utils.check_image_size({**dataset_dict, "file_name": file_names[t]}, image)
            if transforms is None:  # one decision for the whole clip
                aug_input = T.AugInput(image)
                transforms = self.augmentations(aug_input)
                image = aug_input.image
            else:
                image = transforms.apply_image(image)
            images.append(torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))))

        result = {
            "image": images,
            "height": dataset_dict["height"],
            "width": dataset_dict["width"],
            "length": len(indices) if self.is_train else length,
            "video_id": dataset_dict["video_id"],
            "file_names": [file_names[t] for t in indices],
        }
        if self.is_train:
            if "annotations" not in dataset_dict:
                raise ValueError(f"video {dataset_dict['video_id']}: training needs 'annotations'")
            frame_annotations = [dataset_dict["annotations"][t] for t in indices]
            result["instances"] = self._track_instances(
                frame_annotations, transforms, (dataset_dict["height"], dataset_dict["width"]),
                tuple(images[0].shape[-2:]),
            )
        return result

    def _track_instances(
        self,
        frame_annotations: Sequence[Sequence[Dict]],
        transforms: T.TransformList,
        original_size: tuple,
        image_size: tuple,
    ) -> Instances:
        """One target per track id seen in the clip, in order of first appearance."""
        num_frames = len(frame_annotations)
        tracks: Dict[int, Dict] = {}
        for t, objects in enumerate(frame_annotations):
            for obj in objects:
                if obj.get("iscrowd", 0):
                    continue
                track = tracks.setdefault(
                    obj["id"],
                    {"category_id": obj["category_id"], "masks": [None] * num_frames},
                )
                mask = _decode(obj["segmentation"], *original_size)
                track["masks"][t] = transforms.apply_segmentation(mask).astype(bool)

        classes, ids, masks = [], [], []
        empty = np.zeros(image_size, dtype=bool)
        for track_id, track in tracks.items():
            tube = np.stack([m if m is not None else empty for m in track["masks"]])
            if not tube.any():  # nothing left after cropping: nothing to fit
                continue
            classes.append(track["category_id"])
            ids.append(track_id)
            masks.append(tube)
        instances = Instances(image_size)
        instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
        instances.gt_ids = torch.tensor(ids, dtype=torch.int64)
        instances.gt_masks = (
            torch.from_numpy(np.stack(masks)) if masks
            else torch.zeros((0, num_frames, *image_size), dtype=torch.bool)
        )
        return instances


def _decode(segmentation, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 mask of a compressed RLE or a list of polygons."""
    if isinstance(segmentation, list):
        segmentation = mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    return mask_util.decode(segmentation).astype(np.uint8)
