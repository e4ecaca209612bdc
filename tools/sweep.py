#!/usr/bin/env python
"""
Sweep token-reduction settings of a trained model against its baseline, on the same images, and
find its operating points: speed-up (backbone FLOPs, backbone and end-to-end latency) against
agreement with the baseline's own predictions and, on a labelled --dataset, the task metric.

Every point is measured as tools/benchmark.py measures one expedited model, and saved as soon as
it is done: an interrupted sweep resumes when the same command runs again. --output receives
points.json and points.csv (all points), pareto.json (the Pareto fronts), sweep.png (the plot),
and with --target-speedup tuned_config.py: among the points at least that fast, the one that
agrees best with the baseline (no labels needed), as a LazyConfig importing the given one. On a
labelled --dataset, summary.json checks the auto-tuner against the labels: the rank correlation
(Spearman) of agreement with the task metric over the points, and the auto-tune gap, the metric
of the point it picks minus the best metric among the points at least as fast as the target.

Usage:
    python tools/sweep.py --config-file configs/ViTDet/builtin/mask_rcnn_vitdet_scenes.py \\
        --dataset expedite_scenes_val --num-images 20 --output out/sweep_vitdet \\
        --grid 'location=1,2,3 expedit.grid=3,4,5' --target-speedup 1.5 \\
        train.init_checkpoint=checkpoints/mask_rcnn_vitdet_scenes.pth
    python tools/sweep.py --config-file CONFIG --input 'imgs/*.jpg' --output out/sweep \\
        --target-speedup 2 --speedup-measure latency --device cuda train.init_checkpoint=model_final.pkl

Without --grid, the default grid of the config's method is swept (DEFAULT_GRIDS in
expedite_vit/sweep/grid.py), less the points the model cannot take; --methods expedit,tome sweeps
the default grid of each method named. --grid may be given several times; the points of all grids
and methods are swept, and the config's own settings (its preset) are always among them.
"""
import argparse
import logging
import math
import os
import shlex
import sys
from pathlib import Path

from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from expedite_vit.benchmark import BenchmarkSettings
from expedite_vit.benchmark.runner import AMP_DTYPES, resolve_num_images
from expedite_vit.runtime.cli import USER_ERRORS, load_checked_config, tool_parser
from expedite_vit.runtime.config import ConfigError
from expedite_vit.runtime.inputs import expand_image_paths, split_trailing_overrides
from expedite_vit.runtime.output import claim_output_folder
from expedite_vit.sweep import (
    SPEEDUP_MEASURES,
    TargetNotReachedError,
    build_points,
    check_target,
    choose_point,
    parse_grid,
    plot_sweep,
    prepare_output_folder,
    sweep_identity,
    sweep_points,
    write_tuned_config,
)
from expedite_vit.sweep.grid import format_point
from expedite_vit.sweep.report import (
    format_labelled_summary,
    labelled_summary,
    pareto_fronts,
    write_pareto_json,
    write_points_csv,
    write_points_json,
    write_summary_json,
)

OUTPUT_FILES = ("points.json", "points.csv", "pareto.json", "summary.json", "sweep.png", "tuned_config.py")


def comma_list(text: str):
    return [item for item in text.split(",") if item]


