#!/usr/bin/env python
"""
Run a LazyConfig model (e.g. expedited ViTDet) on images or a video and draw its predictions.

With --compare, each output shows three panels side by side: the baseline's predictions (token
reduction off), the expedited model's, and the token clusters (every patch coloured by the
cluster it was merged into), so one sees what the method did and what it changed.

Usage:
    python demo/demo.py --config-file configs/ViTDet/COCO/mask_rcnn_vitdet_b_100ep.py \\
        --input photos/*.jpg --output out/ --compare train.init_checkpoint=model_final.pkl
    python demo/demo.py --config-file CONFIG --video-input clip.mp4 --output clip_pred.mp4 \\
        train.init_checkpoint=model_final.pkl

An image model draws a video frame by frame. A video instance segmentation model (Mask2Former-VIS)
sees the whole clip at once, from --video-input or from frame images given to --input (in the
order given), and its tracks are drawn: each track in one colour on every frame where it has a
mask, with its class and score; with --compare, baseline | expedited. The output is a video.

Existing output files are never replaced unless --overwrite is given. Images that cannot be used
(unreadable, smaller than 32 pixels on a side) are skipped and listed at the end, and the exit
status is then 1. 16-bit images are scaled to 8 bits (v / 257). Drawings are at most
--max-draw-size pixels on the long side (1600 by default): detectron2's Visualizer needs memory in
proportion to the pixels drawn, some gigabytes for a 12-megapixel photograph.
"""
import argparse
import logging
import os
import sys
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

import cv2
import numpy as np
import torch
import tqdm
from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate

from expedite_vit.modeling.mask2former_video import VideoMaskFormer
from expedite_vit.runtime.cli import USER_ERRORS, load_checked_config, tool_parser
from expedite_vit.runtime.config import ConfigError
from expedite_vit.runtime.inputs import (
    ImageInputError,
    expand_image_paths,
    inference_augmentations,
    load_image,
    model_input_format,
    predictor_input,
    split_trailing_overrides,
)
from expedite_vit.runtime.models import OutputRecorder, build_model, build_model_pair, token_reduction_modules
from expedite_vit.visualization import (
    PREDICTION_KINDS,
    PredictionKindError,
    add_caption,
    describe_reduced_tokens,
    draw_predictions,
    draw_token_clusters,
    token_labels,
    side_by_side,
    to_rgb,
)
from expedite_vit.video_visualization import draw_video_tracks, matched_track_colours, select_tracks, track_colours

logger = logging.getLogger("expedite_vit.demo")

# Containers OpenCV's stock builds can write, and the codec for each.
VIDEO_FOURCC = {".mp4": "mp4v", ".avi": "MJPG"}
# Frame images have no frame rate; YouTube-VIS labels every 5th frame of 30-fps videos.
FRAME_LIST_FPS = 6.0
# Longest side of a drawing, by default: enough to read a 1080p screen, and it keeps the
# Visualizer (a matplotlib canvas plus every mask at drawing size) near a few hundred MB.
MAX_DRAW_SIZE = 1600


def parse_args(argv=None):
    parser = tool_parser(__file__, __doc__)
    add = parser.add_argument
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+",
                        help="image files or globs, e.g. 'photos/*.jpg' (a video model: the frames of one video)")
    source.add_argument("--video-input", metavar="FILE", help="a video file")
    add("--output", required=True,
        help="output folder (created if needed), or file for one image or a video (.mp4 or .avi)")
    add("--confidence-threshold", type=float, default=0.5, help="minimum score of drawn instances")
    add("--task", choices=("auto", *PREDICTION_KINDS), default="auto",
        help="what to draw (auto: panoptic if the model gives it, else semantic and instances)")
    add("--compare", action="store_true", help="baseline | expedited | token clusters, side by side")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    add("--overwrite", action="store_true", help="replace existing output files")
    add("--max-draw-size", type=int, default=MAX_DRAW_SIZE, metavar="PIXELS",
        help=f"draw larger images scaled down to this long side (default {MAX_DRAW_SIZE}; 0: never scale)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides, key=value")
    args = parser.parse_args(argv)
    if args.input:
        args.input, trailing_opts = split_trailing_overrides(args.input)
        args.opts = trailing_opts + args.opts
    args.opts = [o for o in args.opts if o != "--"]
    if args.max_draw_size < 0:
        parser.error(f"--max-draw-size must be 0 (never scale) or a number of pixels, got {args.max_draw_size}")
    return parser, args


