"""tools/benchmark.py and expedite_vit.benchmark on the tiny ViTDet config (CPU, a few seconds)."""
import json
import shlex

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from detectron2.structures import Boxes, Instances

from expedite_vit.benchmark import BenchmarkSettings, FeatureSimilarity, PredictionAgreement, match_detections
from expedite_vit.runtime.inputs import (
    photograph_inputs,
    split_trailing_overrides,
    inference_augmentations,
)
from expedite_vit.runtime.models import with_expedite_disabled
from expedite_vit.benchmark.report import write_markdown
from expedite_vit.benchmark.timing import latency_summary
from expedite_vit.runtime.config import load_config
from test_train_net import REPO_ROOT, TINY_COCO_ENV, TINY_CONFIG, _write_coco_split
from conftest import load_script

TEST_DATASET = "tiny_vitdet_coco_val"


def load_tool():
    return load_script(REPO_ROOT / "tools" / "benchmark.py")


@pytest.fixture(scope="module")
def tiny_coco_dir(tmp_path_factory):
    """Two labelled validation images for the tiny config, named by its environment variable."""
    dataset_dir = tmp_path_factory.mktemp("tiny_coco")
    (dataset_dir / "images").mkdir()
    rng = np.random.default_rng(0)
    _write_coco_split(dataset_dir, "train.json", range(1, 2), rng)
    _write_coco_split(dataset_dir, "val.json", range(5, 7), rng)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(TINY_COCO_ENV, str(dataset_dir))
        yield dataset_dir


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
    # Expedit's clustering is the reducing layer, its reconstruction the restoring one.
    assert fast["reduce"] > 0 and fast["restore"] > 0
    assert fast["token_reduction"] == pytest.approx(fast["reduce"] + fast["restore"])
    assert fast["token_reduction_share"] == pytest.approx(fast["token_reduction"] / fast["backbone"])
    assert fast["backbone"] < base["backbone"]
    timing = results["token_reduction_time"]
    assert timing["reduce_ms"] > 0 and timing["restore_ms"] > 0
    assert timing["token_reduction_ms"] == pytest.approx(timing["reduce_ms"] + timing["restore_ms"])
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


# ---- memory, image counts and unlabelled images --------------------------------------------------


def test_cpu_peak_memory_is_the_tensor_high_water_mark():
    """Known allocations: 4 MiB + 4 MiB held together, then one freed and 4 MiB more: 8 MiB at
    most above what was held before; a tensor made before and freed during the call counts for
    nothing, and the largest call wins."""
    from expedite_vit.benchmark.timing import PeakMemory

    mib = 2**20 // 4  # float32 elements in a MiB
    meter = PeakMemory(torch.device("cpu"))
    with meter.measure():
        a = torch.ones(4 * mib)
        b = torch.ones(4 * mib)
        del a
        c = torch.ones(4 * mib)
        del b, c
    assert meter.peak_bytes == 8 * 2**20
    held_before = torch.ones(4 * mib)
    with meter.measure():
        del held_before
        d = torch.ones(2 * mib)
        del d
    assert meter.peak_bytes == 8 * 2**20 and meter.peak_mib == 8.0
    empty = PeakMemory(torch.device("cpu"))
    with empty.measure():
        pass
    assert empty.peak_bytes == 0


def test_memory_ratio_is_never_made_of_unmeasured_values():
    from expedite_vit.benchmark.report import _memory_rows
    from expedite_vit.benchmark.runner import _memory_summary
    from expedite_vit.benchmark.timing import PeakMemory

    meters = {name: PeakMemory(torch.device("cpu")) for name in ("baseline", "expedited")}
    meters["baseline"].peak_bytes = 3 * 2**20
    meters["expedited"].peak_bytes = 0  # nothing allocated: no ratio, not infinity or 2052x
    summary = _memory_summary(meters, backbone_only=True)
    assert summary["ratio"] is None
    assert _memory_rows(summary)[0][1:] == ["3.0", "0.0", "n/a"]
    meters["expedited"].peak_bytes = 2**20
    assert _memory_summary(meters, backbone_only=True)["ratio"] == pytest.approx(3.0)


def test_run_memory_is_the_profiled_tensor_peak(benchmark_run):
    _, results, markdown = benchmark_run
    memory = results["memory"]
    assert "torch.profiler" in memory["method"] and memory["method"] in markdown
    # Whole-model forwards of the tiny model at 128x128 allocate megabytes of tensors, not KiB.
    assert 1.0 < memory["baseline_mib"] < 1000 and 1.0 < memory["expedited_mib"] < 1000
    assert memory["ratio"] == pytest.approx(memory["baseline_mib"] / memory["expedited_mib"])


@pytest.fixture
def no_measuring(monkeypatch):
    """Fails a test that builds a model: errors must come before any measuring."""
    import expedite_vit.benchmark
    import expedite_vit.benchmark.runner as runner

    def refuse(*args, **kwargs):
        raise AssertionError("measuring started")

    monkeypatch.setattr(runner, "build_model_pair", refuse)
    monkeypatch.setattr(expedite_vit.benchmark, "run_benchmark", refuse)


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    import cv2
    from skimage import data

    folder = tmp_path_factory.mktemp("inputs")
    cv2.imwrite(str(folder / "a.jpg"), cv2.resize(data.astronaut(), (160, 120))[:, :, ::-1])
    cv2.imwrite(str(folder / "b.png"), cv2.resize(data.coffee(), (128, 96))[:, :, ::-1])
    return [str(folder / "a.jpg"), str(folder / "b.png")]


