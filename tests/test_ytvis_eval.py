"""Tests of the YouTube-VIS evaluator: hand-computed cases, parity with COCOeval on one-frame videos,
the detectron2 evaluator (results files, unlabelled splits) and errors on bad input."""

import contextlib
import io
import json
import logging
import math
import zipfile

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from expedite_vit.data import register_ytvis_instances
from expedite_vit.evaluation import (
    COCO_AREA_THRESHOLDS,
    YTVIS_AREA_THRESHOLDS,
    YTVISEvaluator,
    evaluate_ytvis,
    ytvis_results_from_output,
)

SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10")
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _box(size, y0, y1, x0, x1):
    mask = np.zeros(size, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _ground_truth(size, lengths, tracks, categories=CATEGORIES):
    """
    Args:
        size: (H, W) of every video; lengths: frames of videos 1, 2, ...
        tracks: [(video id, category id, [mask or None] * T)], optionally with a 4th item iscrowd.
    """
    videos = [{"id": i + 1, "height": size[0], "width": size[1], "length": n} for i, n in enumerate(lengths)]
    annotations = [
        {
            "id": i + 1, "video_id": track[0], "category_id": track[1],
            "iscrowd": track[3] if len(track) > 3 else 0,
            "segmentations": [None if m is None else _rle(m) for m in track[2]],
        }
        for i, track in enumerate(tracks)
    ]
    return {"videos": videos, "annotations": annotations, "categories": categories}


def _result(video_id, category_id, score, masks):
    return {"video_id": video_id, "category_id": category_id, "score": score,
            "segmentations": [None if m is None else _rle(m) for m in masks]}


def _ap_for_iou(iou):
    """AP (percent) of one perfectly ranked detection with tube IoU `iou` against one ground truth."""
    thresholds = np.linspace(0.5, 0.95, 10)
    return 100.0 * float(np.mean(iou >= thresholds))


# ---------------------------------------------------------------------------------------------
# Hand-computed cases


def test_perfect_predictions_score_100():
    size = (40, 60)
    a, b, c = _box(size, 0, 10, 0, 10), _box(size, 5, 30, 20, 50), _box(size, 30, 40, 0, 60)
    tracks = [(1, 1, [a, None, a]), (1, 1, [None, b, b]), (1, 2, [c, c, None]), (2, 2, [b, b])]
    gt = _ground_truth(size, [3, 2], tracks)
    results = [_result(video, category, 1.0, masks) for video, category, masks in tracks]
    metrics = evaluate_ytvis(gt, results)
    for key in ("AP", "AP50", "AP75", "APs", "AR10", "AP-cat", "AP-dog"):
        assert metrics[key] == pytest.approx(100.0), key
    # Video 1 has two cats: one detection per (video, category) finds one of them.
    assert metrics["AR1"] == pytest.approx((50 + 100) / 2)
    assert math.isnan(metrics["APm"]) and math.isnan(metrics["APl"])  # nothing that big


def test_tube_iou_sums_intersections_and_unions_over_frames():
    size = (30, 30)
    gt_mask, dt_mask = _box(size, 0, 10, 0, 10), _box(size, 0, 10, 2, 12)  # 100 pixels each, 80 shared
    other = _box(size, 20, 25, 20, 30)  # 50 pixels
    # Frames 0-3: identical masks, I = U = 100 each. Frame 4: both, I = 80, U = 120. Frame 5: ground
    # truth only, U += 100. Frame 6: neither, no change. Frame 7: detection only, U += 50.
    gt = _ground_truth(size, [8], [(1, 1, [gt_mask] * 6 + [None, None])])
    results = [_result(1, 1, 0.9, [gt_mask] * 4 + [dt_mask, None, None, other])]
    iou = (400 + 80) / (400 + 120 + 100 + 50)  # 0.716: passes thresholds 0.50 to 0.70
    metrics = evaluate_ytvis(gt, results)
    assert metrics["AP"] == pytest.approx(_ap_for_iou(iou)) == pytest.approx(50.0)
    # Dropping either one-sided frame from the union, or averaging per-frame IoUs, would pass 0.75.
    assert metrics["AP75"] == 0.0 and metrics["AP50"] == pytest.approx(100.0)

    # A 2-frame video whose second frame the prediction misses: IoU = 100 / (100 + 60).
    second = _box(size, 20, 26, 20, 30)  # 60 pixels
    gt = _ground_truth(size, [2], [(1, 1, [gt_mask, second])])
    metrics = evaluate_ytvis(gt, [_result(1, 1, 0.9, [gt_mask, None])])
    assert metrics["AP"] == pytest.approx(_ap_for_iou(100 / 160)) == pytest.approx(30.0)
    assert metrics["AP50"] == pytest.approx(100.0) and metrics["AP75"] == 0.0


@pytest.mark.parametrize("shift, expected_iou", [(0, 1.0), (1, 90 / 110), (2, 80 / 120), (4, 60 / 140)])
def test_known_iou_gives_ap_at_each_threshold(shift, expected_iou):
    size = (20, 30)
    gt_masks = [_box(size, 0, 10, 0, 10), _box(size, 5, 15, 10, 20)]
    dt_masks = [np.roll(m, shift, axis=1) for m in gt_masks]
    gt = _ground_truth(size, [2], [(1, 2, gt_masks)])
    metrics = evaluate_ytvis(gt, [_result(1, 2, 0.5, dt_masks)])
    assert metrics["AP"] == pytest.approx(_ap_for_iou(expected_iou))
    assert metrics["AP50"] == pytest.approx(100.0 if expected_iou >= 0.5 else 0.0)
    assert metrics["AP75"] == pytest.approx(100.0 if expected_iou >= 0.75 else 0.0)


def test_empty_mask_and_missing_frame_count_the_same():
    size = (20, 20)
    mask = _box(size, 0, 10, 0, 10)
    gt = _ground_truth(size, [2], [(1, 1, [mask, mask])])
    as_none = evaluate_ytvis(gt, [_result(1, 1, 0.5, [mask, None])])
    as_empty = evaluate_ytvis(gt, [_result(1, 1, 0.5, [mask, np.zeros(size, dtype=bool)])])
    np.testing.assert_equal(as_none, as_empty)  # NaN counts as equal
    assert as_none["AP"] == pytest.approx(_ap_for_iou(0.5))


def test_two_categories_average_and_labels_must_agree():
    size = (20, 20)
    cat, dog = _box(size, 0, 10, 0, 10), _box(size, 10, 20, 10, 20)
    gt = _ground_truth(size, [1], [(1, 1, [cat]), (1, 2, [dog])])
    # The dog's mask is perfect but labelled cat: a false positive for cats, a miss for dogs.
    metrics = evaluate_ytvis(gt, [_result(1, 1, 0.9, [cat]), _result(1, 1, 0.8, [dog])])
    assert metrics["AP-cat"] == pytest.approx(100.0)
    assert metrics["AP-dog"] == 0.0
    assert metrics["AP"] == pytest.approx(50.0)


def test_a_higher_scored_false_positive_halves_precision():
    size = (20, 20)
    mask, elsewhere = _box(size, 0, 10, 0, 10), _box(size, 10, 20, 10, 20)
    gt = _ground_truth(size, [2], [(1, 1, [mask, mask])])
    true_positive = _result(1, 1, 0.5, [mask, mask])
    false_positive = _result(1, 1, 0.9, [elsewhere, elsewhere])
    metrics = evaluate_ytvis(gt, [true_positive, false_positive])
    assert metrics["AP"] == pytest.approx(50.0)  # precision 1/2 at recall 1
    assert metrics["AR1"] == 0.0 and metrics["AR10"] == pytest.approx(100.0)
    false_positive["score"] = 0.1
    assert evaluate_ytvis(gt, [true_positive, false_positive])["AP"] == pytest.approx(100.0)
    # A false positive in a video without ground truth of the class costs the same.
    gt = _ground_truth(size, [2, 2], [(1, 1, [mask, mask])])
    fp_elsewhere = _result(2, 1, 0.9, [mask, mask])
    assert evaluate_ytvis(gt, [true_positive, fp_elsewhere])["AP"] == pytest.approx(50.0)


def test_crowd_ground_truth_is_ignored():
    size = (20, 20)
    person, crowd = _box(size, 0, 10, 0, 10), _box(size, 10, 20, 0, 20)
    gt = _ground_truth(size, [1], [(1, 1, [person]), (1, 1, [crowd], 1)])
    # Detections on the crowd count neither way, however many and however scored.
    results = [_result(1, 1, 0.9, [crowd]), _result(1, 1, 0.8, [crowd]), _result(1, 1, 0.5, [person])]
    assert evaluate_ytvis(gt, results)["AP"] == pytest.approx(100.0)
    # Missing the crowd costs nothing either.
    assert evaluate_ytvis(gt, [_result(1, 1, 0.5, [person])])["AR10"] == pytest.approx(100.0)


def test_area_ranges_use_the_mean_area_over_frames_with_a_mask():
    size = (200, 200)
    # Mean of 16000 and 18000 (the None frame does not count): 17000, medium for YouTube-VIS
    # (>= 128^2 = 16384) although its first frame alone would be small; large for COCO.
    medium = [_box(size, 0, 100, 0, 160), None, _box(size, 0, 100, 0, 180)]
    small = [_box(size, 150, 160, 150, 160)] * 3  # 100
    gt = _ground_truth(size, [3], [(1, 1, medium), (1, 1, small)])
    found_medium = _result(1, 1, 0.9, medium)
    small_false_positive = _result(1, 1, 0.95, [_box(size, 180, 190, 0, 10)] * 3)
    results = [found_medium, small_false_positive]

    metrics = evaluate_ytvis(gt, results)
    assert metrics["APm"] == pytest.approx(100.0)  # the small ground truth and detection are ignored
    assert metrics["APs"] == 0.0
    assert math.isnan(metrics["APl"])
    # One of two found, after one false positive: precision 1/2 up to recall 1/2.
    assert metrics["AP"] == pytest.approx(100 * 0.5 * 51 / 101)

    metrics = evaluate_ytvis(gt, results, area_thresholds=COCO_AREA_THRESHOLDS)
    assert metrics["APl"] == pytest.approx(100.0)
    assert metrics["APs"] == 0.0
    assert math.isnan(metrics["APm"])


def test_ground_truth_as_polygons_or_uncompressed_rle():
    size = (40, 40)
    mask = _box(size, 10, 30, 5, 25)
    gt = _ground_truth(size, [2], [(1, 1, [mask, None])])
    results = [_result(1, 1, 0.7, [mask, None])]
    expected = evaluate_ytvis(gt, results)
    assert expected["AP"] == pytest.approx(100.0)

    uncompressed = np.asfortranarray(mask.astype(np.uint8)).ravel(order="F")
    changes = np.flatnonzero(np.diff(uncompressed)) + 1
    counts = np.diff(np.concatenate([[0], changes, [uncompressed.size]])).tolist()
    gt["annotations"][0]["segmentations"][0] = {"size": list(size), "counts": counts}
    np.testing.assert_equal(evaluate_ytvis(gt, results), expected)

    gt["annotations"][0]["segmentations"][0] = [[5, 10, 25, 10, 25, 30, 5, 30]]  # x, y corners
    assert evaluate_ytvis(gt, results)["AP50"] == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------
# Parity with COCOeval on one-frame videos


def _random_mask(rng, size):
    height, width = size
    y0, x0 = rng.integers(0, height - 2), rng.integers(0, width - 2)
    return _box(size, y0, y0 + rng.integers(2, height), x0, x0 + rng.integers(2, width))


def _random_instances(rng, size, num_images, num_categories):
    """Ground truth [(image id, category id, mask)] and detections [(image id, category id, score, mask)],
    detections partly perturbed copies of ground truth, some with a wrong category."""
    ground_truth, detections = [], []
    for image_id in range(1, num_images + 1):
        image_gt = [
            (image_id, int(rng.integers(1, num_categories + 1)), _random_mask(rng, size))
            for _ in range(rng.integers(0, 6))
        ]
        ground_truth += image_gt
        for _ in range(rng.integers(0, 9)):
            if image_gt and rng.random() < 0.6:
                _, category, mask = image_gt[rng.integers(len(image_gt))]
                mask = np.roll(mask, int(rng.integers(-12, 12)), axis=int(rng.integers(2)))
                if rng.random() < 0.2:
                    category = int(rng.integers(1, num_categories + 1))
            else:
                category, mask = int(rng.integers(1, num_categories + 1)), _random_mask(rng, size)
            detections.append((image_id, category, float(rng.random()), mask))
    return ground_truth, detections


def _cocoeval_summary(size, num_images, categories, ground_truth, detections, area_thresholds):
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "height": size[0], "width": size[1]} for i in range(1, num_images + 1)],
        "annotations": [
            {"id": i + 1, "image_id": image_id, "category_id": category, "segmentation": _rle(mask),
             "area": int(mask.sum()), "bbox": [0, 0, 1, 1], "iscrowd": 0}
            for i, (image_id, category, mask) in enumerate(ground_truth)
        ],
        "categories": categories,
    }
    small, large = area_thresholds
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        results = coco.loadRes([
            {"image_id": image_id, "category_id": category, "score": score, "segmentation": _rle(mask)}
            for image_id, category, score, mask in detections
        ])
        evaluation = COCOeval(coco, results, "segm")
        evaluation.params.areaRng = [[0, 1e10], [0, small], [small, large], [large, 1e10]]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # As detectron2 reports it: percent, NaN for "nothing to score".
    return [s * 100 if s >= 0 else float("nan") for s in evaluation.stats[: len(SUMMARY)]]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("area_thresholds", [COCO_AREA_THRESHOLDS, (40**2, 80**2)])