def _writable_folder(folder: str) -> str:
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"output {folder!r} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise PermissionError(f"cannot create output folder {folder!r}: {error.strerror}") from error
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"output folder {folder!r} is not writable")
    return folder


def _check_new_file(path: str, source: str, overwrite: bool) -> str:
    """``path`` if the drawing of ``source`` may be written there."""
    if os.path.abspath(path) == os.path.abspath(source):
        raise ValueError(f"the output {path!r} is the input itself; choose another --output")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"output file {path!r} exists; pass --overwrite to replace it")
    _writable_folder(os.path.dirname(os.path.abspath(path)))
    return path


def image_output_paths(inputs: List[str], output: str, overwrite: bool) -> List[str]:
    """Where each input's drawing goes: ``output`` itself for one input given as a file name,
    else ``output/<input name>`` (as PNG when OpenCV cannot write the input's format)."""
    names_a_file = bool(os.path.splitext(output)[1]) and not os.path.isdir(output)
    if names_a_file and cv2.haveImageWriter(output):
        if len(inputs) > 1:
            raise ValueError(f"{len(inputs)} inputs need --output to be a folder, not the file {output!r}")
        return [_check_new_file(output, inputs[0], overwrite)]
    if names_a_file and len(inputs) == 1:
        raise ValueError(f"cannot write images of type {os.path.splitext(output)[1]!r}: {output!r}")
    _writable_folder(output)
    paths = []
    for source in inputs:
        name = os.path.basename(source)
        if not cv2.haveImageWriter(name):
            name = os.path.splitext(name)[0] + ".png"
        path = os.path.join(output, name)
        if path in paths:
            raise ValueError(f"two inputs would both be written to {path!r} (e.g. {source!r}); rename one")
        paths.append(_check_new_file(path, source, overwrite))
    return paths


def video_output_path(video: str, output: str, overwrite: bool) -> str:
    """``output`` if it names a video file, else ``output/<video name>.mp4``."""
    extension = os.path.splitext(output)[1].lower()
    if not extension or os.path.isdir(output):
        path = os.path.join(_writable_folder(output), os.path.splitext(os.path.basename(video))[0] + ".mp4")
    elif extension in VIDEO_FOURCC:
        path = output
    else:
        raise ValueError(f"cannot write {extension!r} videos ({output!r}); use one of {sorted(VIDEO_FOURCC)}")
    return _check_new_file(path, video, overwrite)


class ModelKindError(ConfigError):
    """An image model where a video model is needed, or the other way round."""


def is_video_model(cfg) -> bool:
    """Whether the config's model is a video instance segmentation model (known before building it)."""
    target = cfg.model.get("_target_")
    if isinstance(target, str):
        target = locate(target)
    return isinstance(target, type) and issubclass(target, VideoMaskFormer)


def check_model_kind(model: torch.nn.Module, video: bool) -> None:
    if isinstance(model, VideoMaskFormer) != video:
        raise ModelKindError(
            f"{type(model).__name__} is an image model: it draws videos frame by frame, not tracks" if video else
            f"{type(model).__name__} is a video model: it draws tracks of a whole clip, not single images"
        )


def dataset_metadata(cfg):
    """Metadata (class names, colours) of the config's test dataset, for drawing."""
    names = cfg.dataloader.test.dataset.get("names") if "dataloader" in cfg else None
    name = names if isinstance(names, str) else (names[0] if names else "__unused")
    return MetadataCatalog.get(name)


def drawing_size(height: int, width: int, max_size: int) -> Tuple[int, int]:
    """(height, width) of the drawing of an image: the image's own, or scaled down so that its
    long side is ``max_size`` (0: never scaled)."""
    if not max_size or max(height, width) <= max_size:
        return height, width
    scale = max_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


