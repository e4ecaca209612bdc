#!/usr/bin/env python
"""
Measure the expedited model against the baseline in one run, on the same images: FLOPs, latency
(median, p90), token-reduction overhead, peak memory, agreement with the baseline's predictions,
and the task metric (e.g. COCO AP) when --dataset has annotations.

Both models come from one LazyConfig: the baseline with every `expedite` node disabled, the
expedited one as configured (trailing overrides included), sharing the weights of
train.init_checkpoint. Without a checkpoint the weights are random: speed is still measured.

Usage:
    python tools/benchmark.py --config-file configs/ViTDet/COCO/mask_rcnn_vitdet_b_100ep.py \\
        --device cuda --num-images 20 --iters 50 --output-json out/vitdet_b.json \\
        --output-md BENCHMARKS.md --append train.init_checkpoint=model_final.pkl
    python tools/benchmark.py --config-file CONFIG --dataset coco_2017_val --num-images 100 \\
        train.init_checkpoint=model_final.pkl model.backbone.net.expedite.expedit.grid=8
    python tools/benchmark.py --config-file CONFIG --methods expedit,ailurus,tome --match-flops ...
    python tools/benchmark.py --config-file CONFIG --backbone-only --image-size 1024 --flops-only \
        train.init_checkpoint= model.backbone.net.expedite.method=itpn   # FLOPs of both, nothing timed

With --methods, every named method runs against the same baseline on the same images, at the
settings the config holds for it (its preset) or, with --match-flops, at the budget whose backbone
FLOPs ratio is nearest the first method's; one table compares them.

A video model (a Mask2Former-VIS config) is measured per clip: backbone and whole-model latency in
ms per frame, FLOPs per clip, peak memory per clip forward, agreement of tracks by tube IoU. Clips
are the first --frames frames of --num-clips videos of a registered video --dataset, or generated
by the built-in video generator (at --frame-size HxW, fed as they are, or at the config's test size):
    python tools/benchmark.py --config-file configs/Mask2Former-VIS/builtin/video_maskformer2_swin_tiny_videos.py \
        --dataset expedite_videos_val --num-clips 3 --frames 6 train.init_checkpoint=MODEL.pth
    python tools/benchmark.py --config-file configs/Mask2Former-VIS/video_maskformer2_swin_large_IN21k_384_bs16_8ep_2019.py \
        --frames 28 --frame-size 480x832 --backbone-only --flops-only train.init_checkpoint=
"""
import argparse
import logging
import os
import shlex
import sys

from detectron2.utils.logger import setup_logger

from expedite_vit.benchmark import BenchmarkSettings, format_table, markdown_section, run_benchmark
from expedite_vit.benchmark.methods import (
    format_matching,
    format_method_table,
    match_backbone_flops,
    method_points,
    parse_methods,
)
from expedite_vit.benchmark.report import check_output_path, write_json, write_markdown
from expedite_vit.benchmark.runner import AMP_DTYPES, resolve_num_images
from expedite_vit.benchmark.video import (
    DEFAULT_CLIPS,
    DEFAULT_FRAMES,
    VideoBenchmarkSettings,
    is_video_model,
    parse_frame_size,
    run_video_benchmark,
)
from expedite_vit.runtime.cli import USER_ERRORS, load_checked_config, tool_parser
from expedite_vit.runtime.inputs import expand_image_paths, split_trailing_overrides
from expedite_vit.sweep import apply_point, measure_points


