#!/usr/bin/env python
"""The main job (`make main`): token reduction off vs on, on the built-in dataset and models.

For each built-in model (ViTDet Mask R-CNN: boxes and instance masks; Mask2Former with a Swin
backbone: panoptic, instance and semantic segmentation; Mask2Former-VIS: video instance
segmentation, YouTube-VIS AP on the built-in videos):

1. Writes the built-in dataset (images, or videos) into its cache folder if it is not there yet.
2. Takes the model's checkpoint shipped in checkpoints/ (float16 weights). It never trains unless
   asked: ``--train`` retrains the chosen models from scratch into the cache
   (``$EXPEDITE_CACHE/checkpoints/<name>/``, with token reduction off, as the shipped ones were
   made) and evaluates those instead; the video model's training starts from the image model's
   weights.
3. Evaluates it with ``train_net.py --eval-only`` twice, token reduction off and on, through
   detectron2's evaluators, and prints both metric tables side by side.
4. Runs the benchmark (FLOPs, backbone and end-to-end latency, agreement) on the validation
   images (the video model: per clip, agreement by tube IoU of the baseline's tracks), and draws
   baseline vs expedited predictions (with the token clusters; the video model's tracks, as a video).
5. Image models: sweeps a few token-reduction settings around the preset (``tools/sweep.py``, a
   handful of points on 4 validation images, ~35 s per model) and prints the path of the Pareto
   plot (speed-up against the task metric). ``tools/sweep.py`` sweeps the full grid; see BENCHMARKS.md.

Each run writes into a new folder, output/main_job/<date>-<time>/, so no earlier result is
replaced. The same steps work for COCO with an official checkpoint: see the README.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, List, Tuple

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BuiltinModel:
    name: str  # of its checkpoint and output folder
    config: Path
    disable: str  # the override that switches token reduction off
    benchmark_dataset: str  # validation images, as a dataset with the ground truth of all tasks
    metrics: Tuple[Tuple[str, str], ...]  # (task, metric) rows of the printed table
    train_minutes: int  # to train it on 2 CPU cores, with --train
    # The main job's small sweep (tools/sweep.py --grid; the preset is added); "": no sweep.
    sweep_grid: str = ""
    # Overrides of each further training round, started from the previous round's weights.
    further_rounds: Tuple[Tuple[str, ...], ...] = ()
    # A video model (Mask2Former-VIS on expedite_videos), whose training starts from the weights
    # of the built-in image model named here (tools/init_video_from_image.py).
    video_from: str = ""
    train_overrides: Tuple[str, ...] = ()  # of its first training round

    @property
    def video(self) -> bool:
        return bool(self.video_from)

    @property
    def shipped_checkpoint(self) -> Path:
        return REPO / "checkpoints" / f"{self.name}.pth"

    @property
    def cached_checkpoint(self) -> Path:
        return cache_dir() / "checkpoints" / self.name / "model_final.pth"


BUILTIN_MODELS = {
    "vitdet": BuiltinModel(
        name="mask_rcnn_vitdet_scenes",
        config=REPO / "configs" / "ViTDet" / "builtin" / "mask_rcnn_vitdet_scenes.py",
        disable="model.backbone.net.expedite.enabled=False",
        benchmark_dataset="expedite_scenes_val",
        metrics=tuple((task, m) for task in ("bbox", "segm") for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")),
        train_minutes=35,
        sweep_grid="location=1,2,3 expedit.grid=6",  # and the preset: location 2, grid 4
    ),
    "mask2former": BuiltinModel(
        name="mask2former_swin_tiny_scenes",
        config=REPO / "configs" / "Mask2Former" / "builtin" / "maskformer2_swin_tiny_scenes_panoptic.py",
        disable="model.backbone.expedite.enabled=False",
        benchmark_dataset="expedite_scenes_val_panoptic",
        metrics=(
            *(("panoptic_seg", m) for m in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")),
            *(("segm", m) for m in ("AP", "AP50", "AP75")),
            *(("sem_seg", m) for m in ("mIoU", "pACC")),
        ),
        train_minutes=80,
        sweep_grid="location=4 expedit.grid=3,4,6",  # and the preset: location 6, grid 4
        # PQ 23.9 -> 26.1 -> 28.4 on expedite_scenes_val
        further_rounds=(("train.max_iter=1200",), ("train.max_iter=1200",)),
    ),
    "video": BuiltinModel(
        name="mask2former_swin_tiny_videos",
        config=REPO / "configs" / "Mask2Former-VIS" / "builtin" / "video_maskformer2_swin_tiny_videos.py",
        disable="model.backbone.expedite.enabled=False",
        benchmark_dataset="expedite_videos_val",
        metrics=tuple(("segm", m) for m in ("AP", "AP50", "AP75", "AR1", "AR10")),
        train_minutes=12,
        video_from="mask2former",
        # One round of the config's 1000 iterations: YouTube-VIS AP 2.3 (the image weights) -> 25.2
        # on expedite_videos_val; a second round gave no more (BENCHMARKS.md, "Built-in video model").
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("EXPEDITE_CACHE", Path.home() / ".cache" / "expedite_vit"))


def run(command, log_path: Path):
    """Run a step of the job, its output in ``log_path``; stop with that log's tail on failure."""
    print(f"$ {' '.join(str(c) for c in command)}", flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        result = subprocess.run([str(c) for c in command], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if result.returncode != 0:
        tail = log_path.read_text()[-3000:]
        sys.exit(f"step failed (exit {result.returncode}); end of {log_path}:\n{tail}")


def missing_checkpoint_message(model: BuiltinModel) -> str:
    train = (f"`tools/main_job.py --models {model_key(model)} --train` trains it into {model.cached_checkpoint.parent} "
             f"(about {model.train_minutes} minutes on 2 CPU cores)")
    return f"the built-in checkpoint {model.shipped_checkpoint} is missing (is this a full clone?); {train}"


def model_key(model: BuiltinModel) -> str:
    return next(key for key, value in BUILTIN_MODELS.items() if value is model)


def shipped_checkpoint(model: BuiltinModel) -> Path:
    if not model.shipped_checkpoint.exists():
        sys.exit(missing_checkpoint_message(model))
    return model.shipped_checkpoint


def train_checkpoint(model: BuiltinModel, output: Path, retrained: Collection[str] = ()) -> Path:
    """Train ``model`` from scratch into the cache, round by round; a round that an interrupted
    job left unfinished is resumed, one that finished is kept. A video model starts from its image
    model's weights: the ones retrained by this job if ``retrained`` names that model, else the
    shipped ones."""
    trained = model.cached_checkpoint
    print(f"Training {model.name} into {trained.parent} (about {model.train_minutes} minutes on 2 CPU cores).",
          flush=True)
    # Trained without token reduction: the method accelerates an already-trained model.
    rounds = [model.train_overrides, *model.further_rounds]
    weights = ""
    if model.video:  # from the image model's weights, its class rows mapped by name
        image_model = BUILTIN_MODELS[model.video_from]
        retrained_image = model.video_from in retrained
        image_checkpoint = image_model.cached_checkpoint if retrained_image else shipped_checkpoint(image_model)
        weights = trained.parent / "init_from_image.pth"
        # Made again on every run: the image weights it comes from may have been retrained.
        run([sys.executable, "tools/init_video_from_image.py", "--overwrite", image_checkpoint, weights],
            output / "init_from_image.log")
    for index, overrides in enumerate(rounds):
        round_dir = trained.parent if index == len(rounds) - 1 else trained.parent / f"round{index + 1}"
        if not (round_dir / "model_final.pth").exists():
            run([sys.executable, "train_net.py", "--config-file", model.config, "--resume",
                 f"train.output_dir={round_dir}", f"train.init_checkpoint={weights}", model.disable, *overrides],
                output / f"train_round{index + 1}.log")
        weights = round_dir / "model_final.pth"
    return trained


def evaluate(model: BuiltinModel, checkpoint: Path, output: Path, *overrides) -> dict:
    run([sys.executable, "train_net.py", "--eval-only", "--config-file", model.config,
         f"train.init_checkpoint={checkpoint}", f"train.output_dir={output}", *overrides],
        output.with_name(f"{output.name}.log"))  # beside the folder: train_net.py wants it empty
    return json.loads((output / "metrics_eval.json").read_text())


def metric_table(model: BuiltinModel, baseline: dict, expedited: dict) -> str:
    rows = [f"{'metric':<20}{'baseline':>10}{'expedited':>11}{'delta':>8}"]
    for task, metric in model.metrics:
        b, e = baseline[task][metric], expedited[task][metric]
        rows.append(f"{task + ' ' + metric:<20}{b:>10.2f}{e:>11.2f}{e - b:>+8.2f}")
    return "\n".join(rows)


def run_sweep(model: BuiltinModel, checkpoint: Path, output: Path, sweep_images: int) -> Path:
    """A small sweep around the preset on the first ``sweep_images`` validation images; returns
    the path of its Pareto plot."""
    from expedite_vit.sweep.report import format_labelled_summary

    sweep_dir = output / "sweep"
    run([sys.executable, "tools/sweep.py", "--config-file", model.config, "--dataset", model.benchmark_dataset,
         "--num-images", str(sweep_images), "--warmup", "0", "--iters", "1", "--grid", model.sweep_grid,
         "--output", sweep_dir, f"train.init_checkpoint={checkpoint}"], output / "sweep.log")
    plot = sweep_dir / "sweep.png"
    summary = sweep_dir / "summary.json"
    print(f"\nOperating points ({model.sweep_grid} and the preset, {sweep_images} images; tools/sweep.py):")
    if summary.is_file():
        print(format_labelled_summary(json.loads(summary.read_text())).splitlines()[0])  # rank correlation
    print(f"Pareto plot: {plot}", flush=True)
    return plot


def run_benchmark(model: BuiltinModel, checkpoint: Path, output: Path, benchmark_images: int,
                  benchmark_clips: int) -> None:
    from expedite_vit.benchmark.report import format_table

    bench_json = output / "benchmark.json"
    inputs = ["--num-clips", str(benchmark_clips)] if model.video else ["--num-images", str(benchmark_images)]
    run([sys.executable, "tools/benchmark.py", "--config-file", model.config, "--dataset", model.benchmark_dataset,
         *inputs, "--output-json", bench_json, "--overwrite", f"train.init_checkpoint={checkpoint}"],
        output / "benchmark.log")
    bench = json.loads(bench_json.read_text())
    print("\nSpeed and fidelity, same run, same " + ("clips" if model.video else "images") + " (tools/benchmark.py):")
    print(format_table(bench))
    flops, speedup = bench["flops"]["ratio"], bench["latency_ms"]["speedup"]
    print(f"Backbone: {flops['backbone']:.2f}x fewer FLOPs, {speedup['backbone']:.2f}x faster; "
          f"end to end: {speedup['model']:.2f}x faster.")
    if model.video:
        tracks = bench["fidelity"]["agreement"]["tracks"]
        print(f"Tracks: {tracks['recovered']:.1%} of the baseline's {tracks['baseline_tracks']} recovered "
              f"(tube IoU >= {tracks['iou_threshold']}, same class), mean tube IoU {tracks['mean_iou']:.3f}.")


def demo_inputs(model: BuiltinModel, dataset_root: Path) -> List[Path]:
    """A few validation images; for the video model, the frames of its first validation video."""
    if model.video:
        first_video = sorted(p for p in (dataset_root / "val" / "JPEGImages").iterdir() if p.is_dir())[0]
        return sorted(first_video.glob("*.jpg"))
    return sorted((dataset_root / "val").glob("*.jpg"))[:4]


def run_model(model: BuiltinModel, output: Path, dataset_root: Path, *, benchmark_images: int,
              benchmark_clips: int, train: bool, retrained: Collection[str] = (), sweep_images: int = 4) -> None:
    print(f"\n===== {model.name} ({model.config.relative_to(REPO)}) =====", flush=True)
    checkpoint = train_checkpoint(model, output, retrained) if train else shipped_checkpoint(model)
    print(f"Checkpoint: {checkpoint}", flush=True)

    baseline = evaluate(model, checkpoint, output / "eval_baseline", model.disable)
    expedited = evaluate(model, checkpoint, output / "eval_expedite")
    print(f"\nOn {model.benchmark_dataset}, token reduction off (baseline) and on (expedited):")
    print(metric_table(model, baseline, expedited))

    run_benchmark(model, checkpoint, output, benchmark_images, benchmark_clips)

    vis = output / "visualizations"
    run([sys.executable, "demo/demo.py", "--config-file", model.config, "--compare", "--overwrite",
         "--output", vis, "--input", *demo_inputs(model, dataset_root), f"train.init_checkpoint={checkpoint}"],
        output / "demo.log")
    drawn = "tracks, baseline | expedited, as a video" if model.video else "baseline | expedited | token clusters"
    print(f"\nVisualisations ({drawn}): {vis}")

    if sweep_images and model.sweep_grid:
        run_sweep(model, checkpoint, output, sweep_images)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", help="new folder for all results (default: output/main_job/<date>-<time>)")
    parser.add_argument("--models", nargs="+", choices=sorted(BUILTIN_MODELS),
                        default=list(BUILTIN_MODELS), help="built-in models to run (default: all)")
    parser.add_argument("--benchmark-images", type=int, default=20)
    parser.add_argument("--benchmark-clips", type=int, default=4, help="validation videos the video model's benchmark runs")
    parser.add_argument("--sweep-images", type=int, default=4,
                        help="images of the small operating-point sweep that draws the Pareto plot (0: no sweep)")
    parser.add_argument("--train", action="store_true",
                        help="retrain the models from scratch into the cache and evaluate those (not the shipped ones)")
    args = parser.parse_args()
    if args.benchmark_images < 1:
        parser.error(f"--benchmark-images must be at least 1, got {args.benchmark_images}")
    if args.benchmark_clips < 1:
        parser.error(f"--benchmark-clips must be at least 1, got {args.benchmark_clips}")
    if args.sweep_images < 0:
        parser.error(f"--sweep-images must be 0 (no sweep) or more, got {args.sweep_images}")
    for key in args.models:
        model = BUILTIN_MODELS[key]
        if not args.train and not model.shipped_checkpoint.exists():
            parser.error(missing_checkpoint_message(model))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    output = Path(args.output or REPO / "output" / "main_job" / stamp).resolve()
    if output.exists() and any(output.iterdir()):
        parser.error(f"--output {output} already holds results; choose a new folder")

    from expedite_vit.data import ensure_expedite_scenes, ensure_expedite_videos

    models = [key for key in BUILTIN_MODELS if key in args.models]  # an image model before its video model
    roots = {}
    for video in sorted({BUILTIN_MODELS[key].video for key in models}):
        roots[video] = Path(ensure_expedite_videos() if video else ensure_expedite_scenes())
        print(f"Built-in {'video' if video else 'image'} dataset: {roots[video]}", flush=True)
    for key in models:
        model = BUILTIN_MODELS[key]
        run_model(model, output / model.name, roots[model.video], benchmark_images=args.benchmark_images,
                  benchmark_clips=args.benchmark_clips, train=args.train,
                  retrained=models if args.train else (), sweep_images=args.sweep_images)
    print(f"\nLogs, metrics and benchmark JSON: {output}")


if __name__ == "__main__":
    main()