@pytest.mark.parametrize(
    "source, count, message",
    [
        ("dataset", 3, f"--num-images 3, but dataset '{TEST_DATASET}' has only 2 images; ask for at most 2"),
        ("inputs", 3, "--num-images 3, but --input has only 2 images; ask for at most 2"),
        ("photographs", 6,
         "--num-images 6, but the set of bundled photographs has only 5 images; ask for at most 5"),
    ],
)
def test_more_images_than_there_are_is_refused_before_measuring(
    tiny_coco_dir, two_images, no_measuring, capsys, source, count, message
):
    from expedite_vit.runtime.inputs import ImageInputError
    from expedite_vit.benchmark.runner import run_benchmark

    given = {"dataset": {"dataset": TEST_DATASET}, "inputs": {"inputs": two_images}, "photographs": {}}[source]
    flags = {"dataset": ["--dataset", TEST_DATASET], "inputs": ["--input", *two_images]}.get(source, [])
    with pytest.raises(SystemExit) as exit_info:
        load_tool().main(["--config-file", str(TINY_CONFIG), *flags, "--num-images", str(count)])
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line == f"benchmark.py: error: {message}"
    # The library refuses too, whoever calls it.
    with pytest.raises(ImageInputError, match=message.split(";")[0]):
        run_benchmark(load_config(str(TINY_CONFIG)), BenchmarkSettings(num_images=count, **given))


def test_num_images_defaults_to_what_there_is(tiny_coco_dir, two_images):
    from expedite_vit.benchmark.runner import resolve_num_images

    load_config(str(TINY_CONFIG))  # registers the tiny dataset
    assert resolve_num_images(BenchmarkSettings(inputs=two_images)).num_images == 2
    assert resolve_num_images(BenchmarkSettings(dataset=TEST_DATASET)).num_images == 2  # at most 5
    assert resolve_num_images(BenchmarkSettings()).num_images == 5
    assert resolve_num_images(BenchmarkSettings(inputs=two_images, num_images=1)).num_images == 1


@pytest.fixture(scope="module")
def unlabelled_dataset(tiny_coco_dir):
    """The tiny validation images registered again with their annotations removed."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    coco = json.loads((tiny_coco_dir / "val.json").read_text())
    coco["annotations"] = []
    (tiny_coco_dir / "unlabelled.json").write_text(json.dumps(coco))
    name = "tiny_vitdet_coco_unlabelled"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(tiny_coco_dir / "unlabelled.json"), str(tiny_coco_dir / "images"))
    return name


@pytest.mark.parametrize("images", ["unlabelled dataset", "input files"])
def test_images_without_labels_give_no_nan(unlabelled_dataset, two_images, tmp_path, images):
    source = ["--dataset", unlabelled_dataset] if images == "unlabelled dataset" else ["--input", *two_images]
    argv = ["--config-file", str(TINY_CONFIG), *source, "--warmup", "0", "--iters", "1",
            "--output-json", str(tmp_path / "r.json"), "--output-md", str(tmp_path / "r.md")]
    assert load_tool().main(argv) == 0
    markdown, text = (tmp_path / "r.md").read_text(), (tmp_path / "r.json").read_text()
    assert "nan" not in markdown.lower() and "nan" not in text.lower()
    results = json.loads(text)
    assert results["inputs"]["num_images"] == 2
    assert results["fidelity"]["task_metric"] is None
    reason = results["fidelity"]["task_metric_skipped"]
    assert ("have no labels" if images == "unlabelled dataset" else "not a labelled --dataset") in reason
    assert f"| task metric ({reason}) | n/a" in " ".join(markdown.split())


def test_undefined_metrics_are_printed_as_n_a():
    from expedite_vit.benchmark.report import _fidelity_rows

    nan = float("nan")
    fidelity = {
        "agreement": {"instances": {"score_threshold": 0.5, "iou_threshold": 0.5, "baseline_detections": 0,
                                    "expedited_detections": 0, "recovered": None, "mean_iou": None}},
        "feature_cosine": {"backbone": {"last_feat": nan}},
        "task_metric": {"dataset": "d", "images": 2, "baseline": {"bbox": {"AP": nan, "AP50": 50.0}},
                        "expedited": {"bbox": {"AP": nan, "AP50": 40.0}},
                        "delta": {"bbox": {"AP": None, "AP50": -10.0}}},
    }
    cells = [cell for row in _fidelity_rows(fidelity) for cell in row]
    assert not any("nan" in cell.lower() for cell in cells)
    assert cells.count("n/a") >= 5 and "40.00 (-10.00)" in cells


def test_flops_only_counts_both_models_and_times_nothing(tiny_coco_dir, benchmark_run, tmp_path):
    argv = [
        "--config-file", str(TINY_CONFIG), "--dataset", TEST_DATASET, "--num-images", "2", "--flops-only",
        "--output-json", str(tmp_path / "flops.json"), "--output-md", str(tmp_path / "flops.md"),
    ]
    assert load_tool().main(argv) == 0
    results = json.loads((tmp_path / "flops.json").read_text())
    assert not {"latency_ms", "memory", "fidelity", "targets"} & results.keys()
    # The same counts as the full run's, which measured the same images.
    assert results["flops"] == benchmark_run[1]["flops"]
    markdown = (tmp_path / "flops.md").read_text()
    assert "GFLOPs, backbone" in markdown and "latency" not in markdown


def test_flops_only_is_refused_with_methods(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool().main(["--config-file", str(TINY_CONFIG), "--methods", "expedit,tome", "--flops-only"])
    assert exit_info.value.code != 0
    assert "--flops-only: not with --methods" in capsys.readouterr().err