def parse_args(argv=None):
    parser = tool_parser(__file__, __doc__, "registered dataset name; AP is reported when it has annotations")
    add = parser.add_argument
    add("--num-images", type=int, metavar="N",
        help="images to run, the first N (default: all --input files or bundled photographs, the first 5 "
             "of --dataset); more than there are is an error")
    add("--warmup", type=int, default=2, help="untimed iterations per model first")
    add("--iters", type=int, default=10, help="timed iterations per model (batch 1)")
    add("--device", default="cpu", help="cpu, cuda or cuda:N")
    add("--amp", choices=sorted(AMP_DTYPES), default="none", help="autocast dtype")
    add("--image-size", type=int, metavar="S", help="time and count the backbone on SxS resized images")
    add("--backbone-only", action="store_true",
        help="skip whole-model FLOPs, timing and predictions (a video model still runs once per clip "
             "for memory and agreement)")
    add("--score-threshold", type=float,
        help="detections (tracks) compared with the baseline's (default 0.5; video models 0: their top 10 tracks)")
    add("--flops-images", type=int, default=1, help="images (clips of a video model) FLOPs are averaged over")
    add("--output-json", metavar="FILE", help="write all results here")
    add("--output-md", metavar="FILE", help="write a markdown section here (see --append)")
    add("--append", action="store_true", help="append the markdown section to an existing --output-md")
    add("--overwrite", action="store_true", help="replace existing output files")
    add("--flops-only", action="store_true", help="count FLOPs only (no timing, memory, agreement)")
    add("--methods", metavar="LIST", help="compare these methods (comma-separated: expedit,ailurus,tome,itpn)")
    add("--match-flops", action="store_true",
        help="with --methods: set each method's budget to the first method's backbone FLOPs ratio")
    add("--match-only", action="store_true",
        help="with --match-flops: print the matched settings (backbone FLOPs only) and stop")
    video = parser.add_argument_group("video models (Mask2Former-VIS configs), measured per clip")
    video.add_argument("--num-clips", type=int, metavar="N",
                       help=f"clips to run (default {DEFAULT_CLIPS}; the first N videos of --dataset)")
    video.add_argument("--frames", type=int, metavar="T",
                       help=f"frames per clip (default: whole videos of --dataset, {DEFAULT_FRAMES} for generated clips)")
    video.add_argument("--frame-size", metavar="HxW",
                       help="generated clips at this size, fed without the config's test resize (e.g. 480x832)")
    add("opts", nargs=argparse.REMAINDER, default=[], help="config overrides, key=value")
    args = parser.parse_args(argv)
    args.input, trailing_opts = split_trailing_overrides(args.input)
    args.opts = trailing_opts + [o for o in args.opts if o != "--"]
    return parser, args


def command_line(argv) -> str:
    """The command that reproduces the run from the current folder."""
    script = os.path.relpath(os.path.abspath(__file__))
    if script.startswith(os.pardir):  # run from outside the repository: an absolute path is clearer
        script = os.path.abspath(__file__)
    return shlex.join(["python", script, *argv])


