"""tools/benchmark.py and expedite_vit.benchmark on the tiny ViTDet config (CPU, a few seconds)."""
import importlib.util
import json
import os
import shlex

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from detectron2.structures import Boxes, Instances

from expedite_vit.benchmark import BenchmarkSettings, FeatureSimilarity, PredictionAgreement, match_detections
from expedite_vit.benchmark.inputs import (
    photograph_inputs,
    split_trailing_overrides,
    inference_augmentations,
)
from expedite_vit.benchmark.models import with_expedite_disabled
from expedite_vit.benchmark.report import write_markdown
from expedite_vit.benchmark.timing import latency_summary
from expedite_vit.tools.lazy_config import load_config
from test_train_net import REPO_ROOT, TINY_COCO_ENV, TINY_CONFIG, _write_coco_split

TEST_DATASET = "tiny_vitdet_coco_val"


def load_tool():
    spec = importlib.util.spec_from_file_location("benchmark_tool", REPO_ROOT / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_coco_dir(tmp_path_factory):
    """Two labelled validation images for the tiny config, named by its environment variable."""
    dataset_dir = tmp_path_factory.mktemp("tiny_coco")
    (dataset_dir / "images").mkdir()
    rng = np.random.default_rng(0)
    _write_coco_split(dataset_dir, "train.json", range(1, 2), rng)
    _write_coco_split(dataset_dir, "val.json", range(5, 7), rng)
    previous = os.environ.get(TINY_COCO_ENV)
    os.environ[TINY_COCO_ENV] = str(dataset_dir)
    yield dataset_dir
    if previous is None:
        del os.environ[TINY_COCO_ENV]
    else:
        os.environ[TINY_COCO_ENV] = previous


@pytest.fixture(scope="module")
def benchmark_run(tiny_coco_dir, tmp_path_factory):
    """One benchmark of the tiny model on its labelled dataset: (argv, results, markdown)."""
    out = tmp_path_factory.mktemp("benchmark")
    argv = [
        "--config-file", str(TINY_CONFIG), "--dataset", TEST_DATASET, "--num-images", "2",
        "--warmup", "1", "--iters", "3", "--score-threshold", "0.0",
        "--output-json", str(out / "results.json"), "--output-md", str(out / "results.md"),
    ]
    assert load_tool().main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    return argv, results, (out / "results.md").read_text()


def test_json_holds_every_measure(benchmark_run):
    _, results, _ = benchmark_run
    for key in ("command", "environment", "settings", "model", "inputs", "flops", "latency_ms",
                "token_reduction_time", "memory", "fidelity", "targets"):
        assert key in results, key
    for key in ("device", "device_name", "torch", "threads", "date"):
        assert results["environment"][key] is not None, key
    assert results["model"]["weights"].startswith("random")
    assert results["model"]["expedite"]["model.backbone.net.expedite"]["enabled"] is True
    assert results["inputs"]["num_images"] == 2 and results["inputs"]["source"] == "dataset"
    assert results["memory"]["method"] and results["memory"]["baseline_mib"] >= 0


def test_ratios_are_quotients_of_the_measured_values(benchmark_run):
    _, results, _ = benchmark_run
    flops = results["flops"]
    assert set(flops["ratio"]) == {"backbone", "backbone_with_pyramid", "model"}
    for part, ratio in flops["ratio"].items():
        assert ratio == pytest.approx(flops["baseline"][part] / flops["expedited"][part])
    latency = results["latency_ms"]
    for part in ("backbone", "model"):
        base, fast = latency["baseline"][part], latency["expedited"][part]
        assert latency["speedup"][part] == pytest.approx(base["median_ms"] / fast["median_ms"])
        for stats in (base, fast):
            assert stats["iters"] == 3 and stats["p90_ms"] >= stats["median_ms"] > 0
    memory = results["memory"]
    if memory["baseline_mib"] and memory["expedited_mib"]:
        assert memory["ratio"] == pytest.approx(memory["baseline_mib"] / memory["expedited_mib"])


def test_token_reduction_is_counted_and_timed_apart(benchmark_run):
    _, results, _ = benchmark_run
    base, fast = results["flops"]["baseline"], results["flops"]["expedited"]
    assert base["token_reduction"] == 0
    assert fast["token_clustering"] > 0 and fast["token_reconstruction"] > 0
    assert fast["token_reduction"] == pytest.approx(fast["token_clustering"] + fast["token_reconstruction"])
    assert fast["token_reduction_share"] == pytest.approx(fast["token_reduction"] / fast["backbone"])
    assert fast["backbone"] < base["backbone"]
    timing = results["token_reduction_time"]
    assert timing["token_clustering_ms"] > 0 and timing["token_reconstruction_ms"] > 0
    assert timing["share"] == pytest.approx(timing["token_reduction_ms"] / timing["backbone_ms"])
    assert 0 < timing["share"] < 1


def test_targets_follow_from_the_measures(benchmark_run):
    _, results, _ = benchmark_run
    latency_target = results["targets"]["latency_vs_flops"]
    assert latency_target["required"] == pytest.approx(0.9 * results["flops"]["ratio"]["backbone"])
    assert latency_target["measured"] == results["latency_ms"]["speedup"]["backbone"]
    assert latency_target["passed"] == (latency_target["measured"] >= latency_target["required"])
    share_target = results["targets"]["token_reduction_share"]
    assert share_target["measured"] == results["token_reduction_time"]["share"]
    assert share_target["passed"] == (share_target["measured"] <= 0.03)


def test_fidelity_on_a_labelled_dataset(benchmark_run):
    _, results, _ = benchmark_run
    fidelity = results["fidelity"]
    detections = fidelity["agreement"]["instances"]
    assert detections["baseline_detections"] > 0  # score threshold 0: every detection counts
    assert 0 <= detections["recovered"] <= 1
    assert detections["matched"] == 0 or 0.5 <= detections["mean_iou"] <= 1
    assert -1 <= fidelity["feature_cosine"]["backbone"]["last_feat"] <= 1
    assert set(fidelity["feature_cosine"]["backbone_with_pyramid"]) == {"p2", "p3", "p4", "p5", "p6"}
    task = fidelity["task_metric"]
    assert task["dataset"] == TEST_DATASET and task["images"] == 2
    for name in ("bbox", "segm"):
        base, fast = task["baseline"][name]["AP"], task["expedited"][name]["AP"]
        assert task["delta"][name]["AP"] == pytest.approx(fast - base)


def test_markdown_holds_the_command_and_machine(benchmark_run):
    argv, results, markdown = benchmark_run
    assert results["command"].endswith(shlex.join(argv))
    assert results["command"] in markdown
    assert results["environment"]["torch"] in markdown
    assert f"{results['environment']['threads']} threads" in markdown
    assert "| GFLOPs, backbone " in markdown and "latency ms, backbone" in markdown
    assert "PASS" in markdown or "FAIL" in markdown


def test_existing_output_is_refused_before_measuring(tmp_path, capsys):
    existing = tmp_path / "results.json"
    existing.write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        load_tool().main(["--config-file", str(TINY_CONFIG), "--output-json", str(existing)])
    assert exit_info.value.code != 0
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert existing.read_text() == "keep me"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config-file", "no/such/config.py"], "config file 'no/such/config.py' does not exist"),
        (["--config-file", str(TINY_CONFIG), "--input", "no_such_dir/*.jpg"], "no image file matches"),
        (["--config-file", str(TINY_CONFIG), "--iters", "0"], "iters must be at least 1"),
    ],
)
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool().main(argv)
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err


