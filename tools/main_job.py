#!/usr/bin/env python
"""The main job (`make main`): token reduction off vs on, on the built-in dataset and model.

1. Writes the built-in dataset into its cache folder if it is not there yet.
2. Finds the built-in ViTDet checkpoint (shipped in checkpoints/, or trained once into the cache
   by train_net.py when it is missing; that takes long on a CPU and happens only once).
3. Evaluates it with ``train_net.py --eval-only`` twice, token reduction off and on, through
   detectron2's COCOEvaluator, and prints both AP tables side by side.
4. Runs the benchmark (FLOPs, backbone and end-to-end latency, agreement) on the validation
   images, and draws baseline vs expedited predictions with the token clusters.

The same steps work for COCO with an official checkpoint: see the README.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "ViTDet" / "builtin" / "mask_rcnn_vitdet_scenes.py"
SHIPPED_CHECKPOINT = REPO / "checkpoints" / "mask_rcnn_vitdet_scenes.pth"
DISABLE = "model.backbone.net.expedite.enabled=False"


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


def find_or_train_checkpoint(output: Path) -> Path:
    if SHIPPED_CHECKPOINT.exists():
        return SHIPPED_CHECKPOINT
    trained = cache_dir() / "checkpoints" / "mask_rcnn_vitdet_scenes" / "model_final.pth"
    if not trained.exists():
        print(f"No built-in checkpoint at {SHIPPED_CHECKPOINT}: training one into {trained.parent} "
              "(once; about 35 minutes on 2 CPU cores).", flush=True)
        # Trained without token reduction: the method accelerates an already-trained model.
        run([sys.executable, "train_net.py", "--config-file", CONFIG, f"train.output_dir={trained.parent}",
             DISABLE], output / "train.log")
    return trained


def evaluate(checkpoint: Path, output: Path, *overrides) -> dict:
    run([sys.executable, "train_net.py", "--eval-only", "--config-file", CONFIG,
         f"train.init_checkpoint={checkpoint}", f"train.output_dir={output}", *overrides],
        output / "stdout.log")
    return json.loads((output / "metrics_eval.json").read_text())


def ap_table(baseline: dict, expedited: dict) -> str:
    rows = [f"{'metric':<12}{'baseline':>10}{'expedited':>11}{'delta':>8}"]
    for task in ("bbox", "segm"):
        for metric in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            b, e = baseline[task][metric], expedited[task][metric]
            rows.append(f"{task + ' ' + metric:<12}{b:>10.2f}{e:>11.2f}{e - b:>+8.2f}")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(REPO / "output" / "main_job"), help="folder for all results")
    parser.add_argument("--benchmark-images", type=int, default=20)
    args = parser.parse_args()
    output = Path(args.output).resolve()

    from expedite_vit.benchmark.report import format_table
    from expedite_vit.data import ensure_expedite_scenes

    print(f"Built-in dataset: {ensure_expedite_scenes()}", flush=True)
    checkpoint = find_or_train_checkpoint(output)
    print(f"Checkpoint: {checkpoint}", flush=True)

    baseline = evaluate(checkpoint, output / "eval_baseline", DISABLE)
    expedited = evaluate(checkpoint, output / "eval_expedite")
    print("\nCOCO AP on expedite_scenes_val, token reduction off (baseline) and on (expedited):")
    print(ap_table(baseline, expedited))

    bench_json = output / "benchmark.json"
    run([sys.executable, "tools/benchmark.py", "--config-file", CONFIG, "--dataset", "expedite_scenes_val",
         "--num-images", str(args.benchmark_images), "--output-json", bench_json, "--overwrite",
         f"train.init_checkpoint={checkpoint}"], output / "benchmark.log")
    bench = json.loads(bench_json.read_text())
    print("\nSpeed and fidelity, same run, same images (tools/benchmark.py):")
    print(format_table(bench))
    flops, speedup = bench["flops"]["ratio"], bench["latency_ms"]["speedup"]
    print(f"Backbone: {flops['backbone']:.2f}x fewer FLOPs, {speedup['backbone']:.2f}x faster; "
          f"end to end: {speedup['model']:.2f}x faster.")

    vis = output / "visualizations"
    images = sorted((Path(ensure_expedite_scenes()) / "val").glob("*.jpg"))[:4]
    run([sys.executable, "demo/demo.py", "--config-file", CONFIG, "--compare", "--overwrite",
         "--output", vis, "--input", *images, f"train.init_checkpoint={checkpoint}"], output / "demo.log")
    print(f"\nVisualisations (baseline | expedited | token clusters): {vis}")
    print(f"Logs, metrics and benchmark JSON: {output}")


if __name__ == "__main__":
    main()