class DemoRenderer:
    """Runs the model(s) on an image like detectron2's predictor and draws the result.

    The model sees the image at full resolution (then resized by the config's test-time
    augmentation as usual); it is asked for its outputs at the drawing size, as detectron2 models
    rescale their boxes and masks to the "height" and "width" of their input, so predictions and
    the scaled-down picture stay aligned and no full-resolution mask is ever made.
    """

    def __init__(
        self,
        cfg,
        device: str,
        compare: bool,
        confidence_threshold: float,
        task: str = "auto",
        max_draw_size: int = MAX_DRAW_SIZE,
    ):
        if compare:
            baseline, expedited = build_model_pair(cfg, device)
            restorers = token_reduction_modules(expedited, "restore")
            if not restorers:
                raise ConfigError(
                    "--compare needs token reduction on in the config "
                    "(e.g. model.backbone.net.expedite.enabled=True)"
                )
            self.models = {"baseline": baseline, "expedited": expedited}
            # The first host's restoring layers: their input is the reduced state to draw.
            host = sorted(restorers)[0].rpartition(".")[0]
            self.restorers = {name: m for name, m in restorers.items() if name.rpartition(".")[0] == host}
        else:
            self.models = {"model": build_model(cfg, device)}
        model = next(iter(self.models.values()))
        check_model_kind(model, video=False)
        self.input_format = model_input_format(model, cfg)
        self.augmentations = inference_augmentations(cfg)
        self.metadata = dataset_metadata(cfg)
        self.confidence_threshold = confidence_threshold
        self.task = task
        self.max_draw_size = max_draw_size

    def _draw(self, image_rgb: np.ndarray, predictions: Dict) -> np.ndarray:
        return draw_predictions(image_rgb, predictions, self.metadata, self.confidence_threshold, self.task)

    def prepare(self, image: np.ndarray) -> Tuple[Dict, np.ndarray]:
        """(model input asking for outputs at the drawing size, the RGB image at that size)."""
        model_input = predictor_input(image, self.augmentations)
        height, width = drawing_size(image.shape[0], image.shape[1], self.max_draw_size)
        if (height, width) != image.shape[:2]:
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            model_input["height"], model_input["width"] = height, width
        return model_input, to_rgb(image, self.input_format)

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> Tuple[Dict, np.ndarray]:
        """The single model's outputs (at the drawing size) and the RGB image they fit."""
        model_input, image_rgb = self.prepare(image)
        return next(iter(self.models.values()))([model_input])[0], image_rgb

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        """An HWC uint8 image in the model's input format -> the RGB drawing."""
        if "model" in self.models:
            predictions, image_rgb = self.predict(image)
            return self._draw(image_rgb, predictions)

        model_input, image_rgb = self.prepare(image)
        baseline = self.models["baseline"]([model_input])[0]
        expedited_model = self.models["expedited"]
        with OutputRecorder(self.restorers) as recorder:
            expedited = expedited_model([model_input])[0]
        state = next(iter(recorder.inputs.values()))  # the one restoring layer that ran
        padded_size = expedited_model.preprocess_image([model_input]).tensor.shape[-2:]
        clusters = draw_token_clusters(
            image_rgb, token_labels(state), model_input["image"].shape[-2:], padded_size
        )
        return side_by_side(
            [
                add_caption(self._draw(image_rgb, baseline), "baseline"),
                add_caption(self._draw(image_rgb, expedited), "expedited"),
                add_caption(clusters, describe_reduced_tokens(state)),
            ]
        )


@dataclass
class Clip:
    """The frames of a video, as a video model takes them and as they are drawn."""

    model_frames: List[torch.Tensor]  # (3, h, w) uint8, in the model's format, at its test size
    frames_rgb: List[np.ndarray]  # (H, W, 3) uint8 RGB, at the drawing size
    fps: float


