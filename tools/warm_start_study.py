#!/usr/bin/env python
"""Does the temporal warm start of Expedit's clustering pay? A video model's AP and its agreement
with the baseline (token reduction off), against ``expedit.n_iters``, with and without
``expedit.warm_start``.

One process: the baseline and the expedited model are built once from the config (same weights)
and run on the config's test split (``dataloader.test``); every setting is a field assignment on
the built expedited model. Per setting it reports the YouTube-VIS AP of the config's evaluator (as
``train_net.py --eval-only`` with the same overrides computes it), the agreement of the tracks with
the baseline's (matched one to one, same class, by tube IoU >= 0.5: the video benchmark's
:class:`PredictionAgreement`), the mean cosine similarity of the backbone features to the
baseline's, the whole-model seconds per video (one timed pass, rough) and the clustering layer's
milliseconds per frame. With ``--convergence`` it also reports how far the centres after
``n_iters`` rounds are, cold (pooled start) and warm, from the converged centres of a 100-round
cold clustering of the same frame (mean over valid cells of ``|c - c*| / |c*|``, on the clustering
inputs the expedited model sees on the test split)::

    python tools/warm_start_study.py --config-file configs/Mask2Former-VIS/builtin/video_maskformer2_swin_tiny_videos.py \\
        --n-iters 0 1 2 5 --convergence --output-json output/warm_start/study.json [KEY=VALUE overrides]
"""
import argparse
import json
import logging
import os
import sys
import time

import torch
from detectron2.config import instantiate

from expedite.layers import clustering_flags
from expedite.windows import cluster_frames, cluster_windows
from expedite_vit.benchmark.fidelity import FeatureSimilarity, PredictionAgreement
from expedite_vit.runtime.cli import load_checked_config
from expedite_vit.runtime.models import build_model_pair


def run(model, videos):
    """Outputs of every video, the backbone features of every chunk, seconds per video and
    milliseconds of clustering per frame."""
    chunks, clustering = [], [0.0]
    handles = [model.backbone.register_forward_hook(lambda module, args, output: chunks.append(output))]
    layer = model.backbone.token_reduction.clustering
    handles.append(layer.register_forward_pre_hook(lambda module, args: clustering.append(-time.perf_counter())))
    handles.append(layer.register_forward_hook(lambda module, args, output: clustering.append(time.perf_counter())))
    outputs, seconds = [], 0.0
    try:
        with torch.no_grad():
            for video in videos:
                start = time.perf_counter()
                outputs.append(model([video])[0])
                seconds += time.perf_counter() - start
    finally:
        for handle in handles:
            handle.remove()
    frames = sum(len(video["image"]) for video in videos)
    return outputs, chunks, seconds / len(videos), 1000 * sum(clustering) / frames


def evaluate(cfg, videos, outputs):
    evaluator = instantiate(cfg.dataloader.evaluator)
    evaluator.reset()
    for video, output in zip(videos, outputs):
        evaluator.process([video], [output])
    return evaluator.evaluate()["segm"]