def test_one_frame_videos_match_cocoeval(seed, area_thresholds):
    rng = np.random.default_rng(seed)
    size, num_images = (120, 160), 6
    categories = [{"id": i, "name": f"class{i}"} for i in (1, 2, 3)]
    ground_truth, detections = _random_instances(rng, size, num_images, len(categories))
    expected = _cocoeval_summary(size, num_images, categories, ground_truth, detections, area_thresholds)

    gt = _ground_truth(size, [1] * num_images, [(v, c, [m]) for v, c, m in ground_truth], categories)
    results = [_result(v, c, s, [m]) for v, c, s, m in detections]
    metrics = evaluate_ytvis(gt, results, area_thresholds=area_thresholds)
    np.testing.assert_allclose([metrics[k] for k in SUMMARY], expected, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_results_raise_naming_video_and_field():
    size = (20, 20)
    mask = _box(size, 0, 10, 0, 10)
    gt = _ground_truth(size, [2], [(1, 1, [mask, mask])])
    with pytest.raises(ValueError, match="video 7 is not a video"):
        evaluate_ytvis(gt, [_result(7, 1, 0.5, [mask, mask])])
    with pytest.raises(ValueError, match="video 1: 'category_id' 9 is not a category"):
        evaluate_ytvis(gt, [_result(1, 9, 0.5, [mask, mask])])
    with pytest.raises(ValueError, match="video 1: 'segmentations' has 3 frames, the video has 2"):
        evaluate_ytvis(gt, [_result(1, 1, 0.5, [mask, mask, mask])])
    message = r"video 1: 'segmentations'\[1\] is a 10x20 mask, the video is 20x20"
    with pytest.raises(ValueError, match=message):
        evaluate_ytvis(gt, [_result(1, 1, 0.5, [mask, mask[:10]])])


def _output(masks, labels=None, scores=None, image_size=None):
    return {
        "image_size": image_size or tuple(masks[0].shape[1:]),
        "pred_scores": scores or [0.9] * len(masks),
        "pred_labels": labels or [0] * len(masks),
        "pred_masks": masks,
    }


def test_bad_model_outputs_raise_naming_video_and_field():
    video = {"video_id": 3, "length": 2, "height": 20, "width": 30}
    good = torch.zeros(2, 20, 30, dtype=torch.bool)
    assert len(ytvis_results_from_output(video, _output([good]), [1, 2])[0]["segmentations"]) == 2
    cases = [
        (_output([torch.zeros(2, 10, 15, dtype=torch.bool)]), r"video 3: 'image_size' is \(10, 15\)"),
        (_output([torch.zeros(2, 10, 15, dtype=torch.bool)], image_size=(20, 30)),
         r"video 3: 'pred_masks'\[0\] is 10x15 per frame, the video is 20x30"),
        (_output([torch.zeros(3, 20, 30, dtype=torch.bool)]), r"video 3: 'pred_masks'\[0\] has 3 frames"),
        (_output([good, good], labels=[0, 2]), r"video 3: 'pred_labels'\[1\] is 2, not a category"),
        (_output([good.float()]), r"video 3: 'pred_masks'\[0\] must be a \(T, H, W\) bool mask"),
        (_output([good], scores=[0.1, 0.2]), "video 3: 'pred_scores', 'pred_labels' and 'pred_masks'"),
    ]
    for output, message in cases:
        with pytest.raises(ValueError, match=message):
            ytvis_results_from_output(video, output, [1, 2])


# ---------------------------------------------------------------------------------------------
# The detectron2 evaluator


@pytest.fixture
def registered(tmp_path):
    """Register YouTube-VIS jsons written to tmp_path; returns a function (name, gt dict) -> name."""
    names = []

    def register(name, gt):
        json_file = tmp_path / f"{name}.json"
        json_file.write_text(json.dumps(gt))
        register_ytvis_instances(name, {}, str(json_file), str(tmp_path))
        names.append(name)
        return name

    yield register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _two_video_ground_truth():
    size = (24, 32)
    a, b = _box(size, 0, 10, 0, 10), _box(size, 10, 24, 8, 30)
    tracks = [(1, 1, [a, a, None]), (1, 2, [b, None, b]), (2, 2, [a, b])]
    return _ground_truth(size, [3, 2], tracks), tracks


def _outputs_from_tracks(gt, tracks):
    """(inputs, outputs) per video as Mask2Former-VIS gives them, with the ground truth as predictions."""
    pairs = []
    for video in gt["videos"]:
        own = [t for t in tracks if t[0] == video["id"]]
        masks = [
            torch.from_numpy(np.stack([np.zeros((video["height"], video["width"]), bool) if m is None else m
                                       for m in t[2]]))
            for t in own
        ]
        inputs = [{"video_id": video["id"], "length": video["length"], "height": video["height"],
                   "width": video["width"]}]
        output = {"image_size": (video["height"], video["width"]), "pred_scores": [1.0] * len(own),
                  "pred_labels": [t[1] - 1 for t in own], "pred_masks": masks}
        pairs.append((inputs, output))
    return pairs


def test_evaluator_scores_ground_truth_100_and_writes_results(registered, tmp_path):
    gt, tracks = _two_video_ground_truth()
    name = registered("toy_ytvis_labelled", gt)
    output_dir = tmp_path / "out"
    evaluator = YTVISEvaluator(name, distributed=False, output_dir=str(output_dir))
    evaluator.reset()
    for inputs, output in _outputs_from_tracks(gt, tracks):
        evaluator.process(inputs, output)
    results = evaluator.evaluate()
    assert set(results) == {"segm"}
    assert {"AP-cat", "AP-dog", *SUMMARY} == set(results["segm"])
    for key in ("AP", "AP50", "AP75", "AR10"):
        assert results["segm"][key] == pytest.approx(100.0)

    written = json.loads((output_dir / "results.json").read_text())
    assert len(written) == len(tracks)
    assert {r["category_id"] for r in written} == {1, 2}  # dataset ids, not contiguous labels
    with zipfile.ZipFile(output_dir / "results.zip") as archive:
        assert archive.namelist() == ["results.json"]
        assert json.loads(archive.read("results.json")) == written
    # The written results give the same metrics when evaluated on their own.
    np.testing.assert_equal(evaluate_ytvis(gt, written), results["segm"])


def test_evaluator_without_annotations_only_writes_results_zip(registered, tmp_path, caplog):
    gt, tracks = _two_video_ground_truth()
    name = registered("toy_ytvis_unlabelled", {k: v for k, v in gt.items() if k != "annotations"})
    output_dir = tmp_path / "server"
    evaluator = YTVISEvaluator(name, distributed=False, output_dir=str(output_dir))
    evaluator.reset()
    for inputs, output in _outputs_from_tracks(gt, tracks):
        evaluator.process(inputs, [output])  # a list of one output per input works too
    with caplog.at_level(logging.INFO, logger="expedite_vit.evaluation.ytvis"):
        assert evaluator.evaluate() == {}
    assert "has no annotations: wrote" in caplog.text and "results.zip" in caplog.text
    with zipfile.ZipFile(output_dir / "results.zip") as archive:
        assert len(json.loads(archive.read("results.json"))) == len(tracks)


def test_evaluator_without_predictions_returns_nothing(registered):
    gt, _ = _two_video_ground_truth()
    evaluator = YTVISEvaluator(registered("toy_ytvis_empty", gt), distributed=False)
    evaluator.reset()
    assert evaluator.evaluate() == {}


def test_evaluator_rejects_predictions_at_another_resolution(registered):
    gt, tracks = _two_video_ground_truth()
    evaluator = YTVISEvaluator(registered("toy_ytvis_resolution", gt), distributed=False)
    evaluator.reset()
    inputs, output = _outputs_from_tracks(gt, tracks)[0]
    output = dict(output, image_size=(12, 16), pred_masks=[m[:, ::2, ::2] for m in output["pred_masks"]])
    with pytest.raises(ValueError, match=r"video 1: 'image_size' is \(12, 16\), the video is \(24, 32\)"):
        evaluator.process(inputs, output)


def test_default_area_ranges_are_youtube_vis():
    assert YTVIS_AREA_THRESHOLDS == (128**2, 256**2)
    assert COCO_AREA_THRESHOLDS == (32**2, 96**2)