def read_clip(
    source: Union[str, List[str]], input_format: str, augmentations, max_draw_size: int = MAX_DRAW_SIZE
) -> Clip:
    """Every frame of a video file, or of the frame images ``source`` lists, in order: resized
    by the config's test-time ``augmentations`` for the model, and to at most ``max_draw_size``
    for drawing. Raises ImageInputError for a video or frame that cannot be read, or frames of
    different sizes."""
    capture = open_video(source) if isinstance(source, str) else None
    name = source if capture else os.path.dirname(source[0]) or "."
    if capture:
        fps, total = capture.get(cv2.CAP_PROP_FPS) or 25.0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        frames = (f if input_format == "BGR" else f[:, :, ::-1] for f in video_frames(capture))
    else:
        fps, total = FRAME_LIST_FPS, len(source)
        frames = (load_image(path, input_format) for path in source)
    clip = Clip([], [], fps)
    try:
        for frame in tqdm.tqdm(frames, total=total, desc="reading frames"):
            if not clip.frames_rgb:
                first_size = frame.shape[:2]
            elif frame.shape[:2] != first_size:
                index = len(clip.frames_rgb)
                which = f"frame {index} of {name!r}" if capture else f"frame {index} ({source[index]!r})"
                raise ImageInputError(
                    f"{which} is {frame.shape[1]}x{frame.shape[0]} pixels, frame 0 {first_size[1]}x{first_size[0]}: "
                    f"the frames of a video must have one size"
                )
            # The resized frame holds whole numbers in 0..255: uint8 keeps the clip 4x smaller.
            clip.model_frames.append(predictor_input(frame, augmentations)["image"].to(torch.uint8))
            height, width = drawing_size(frame.shape[0], frame.shape[1], max_draw_size)
            if (height, width) != frame.shape[:2]:
                frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            clip.frames_rgb.append(np.ascontiguousarray(to_rgb(frame, input_format)))
    finally:
        if capture:
            capture.release()
    if not clip.frames_rgb:
        raise ImageInputError(f"no frame could be read from video {name!r}")
    return clip


class TrackRenderer:
    """Runs a video instance segmentation model (with ``compare``, the baseline and the expedited
    one) on a whole clip, and draws its tracks on every frame. The model is offline: it sees all
    frames in one call (its backbone ``frame_chunk`` frames at a time), so tracks need no
    association, and the clip's length is bounded by memory."""

    def __init__(self, cfg, device: str, compare: bool, confidence_threshold: float):
        if compare:
            baseline, expedited = build_model_pair(cfg, device)
            if not token_reduction_modules(expedited, "reduce"):
                raise ConfigError(
                    "--compare needs token reduction on in the config (e.g. model.backbone.expedite.enabled=True)"
                )
            self.models = {"baseline": baseline, "expedited": expedited}
        else:
            self.models = {"model": build_model(cfg, device)}
        for model in self.models.values():
            check_model_kind(model, video=True)
        self.metadata = dataset_metadata(cfg)
        self.confidence_threshold = confidence_threshold

    @torch.no_grad()
    def predict(self, clip: Clip) -> Dict[str, Dict]:
        """Each model's output for the clip, masks at the drawing size."""
        height, width = clip.frames_rgb[0].shape[:2]
        video = {"image": clip.model_frames, "height": height, "width": width}
        predictions = {}
        for name, model in self.models.items():
            logger.info(f"{name}: {len(clip.model_frames)} frames")
            predictions[name] = model([video])[0]
        return predictions

    def __call__(self, clip: Clip) -> Iterator[np.ndarray]:
        """The clip's drawn frames (RGB); with --compare baseline | expedited, where an expedited
        track has the colour of the baseline track it overlaps."""
        tracks = {name: select_tracks(p, self.confidence_threshold) for name, p in self.predict(clip).items()}
        first, *others = tracks.values()
        colours = [track_colours(len(first["masks"]))]
        colours += [matched_track_colours(first["masks"], colours[0], t["masks"]) for t in others]
        drawings = [
            draw_video_tracks(clip.frames_rgb, t, self.metadata, c) for t, c in zip(tracks.values(), colours)
        ]
        if len(drawings) == 1:
            yield from drawings[0]
            return
        for panels in zip(*drawings):
            yield side_by_side([add_caption(panel, name) for panel, name in zip(panels, tracks)])


def write_image(path: str, image_rgb: np.ndarray) -> None:
    if not cv2.imwrite(path, image_rgb[:, :, ::-1]):
        raise OSError(f"could not write {path!r}")


def run_images(renderer: DemoRenderer, inputs: List[str], outputs: List[str]) -> List[str]:
    """Draw each input; an image that cannot be read, or is too small, is skipped (and logged).
    Returns one line per skipped image, naming it and why."""
    failures = []
    pairs = list(zip(inputs, outputs))
    for input_path, output_path in tqdm.tqdm(pairs, desc="images", disable=len(pairs) == 1):
        try:
            image = load_image(input_path, renderer.input_format)
        except ImageInputError as error:
            logger.error(f"skipped: {error}")
            failures.append(str(error))
            continue
        write_image(output_path, renderer(image))
        logger.info(f"{input_path} -> {output_path}")
    return failures