def convergence(model, videos, n_iters_list, reference_iters=100):
    """{n_iters: (cold, warm)} mean relative distance of the centres to the converged cold ones."""
    layer = model.backbone.token_reduction.clustering
    caught, maps = [], []
    handle = layer.register_forward_pre_hook(lambda module, args: caught.append(args[0].detach()))
    try:
        with torch.no_grad():
            for video in videos:
                caught.clear()
                model([video])
                maps.append(torch.cat(caught))  # (T, H, W, C): the clip's clustering inputs
    finally:
        handle.remove()
    cfg = model.backbone.expedite.expedit
    flags = clustering_flags(model.backbone.expedite)

    def state(x, n_iters, warm):
        args = (x, layer.window, cfg.grid, n_iters, cfg.cluster_temperature, cfg.radius)
        return (cluster_frames if warm else cluster_windows)(*args, **flags)[1].context

    def distance(context, reference):
        gap = (context.centres - reference.centres).norm(dim=-1) / reference.centres.norm(dim=-1).clamp_min(1e-6)
        return gap[reference.centre_valid].mean().item()

    references = [state(x, reference_iters, False) for x in maps]
    result = {}
    for n_iters in n_iters_list:
        result[n_iters] = tuple(
            sum(distance(state(x, n_iters, warm), ref) for x, ref in zip(maps, references)) / len(maps)
            for warm in (False, True)
        )
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--n-iters", type=int, nargs="+", default=[0, 1, 2, 5])
    parser.add_argument("--output-json", default="")
    parser.add_argument("--convergence", action="store_true", help="also the centres' distance to converged ones")
    parser.add_argument("--score-threshold", type=float, default=0.0, help="tracks kept for agreement")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    cfg = load_checked_config(args.config_file, args.overrides)
    baseline, expedited = build_model_pair(cfg, cfg.train.device)
    videos = list(instantiate(cfg.dataloader.test))
    videos = [video for batch in videos for video in batch] if isinstance(videos[0], list) else videos
    print(f"{len(videos)} videos", file=sys.stderr)

    base_outputs, base_chunks, base_seconds, _ = run(baseline, videos)
    base_metrics = evaluate(cfg, videos, base_outputs)
    rows = [{"setting": "baseline (reduction off)", "AP": base_metrics["AP"], "AP50": base_metrics["AP50"],
             "seconds_per_video": base_seconds}]
    settings = expedited.backbone.expedite.expedit
    for n_iters in args.n_iters:
        for warm_start in (False, True):
            settings.n_iters = n_iters
            settings.warm_start = warm_start
            outputs, chunks, seconds, cluster_ms = run(expedited, videos)
            metrics = evaluate(cfg, videos, outputs)
            agreement = PredictionAgreement(args.score_threshold, 0.5)
            for base, out in zip(base_outputs, outputs):
                agreement.add(base, out)
            similarity = FeatureSimilarity()
            for base, out in zip(base_chunks, chunks):
                similarity.add(base, out)
            tracks = agreement.summary()["tracks"]
            rows.append({
                "n_iters": n_iters, "warm_start": warm_start, "AP": metrics["AP"], "AP50": metrics["AP50"],
                "tracks_recovered": tracks["recovered"], "mean_tube_iou": tracks["mean_iou"],
                "feature_cosine": similarity.summary(), "seconds_per_video": seconds,
                "clustering_ms_per_frame": cluster_ms,
            })
            print(json.dumps(rows[-1]), file=sys.stderr)

    print("| n_iters | warm start | AP | AP50 | tracks recovered | mean tube IoU (matched) | res4 cosine | res5 cosine | s / video | clustering ms / frame |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| baseline | - | {rows[0]['AP']:.2f} | {rows[0]['AP50']:.2f} | - | - | - | - | {base_seconds:.2f} | - |")
    for row in rows[1:]:
        cos = row["feature_cosine"]
        print(f"| {row['n_iters']} | {'on' if row['warm_start'] else 'off'} | {row['AP']:.2f} | {row['AP50']:.2f} | "
              f"{row['tracks_recovered']:.3f} | {row['mean_tube_iou']:.4f} | {cos.get('res4', float('nan')):.5f} | "
              f"{cos.get('res5', float('nan')):.5f} | {row['seconds_per_video']:.2f} | {row['clustering_ms_per_frame']:.2f} |")
    distances = convergence(expedited, videos, args.n_iters) if args.convergence else {}
    if distances:
        print("\n| n_iters | distance to converged centres, cold start | warm start |")
        print("|---|---|---|")
        for n_iters, (cold, warm) in distances.items():
            print(f"| {n_iters} | {cold:.3f} | {warm:.3f} |")
    if args.output_json:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
        with open(args.output_json, "w") as f:
            json.dump({"config": args.config_file, "overrides": args.overrides, "videos": len(videos), "rows": rows,
                   "convergence": {str(n): {"cold": c, "warm": w} for n, (c, w) in distances.items()}}, f,
                      indent=1)


if __name__ == "__main__":
    main()