def compare_methods(parser, args, cfg, settings, methods, command: str) -> int:
    """--methods: each method against the same baseline, one table (and JSON / markdown)."""
    logger = logging.getLogger("expedite_vit")
    try:
        matching = match_backbone_flops(cfg, settings, methods) if args.match_flops else None
        if args.match_only:
            print(format_matching(matching))
            if args.output_json:
                write_json({"command": command, "matching": matching}, args.output_json)
            return 0
        points = [matching[m]["point"] for m in methods] if matching else method_points(methods)
        results = list(measure_points(cfg, settings, points))
    except (*USER_ERRORS, OSError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    table = format_method_table(results)
    print(table)
    if args.output_json:
        write_json({"command": command, "matching": matching, "methods": results}, args.output_json)
        logger.info(f"Results written to {args.output_json}")
    if args.output_md:
        title = f"{os.path.basename(args.config_file)}: methods compared"
        section = f"### {title}\n\n```\n{command}\n```\n\n{table}\n"
        write_markdown(section, args.output_md, append=args.append)
        logger.info(f"Markdown section written to {args.output_md}")
    return 0


IMAGE_ONLY_FLAGS = ("--num-images", "--input", "--image-size", "--methods", "--match-flops", "--match-only")


def _given(args, flags) -> list:
    """Those of ``flags`` given on the command line (not at their default)."""
    given = []
    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value not in (None, False, []):
            given.append(flag)
    return given


def video_settings(args) -> VideoBenchmarkSettings:
    return VideoBenchmarkSettings(
        device=args.device, num_clips=args.num_clips, frames=args.frames,
        frame_size=parse_frame_size(args.frame_size) if args.frame_size else None,
        warmup=args.warmup, iters=args.iters, amp=args.amp, backbone_only=args.backbone_only,
        flops_only=args.flops_only, dataset=args.dataset,
        score_threshold=0.0 if args.score_threshold is None else args.score_threshold,
        flops_clips=args.flops_images,
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, args = parse_args(argv)
    logger = setup_logger(name="expedite_vit")
    setup_logger()  # detectron2's own messages (checkpoint loading, evaluation)
    video_flags = _given(args, ("--num-clips", "--frames", "--frame-size"))
    try:
        settings = BenchmarkSettings(
            device=args.device, num_images=args.num_images, warmup=args.warmup, iters=args.iters,
            amp=args.amp, image_size=args.image_size, backbone_only=args.backbone_only,
            dataset=args.dataset, inputs=args.input,
            score_threshold=0.5 if args.score_threshold is None else args.score_threshold,
            flops_images=args.flops_images, flops_only=args.flops_only,
        )
        if video_flags:
            video_settings(args)  # bad values are named before the config is loaded
        # Refuse unusable inputs and outputs now, not after minutes of measuring.
        expand_image_paths(args.input)
        check_output_path(args.output_json, args.overwrite)
        check_output_path(args.output_md, args.overwrite, append=args.append)
        methods = parse_methods(args.methods) if args.methods else None
        if args.match_flops and not methods:
            raise ValueError("--match-flops needs --methods")
        if args.match_only and not args.match_flops:
            raise ValueError("--match-only needs --match-flops")
        if args.flops_only and methods:
            raise ValueError("--flops-only: not with --methods (--match-flops --match-only counts the methods' FLOPs)")
        cfg = load_checked_config(args.config_file, args.opts, device=args.device, methods=methods or ())
        video = is_video_model(cfg)
        if video and _given(args, IMAGE_ONLY_FLAGS):
            raise ValueError(
                f"{', '.join(_given(args, IMAGE_ONLY_FLAGS))}: not for a video model; it runs clips "
                f"(--num-clips, --frames, --frame-size, --dataset)"
            )
        if not video and video_flags:
            raise ValueError(f"{', '.join(video_flags)}: only for a video model (a Mask2Former-VIS config)")
        if video:
            settings = video_settings(args)
        else:
            settings = resolve_num_images(settings)  # the config registers datasets: after loading it
        points = method_points(methods) if methods else None
        if points:
            for point in points:
                apply_point(cfg, point)  # each method's settings must fit the model
    except (ValueError, OSError) as error:
        parser.error(str(error))

    if methods:
        return compare_methods(parser, args, cfg, settings, methods, command_line(argv))

    try:
        run = run_video_benchmark if video else run_benchmark
        results = run(cfg, settings, command=command_line(argv))
    except (*USER_ERRORS, OSError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(format_table(results))
    if args.output_json:
        write_json(results, args.output_json)
        logger.info(f"Results written to {args.output_json}")
    if args.output_md:
        # Named by its folder too: configs of different tasks share file names.
        config_name = os.path.relpath(args.config_file, os.path.join(os.path.dirname(__file__), "..", "configs"))
        if config_name.startswith(os.pardir):
            config_name = os.path.basename(args.config_file)
        title = f"{config_name} on {results['environment']['device_name']}"
        if video:
            frames = "/".join(map(str, sorted(set(results["inputs"]["frames"]))))
            title = f"{config_name}, clips of {frames} frames, on {results['environment']['device_name']}"
        write_markdown(markdown_section(results, title), args.output_md, append=args.append)
        logger.info(f"Markdown section written to {args.output_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