def video_frames(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


def open_video(path: str) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise ImageInputError(f"cannot open video {path!r}")
    return capture


def check_video_readable(path: str) -> None:
    """Raises ImageInputError unless ``path`` is a video with at least one frame."""
    capture = open_video(path)
    try:
        if not capture.read()[0]:
            raise ImageInputError(f"no frame could be read from video {path!r}")
    finally:
        capture.release()


def write_video(path: str, frames_rgb: Iterable[np.ndarray], fps: float, total: Optional[int] = None) -> int:
    """Write the frames as a video (its size that of the first frame), with progress; returns
    how many were written."""
    writer, count = None, 0
    try:
        for drawn in tqdm.tqdm(frames_rgb, total=total, desc="frames"):
            if writer is None:  # --compare frames are wider than the input: size from the first
                fourcc = cv2.VideoWriter_fourcc(*VIDEO_FOURCC[os.path.splitext(path)[1].lower()])
                writer = cv2.VideoWriter(path, fourcc, fps, (drawn.shape[1], drawn.shape[0]))
                if not writer.isOpened():
                    raise OSError(f"could not open {path!r} for writing a video")
            writer.write(np.ascontiguousarray(drawn[:, :, ::-1]))
            count += 1
    finally:
        if writer is not None:
            writer.release()
    return count


def run_video(renderer: DemoRenderer, video: str, output: str) -> None:
    """An image model's drawing of every frame of a video."""
    capture = open_video(video)
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    try:
        frames = (renderer(f if renderer.input_format == "BGR" else f[:, :, ::-1]) for f in video_frames(capture))
        written = write_video(output, frames, fps, total)
    finally:
        capture.release()
    if not written:
        raise ImageInputError(f"no frame could be read from video {video!r}")
    logger.info(f"{video} -> {output}")


def track_inputs(args, cfg) -> Tuple[Clip, str]:
    """A video model's clip (from --video-input or the frame images of --input) and the video to
    write, checked before the model is built."""
    if args.task not in ("auto", "instances"):
        raise ModelKindError(f"a video model draws tracks (instances), not {args.task!r}; leave out --task")
    if args.video_input:
        if not os.path.isfile(args.video_input):
            raise FileNotFoundError(f"video file {args.video_input!r} does not exist")
        source, name = args.video_input, args.video_input
    else:
        source = expand_image_paths(args.input)
        name = os.path.dirname(os.path.abspath(source[0]))  # frames/video_1/*.jpg -> video_1.mp4
    output = video_output_path(name, args.output, args.overwrite)
    input_format = cfg.dataloader.test.mapper.get("image_format", "BGR")
    return read_clip(source, input_format, inference_augmentations(cfg), args.max_draw_size), output


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    setup_logger(name="expedite_vit")
    setup_logger()  # detectron2's messages (checkpoint loading)
    # Everything that can be checked before the (slow) model build is checked first.
    try:
        cfg = load_checked_config(args.config_file, args.opts, device=args.device)
        tracks = is_video_model(cfg)
        if tracks:
            clip, video_output = track_inputs(args, cfg)
        elif args.input:
            inputs = expand_image_paths(args.input)
            outputs = image_output_paths(inputs, args.output, args.overwrite)
        else:
            if not os.path.isfile(args.video_input):
                raise FileNotFoundError(f"video file {args.video_input!r} does not exist")
            video_output = video_output_path(args.video_input, args.output, args.overwrite)
            check_video_readable(args.video_input)
    except (ValueError, OSError) as error:
        parser.error(str(error))

    try:
        if tracks:
            renderer = TrackRenderer(cfg, args.device, args.compare, args.confidence_threshold)
            write_video(video_output, renderer(clip), clip.fps, len(clip.frames_rgb))
            logger.info(f"{len(clip.frames_rgb)} frames -> {video_output}")
            return 0
        renderer = DemoRenderer(
            cfg, args.device, args.compare, args.confidence_threshold, args.task, args.max_draw_size
        )
        if args.input:
            failures = run_images(renderer, inputs, outputs)
            if failures:
                lines = "".join(f"  {line}\n" for line in failures)
                message = f"{len(failures)} of {len(inputs)} images could not be drawn:\n{lines}"
                parser.exit(1, f"{parser.prog}: error: {message}")
        else:
            run_video(renderer, args.video_input, video_output)
    except ModelKindError as error:  # a config whose model kind showed only once built
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except (*USER_ERRORS, PredictionKindError, OSError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