def parse_args(argv=None):
    parser = tool_parser(__file__, __doc__, "registered dataset name; the task metric is reported when it has labels")
    add = parser.add_argument
    add("--num-images", type=int, metavar="N", help="images to run, the first N (default as tools/benchmark.py)")
    add("--grid", action="append", default=[], metavar="'NAME=V1,V2 NAME2=...'",
        help="settings to sweep, relative to the model's expedite nodes (default: the method's grid)")
    add("--methods", type=comma_list, default=[], metavar="M1,M2",
        help="sweep the default grid of each of these methods too, one curve each (e.g. expedit,tome)")
    add("--target-speedup", type=float, metavar="X", help="auto-tune: the point at least X times faster that "
        "agrees best with the baseline")
    add("--speedup-measure", choices=sorted(SPEEDUP_MEASURES), default="flops",
        help="what the target and the plot's x axis measure: backbone FLOPs ratio or backbone latency")
    add("--output", required=True, metavar="DIR", help="folder of the sweep's files and cached points")
    add("--overwrite", action="store_true", help="replace another sweep in --output")
    add("--device", default="cpu", help="cpu, cuda or cuda:N")
    add("--amp", choices=sorted(AMP_DTYPES), default="none", help="autocast dtype")
    add("--warmup", type=int, default=2, help="untimed iterations per model and point")
    add("--iters", type=int, default=10, help="timed iterations per model and point")
    add("--score-threshold", type=float, default=0.5, help="detections compared with the baseline's")
    add("--published", action="append", default=[], metavar="LABEL:SPEEDUP:VALUE",
        help="an operating point published elsewhere, marked on the plot")
    add("opts", nargs=argparse.REMAINDER, default=[], help="config overrides, key=value")
    args = parser.parse_args(argv)
    args.input, trailing_opts = split_trailing_overrides(args.input)
    args.opts = trailing_opts + [o for o in args.opts if o != "--"]
    return parser, args


def parse_published(texts):
    """``"Expedit paper:1.41:56.8"`` -> {"label", "speedup", "value"}, for each text."""
    points = []
    for text in texts:
        label, *numbers = text.rsplit(":", 2)
        try:
            speedup, value = (float(n) for n in numbers)
        except ValueError:
            raise ConfigError(f"--published {text!r} is not LABEL:SPEEDUP:VALUE (e.g. 'paper:1.41:56.8')") from None
        if not (label and math.isfinite(speedup) and math.isfinite(value)):
            raise ConfigError(f"--published {text!r} is not LABEL:SPEEDUP:VALUE (e.g. 'paper:1.41:56.8')")
        points.append({"label": label, "speedup": speedup, "value": value})
    return points


def command_line(argv) -> str:
    """The command that reproduces the run from the current folder."""
    return shlex.join(["python", os.path.relpath(os.path.abspath(__file__)), *argv])


def _ratio(value) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _number(value, spec: str) -> str:
    return "n/a" if value is None else f"{value:{spec}}"


def format_points(records) -> str:
    """All points as a terminal table."""
    rows = []
    for record in records:
        summary = record["summary"]
        rows.append([
            format_point(record["point"]) + (" (preset)" if record["preset"] else ""),
            _ratio(summary["flops_ratio"]),
            _ratio(summary["latency_speedup"]),
            _ratio(summary["e2e_latency_speedup"]),
            _number(summary["agreement"], ".4f"),
            _number(summary["metric"], ".2f"),
        ])
    metric = next((r["summary"]["metric_name"] for r in records if r["summary"]["metric_name"]), "task metric")
    headers = ["point", "backbone FLOPs", "backbone latency", "end-to-end latency", "agreement", metric]
    return tabulate(rows, headers=headers, disable_numparse=True)


def write_outputs(args, settings, sweep, records, chosen=None) -> None:
    """points.json, points.csv, pareto.json and sweep.png in --output; the plot shows the task
    metric when the images are labelled, else the agreement with the baseline."""
    fronts = pareto_fronts(records, args.speedup_measure)
    y_key = "metric" if "metric" in fronts else "agreement"
    write_points_json(os.path.join(args.output, "points.json"), sweep, records)
    write_points_csv(os.path.join(args.output, "points.csv"), records, fronts.get(y_key, []))
    write_pareto_json(os.path.join(args.output, "pareto.json"), args.speedup_measure, fronts)
    if y_key == "metric":
        labelled = next(r["summary"] for r in records if r["summary"]["metric"] is not None)
        y_label, baseline_y = f"{labelled['metric_name']} on {args.dataset}", labelled["baseline_metric"]
    else:
        y_label, baseline_y = "agreement with the baseline's predictions", 1.0
    images = f"images of {args.dataset}" if args.dataset else "images"
    plot_sweep(
        records, os.path.join(args.output, "sweep.png"), measure=args.speedup_measure, y_key=y_key,
        y_label=y_label, title=f"{os.path.basename(args.config_file)}: {len(records)} points, {settings.num_images} {images}",
        baseline_y=baseline_y, published=args.published, target=args.target_speedup, chosen=chosen,
    )