def test_markdown_is_appended_only_when_asked(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    write_markdown("first\n", str(path), append=False)
    write_markdown("second\n", str(path), append=True)
    assert path.read_text() == "first\n\nsecond\n"
    write_markdown("third\n", str(path), append=False)
    assert path.read_text() == "third\n"


def test_trailing_overrides_are_split_from_inputs(tmp_path):
    image = tmp_path / "a=b.jpg"  # an existing file stays an input even if it looks like key=value
    image.write_bytes(b"")
    words = ["x.jpg", str(image), "train.init_checkpoint=m.pth", "+a.b=1"]
    inputs, overrides = split_trailing_overrides(words)
    assert inputs == ["x.jpg", str(image)]
    assert overrides == ["train.init_checkpoint=m.pth", "+a.b=1"]


def test_latency_summary():
    stats = latency_summary([0.001, 0.002, 0.003, 0.010])
    assert stats["median_ms"] == pytest.approx(2.5) and stats["p90_ms"] >= stats["median_ms"]
    with pytest.raises(ValueError, match="iters must be at least 1"):
        latency_summary([])


def test_settings_name_bad_values():
    with pytest.raises(ValueError, match="amp must be one of"):
        BenchmarkSettings(amp="fp8")
    with pytest.raises(ValueError, match="either image inputs or a dataset"):
        BenchmarkSettings(inputs=["a.jpg"], dataset="coco_2017_val")


# ---- agreement metrics ---------------------------------------------------------------


def detections(boxes, scores, classes):
    instances = Instances((100, 100))
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    instances.scores = torch.tensor(scores)
    instances.pred_classes = torch.tensor(classes)
    return instances


def test_agreement_with_itself_is_exactly_one():
    """The baseline's real predictions (random weights) against themselves: an exact identity."""
    cfg = load_config(str(TINY_CONFIG))
    torch.manual_seed(0)
    model = instantiate(with_expedite_disabled(cfg.model)).eval()
    inputs = photograph_inputs(1, model.input_format, inference_augmentations(cfg))
    with torch.no_grad():
        outputs = model(inputs)[0]
        features = model.backbone(model.preprocess_image(inputs).tensor)
    assert len(outputs["instances"]) > 0

    agreement = PredictionAgreement(score_threshold=0.0)
    agreement.add(outputs, outputs)
    summary = agreement.summary()["instances"]
    assert summary["matched"] == summary["baseline_detections"] == summary["expedited_detections"] > 0
    assert summary["recovered"] == 1.0 and summary["precision"] == 1.0 and summary["mean_iou"] == 1.0

    similarity = FeatureSimilarity()
    similarity.add(features, features)
    assert all(value == pytest.approx(1.0, abs=1e-12) for value in similarity.summary().values())


def test_matching_needs_same_class_and_iou_and_prefers_higher_scores():
    baseline = detections([[0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60]], [0.9, 0.95, 0.8], [0, 0, 1])
    expedited = detections([[0, 0, 10, 10], [50, 50, 60, 60], [80, 80, 90, 90]], [0.9, 0.9, 0.9], [0, 2, 1])
    num_base, num_fast, ious = match_detections(baseline, expedited, score_threshold=0.5)
    # The 0.95 box takes the one class-0 match (IoU 10/11); the class-1 box has no class-1 partner
    # that overlaps it.
    assert (num_base, num_fast) == (3, 3)
    assert ious == [pytest.approx(10 / 11)]


def test_matching_ignores_detections_below_the_score_threshold():
    baseline = detections([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.3], [0, 0])
    expedited = detections([[0, 0, 10, 10], [20, 20, 30, 30]], [0.4, 0.9], [0, 0])
    assert match_detections(baseline, expedited, score_threshold=0.5) == (1, 1, [])