def write_summary(args, records) -> None:
    """On labelled images, write summary.json and print its figures; else remove the summary of
    an earlier run."""
    path = os.path.join(args.output, "summary.json")
    summary = labelled_summary(records, args.speedup_measure, args.target_speedup)
    if summary is None:
        Path(path).unlink(missing_ok=True)
        return
    write_summary_json(path, summary)
    print("\n" + format_labelled_summary(summary))
    print(f"Summary: {path}")


def write_tuned(args, cfg, chosen) -> None:
    """Write the chosen point as a LazyConfig and print its overrides; without one, remove the
    tuned config of an earlier run, which would not match this run's files."""
    path = os.path.join(args.output, "tuned_config.py")
    if chosen is None:
        Path(path).unlink(missing_ok=True)
        return
    write_tuned_config(path, cfg, args.config_file, args.opts, chosen, args.target_speedup, args.speedup_measure)
    key, description = SPEEDUP_MEASURES[args.speedup_measure]
    print(f"\nAuto-tuned for a {description} of at least {args.target_speedup:g}x: {format_point(chosen['point'])} "
          f"({chosen['summary'][key]:.2f}x, agreement with the baseline {chosen['summary']['agreement']:.4f})")
    print(f"Overrides: {shlex.join(chosen['overrides'])}")
    print(f"LazyConfig: {path}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, args = parse_args(argv)
    logger = setup_logger(name="expedite_vit")
    setup_logger()  # detectron2's own messages (checkpoint loading)
    # The evaluators' tables, two per point, would bury the progress bar; points.json has them.
    logging.getLogger("detectron2.evaluation").setLevel(logging.WARNING)
    try:
        settings = BenchmarkSettings(
            device=args.device, num_images=args.num_images, warmup=args.warmup, iters=args.iters, amp=args.amp,
            dataset=args.dataset, inputs=args.input, score_threshold=args.score_threshold,
        )
        # Everything that can be refused is refused now, not after minutes of measuring.
        expand_image_paths(args.input)
        if args.target_speedup is not None:
            check_target(args.target_speedup)
        grids = [parse_grid(text) for text in args.grid]
        args.published = parse_published(args.published)
        cfg = load_checked_config(args.config_file, args.opts, device=args.device, methods=args.methods)
        settings = resolve_num_images(settings)  # the config registers datasets: after loading it
        points = build_points(cfg, grids, args.methods)
        identity = sweep_identity(args.config_file, args.opts, cfg, settings)
        cache = prepare_output_folder(args.output, identity, OUTPUT_FILES, args.overwrite)
    except (*USER_ERRORS, ValueError, OSError) as error:
        parser.error(str(error))

    sweep = {"identity": identity, "command": command_line(argv), "speedup_measure": args.speedup_measure,
             "target_speedup": args.target_speedup}
    logger.info(f"Sweeping {len(points)} points into {args.output}")
    target_error = chosen = None
    try:
        with claim_output_folder(args.output, resume=True):
            records = sweep_points(cfg, settings, points, cache)
            print(format_points(records))
            if args.target_speedup is not None:
                try:
                    chosen = choose_point(records, args.target_speedup, args.speedup_measure)
                except TargetNotReachedError as error:
                    target_error = error  # the sweep's files are written all the same
            write_outputs(args, settings, sweep, records, chosen)
            write_summary(args, records)
            write_tuned(args, cfg, chosen)
    except KeyboardInterrupt:
        parser.exit(130, f"\n{parser.prog}: interrupted; the finished points are kept in {cache.folder}: run "
                         f"the same command again to resume\n")
    except (*USER_ERRORS, OSError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    logger.info(f"Points, Pareto fronts and plot written to {args.output}")
    print(f"Pareto plot: {os.path.join(args.output, 'sweep.png')}")
    if target_error is not None:
        parser.exit(1, f"{parser.prog}: error: {target_error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
