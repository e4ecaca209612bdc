"""expedite_vit.sweep and tools/sweep.py: Pareto front, auto-tuning, grids, resuming, and a tiny
end-to-end sweep of the tiny ViTDet (CPU, random weights)."""
import csv
import itertools
import json
import math
import random
import shutil

import pytest
from detectron2.config import LazyConfig
from PIL import Image

import expedite_vit.sweep.points as sweep_points_module
from expedite_vit.benchmark import BenchmarkSettings
from expedite_vit.runtime.config import ConfigError, load_config
from expedite_vit.sweep import (
    TargetNotReachedError,
    build_points,
    check_target,
    choose_point,
    pareto_front,
    parse_grid,
    point_overrides,
    sweep_points,
)
from expedite_vit.sweep.cache import PointCache
from expedite_vit.sweep.report import (
    autotune_gap,
    average_ranks,
    format_labelled_summary,
    labelled_summary,
    rank_correlation,
    spearman,
)
from test_benchmark import tiny_coco_dir  # noqa: F401 (fixture)
from test_train_net import REPO_ROOT, TINY_CONFIG
from conftest import load_script

TEST_DATASET = "tiny_vitdet_coco_val"
NODE = "model.backbone.net.expedite"


def load_tool():
    return load_script(REPO_ROOT / "tools" / "sweep.py")


@pytest.fixture(scope="module")
def tiny_cfg(tiny_coco_dir):
    return load_config(str(TINY_CONFIG))


# ---- Pareto front -----------------------------------------------------------------------------


def brute_force_front(points):
    def dominates(q, p):
        return q[0] >= p[0] and q[1] >= p[1] and (q[0] > p[0] or q[1] > p[1])

    return {i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)}


def test_pareto_front_equals_brute_force_on_made_up_points():
    rng = random.Random(0)
    for trial in range(300):
        # Few distinct values, so that ties in x, in y and in both are common.
        points = [(rng.randint(0, 6) / 2, rng.randint(0, 6)) for _ in range(rng.randint(1, 25))]
        front = pareto_front(points)
        assert set(front) == brute_force_front(points), points
        assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)
    assert pareto_front([]) == []


# ---- auto-tuning ------------------------------------------------------------------------------


def record(flops, latency, agreement, **point):
    return {"point": point, "overrides": [], "summary": {"flops_ratio": flops, "latency_speedup": latency,
                                                          "agreement": agreement}}


MADE_UP = [
    record(1.2, 1.1, 0.99, location=8, grid=7),  # slower than the target: its agreement does not count
    record(1.5, 1.3, 0.90, location=6, grid=7),  # exactly at the target
    record(1.8, 1.6, 0.93, location=4, grid=7),  # the best agreement at or above 1.5x FLOPs
    record(2.4, 2.0, 0.80, location=2, grid=5),
    record(2.6, 2.2, None, location=1, grid=4),  # nothing compared: cannot be ranked
]


@pytest.mark.parametrize(
    "target, measure, chosen",
    [(1.5, "flops", {"location": 4, "grid": 7}), (1.9, "flops", {"location": 2, "grid": 5}),
     (1.3, "latency", {"location": 4, "grid": 7}), (1.7, "latency", {"location": 2, "grid": 5})],
)
def test_autotune_picks_the_best_agreement_at_or_above_the_target(target, measure, chosen):
    assert choose_point(MADE_UP, target, measure)["point"] == chosen


def test_autotune_prefers_the_faster_point_on_equal_agreement():
    records = [record(1.6, 1.0, 0.9, grid=6), record(1.9, 1.0, 0.9, grid=5)]
    assert choose_point(records, 1.5, "flops")["point"] == {"grid": 5}


def test_unreachable_target_names_the_best_reached():
    with pytest.raises(TargetNotReachedError, match=r"of 3\.00x: the best reached is 2\.60x \(location=1 grid=4\)"):
        choose_point(MADE_UP, 3.0, "flops")
    with pytest.raises(TargetNotReachedError, match="none has an agreement"):
        choose_point(MADE_UP, 2.5, "flops")


@pytest.mark.parametrize("target", [1.0, 0.5, -2.0, math.inf, math.nan])
def test_targets_that_mean_nothing_are_refused(target):
    with pytest.raises(ConfigError, match="must be a number above 1"):
        check_target(target)


# ---- grids ------------------------------------------------------------------------------------


def test_grid_values_are_parsed_as_overrides_are():
    grid = parse_grid("location=4,6 expedit.grid=5  expedit.cluster_temperature=0.1 expedit.normalize=sum,l2")
    assert grid == {"location": [4, 6], "expedit.grid": [5], "expedit.cluster_temperature": [0.1],
                    "expedit.normalize": ["sum", "l2"]}
    assert isinstance(grid["location"][0], int) and isinstance(grid["expedit.cluster_temperature"][0], float)


@pytest.mark.parametrize(
    "text, message",
    [("", "is empty"), ("   ", "is empty"), ("location", "not of the form name=value1"),
     ("=4", "not of the form"), ("location=", "'location' has no values"), ("location=,", "has no values"),
     ("location=1 location=2", "'location' is given twice")],
)
def test_bad_grids_are_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(text)


def test_unknown_setting_is_refused_with_the_valid_names(tiny_cfg):
    with pytest.raises(ConfigError) as error:
        build_points(tiny_cfg, [parse_grid("location=1 gird=3")])
    message = str(error.value)
    assert message.startswith("unknown setting 'gird' in the grid; the settings are: ")
    # Names come from the node: keys it sets and arguments its target takes (n_iters is not set
    # in the tiny config), nested settings dotted.
    for name in ("location", "enabled", "expedit.grid", "expedit.n_iters"):
        assert name in message.split(": ", 1)[1].split(", ")
    assert "\n" not in message


def test_a_given_point_the_model_cannot_take_is_refused(tiny_cfg):
    with pytest.raises(ConfigError, match=r"point location=9 expedit.grid=2: .*location=9 is past the last"):
        build_points(tiny_cfg, [parse_grid("location=1,9 expedit.grid=2")])


def test_default_grid_keeps_the_points_the_model_can_take(tiny_cfg):
    points = build_points(tiny_cfg)
    # The tiny ViT has 4 blocks and 4x4 windows; the preset (location 1, grid 2) is in the grid.
    assert {(p["location"], p["expedit.grid"]) for p in points} == set(itertools.product([1, 2, 3], [2, 3, 4]))
    assert {} not in points


def test_points_are_set_in_every_node_and_measured_once(tiny_cfg):
    grids = [parse_grid("location=2 expedit.grid=3"), parse_grid("location=2,1 expedit.grid=3")]
    assert build_points(tiny_cfg, grids) == [{"location": 2, "expedit.grid": 3}, {"location": 1, "expedit.grid": 3}, {}]
    assert point_overrides(tiny_cfg, {"location": 2, "expedit.grid": 3}) == [
        f"{NODE}.location=2", f"{NODE}.expedit.grid=3"
    ]


# ---- resuming ---------------------------------------------------------------------------------


class Interrupt(Exception):
    pass


def test_an_interrupted_sweep_resumes_from_its_cached_points(tiny_cfg, tmp_path):
    settings = BenchmarkSettings(num_images=1, warmup=0, iters=1, score_threshold=0.0)
    points = [{"location": 2, "expedit.grid": 2}, {"location": 3, "expedit.grid": 2}]
    cache = PointCache(str(tmp_path / "cache"), {"sweep": "test"})
    measured = []

    def stop_after_one(result):
        measured.append(result["point"])
        raise Interrupt

    with pytest.raises(Interrupt):
        sweep_points(tiny_cfg, settings, points, cache, on_point=stop_after_one)
    assert measured == [points[0]] and len(list(cache.folder.glob("*.json"))) == 1

    measured.clear()
    results = sweep_points(tiny_cfg, settings, points, cache, on_point=lambda r: measured.append(r["point"]))
    assert measured == [points[1]]  # only the point not cached before
    assert [r["point"] for r in results] == points
    assert all(r["summary"]["flops_ratio"] > 1 and r["preset"] is False for r in results)

    measured.clear()
    assert sweep_points(tiny_cfg, settings, points, cache, on_point=measured.append) == results
    assert measured == []


# ---- tools/sweep.py ---------------------------------------------------------------------------


@pytest.fixture
def no_measuring(monkeypatch):
    """Fails a test that measures: errors and resumed sweeps must not."""
    def refuse(*args, **kwargs):
        raise AssertionError("measuring started")

    monkeypatch.setattr(sweep_points_module, "measure_points", refuse)


def sweep_argv(output, *extra):
    return ["--config-file", str(TINY_CONFIG), "--dataset", TEST_DATASET, "--num-images", "2", "--warmup", "0",
            "--iters", "1", "--score-threshold", "0", "--output", str(output), *extra]


@pytest.fixture(scope="module")
def sweep_run(tiny_coco_dir, tmp_path_factory):
    """A tiny labelled sweep of two points (one is the config's preset), auto-tuned."""
    output = tmp_path_factory.mktemp("sweep")
    argv = sweep_argv(output, "--grid", "location=1,2 expedit.grid=2", "--target-speedup", "1.1",
                      "--published", "paper:1.5:0.5")
    assert load_tool().main(argv) == 0
    return argv, output


def test_sweep_writes_points_front_and_plot(sweep_run):
    _, output = sweep_run
    points = json.loads((output / "points.json").read_text())
    records = points["points"]
    assert [r["point"] for r in records] == [{"location": 1, "expedit.grid": 2}, {"location": 2, "expedit.grid": 2}]
    assert [r["preset"] for r in records] == [True, False]  # the tiny config's own settings
    for r in records:
        assert r["summary"]["metric_name"] == "bbox AP" and r["fidelity"]["task_metric"]["images"] == 2
        assert r["summary"]["flops_ratio"] == pytest.approx(r["flops"]["ratio"]["backbone"])
        assert 0 <= r["summary"]["agreement"] <= 1
    assert points["sweep"]["identity"]["settings"]["num_images"] == 2

    with open(output / "points.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(row["location"], row["expedit.grid"], row["preset"]) for row in rows] == [("1", "2", "1"), ("2", "2", "0")]
    assert float(rows[1]["flops_ratio"]) == pytest.approx(records[1]["summary"]["flops_ratio"])

    fronts = json.loads((output / "pareto.json").read_text())["fronts"]
    assert set(fronts) == {"agreement", "metric"} and fronts["metric"]

    image = Image.open(output / "sweep.png")
    assert image.format == "PNG" and image.size[0] > 400


def test_tuned_config_loads_with_the_chosen_settings(sweep_run):
    _, output = sweep_run
    records = json.loads((output / "points.json").read_text())["points"]
    chosen = choose_point(records, 1.1, "flops")
    cfg = LazyConfig.load(str(output / "tuned_config.py"))
    expedite = cfg.model.backbone.net.expedite
    assert (expedite.location, expedite.expedit.grid) == (chosen["point"]["location"], chosen["point"]["expedit.grid"])
    assert set(cfg.keys()) >= {"model", "dataloader", "train"}
    assert load_config(str(output / "tuned_config.py")).model.backbone.net.expedite.enabled is True


def test_rerun_reuses_every_point_and_an_unreachable_target_names_the_best(sweep_run, no_measuring, capsys):
    argv, output = sweep_run
    with pytest.raises(SystemExit) as exit_info:
        load_tool().main([*argv, "--target-speedup", "50"])  # argparse keeps the last value
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no point reaches the target backbone FLOPs ratio of 50.00x: the best reached is" in err
    assert not (output / "tuned_config.py").exists()  # it belonged to the other target
    assert (output / "sweep.png").is_file()


def test_another_sweep_in_the_same_folder_is_refused(sweep_run, no_measuring, capsys):
    _, output = sweep_run
    with pytest.raises(SystemExit) as exit_info:
        load_tool().main(sweep_argv(output, "--iters", "2", "--grid", "location=1"))
    assert exit_info.value.code == 2
    assert "holds another sweep (it differs in settings.iters)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--grid", ""], "the grid '' is empty"),
        (["--grid", "location=1 gird=2"], "unknown setting 'gird' in the grid; the settings are:"),
        (["--grid", "location=7"], "point location=7: model.backbone.net.expedite.location=7 is past the last"),
        (["--target-speedup", "0.9"], "--target-speedup 0.9 must be a number above 1"),
        (["--methods", "expedit,nope"], "there is no default grid for method 'nope'"),
        (["--published", "paper:fast:1"], "is not LABEL:SPEEDUP:VALUE"),
    ],
)
def test_bad_arguments_are_refused_before_measuring(tiny_coco_dir, tmp_path, no_measuring, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        load_tool().main(sweep_argv(tmp_path / "out", *extra))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout", ["file", "under a file", "other files"])
def test_unusable_output_is_refused_before_measuring(tiny_coco_dir, tmp_path, no_measuring, capsys, layout):
    (tmp_path / "file").write_text("keep me")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    output = {"file": tmp_path / "file", "under a file": tmp_path / "file" / "out", "other files": tmp_path / "other"}
    with pytest.raises(SystemExit) as exit_info:
        load_tool().main(sweep_argv(output[layout], "--grid", "location=1"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert {"file": "is a file", "under a file": "cannot be written",
            "other files": "holds files that are not a sweep (notes.txt)"}[layout] in err
    assert (tmp_path / "file").read_text() == "keep me" and (tmp_path / "other" / "notes.txt").read_text() == "keep me"


def test_overwrite_replaces_another_sweep(sweep_run, no_measuring, tmp_path):
    _, output = sweep_run
    copy = tmp_path / "sweep"
    shutil.copytree(output, copy)
    with pytest.raises(AssertionError, match="measuring started"):
        load_tool().main(sweep_argv(copy, "--iters", "2", "--grid", "location=1", "--overwrite"))
    assert not list((copy / "cache").glob("*.json")) and not (copy / "points.json").exists()
    assert json.loads((copy / "sweep.json").read_text())["identity"]["settings"]["iters"] == 2


def test_an_interrupted_run_says_how_to_resume(sweep_run, monkeypatch, tmp_path, capsys):
    argv, output = sweep_run
    copy = tmp_path / "sweep"
    shutil.copytree(output, copy)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_points_module, "measure_points", interrupt)
    with pytest.raises(SystemExit) as exit_info:
        load_tool().main(sweep_argv(copy, "--grid", "location=3 expedit.grid=2"))
    assert exit_info.value.code == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert len(list((copy / "cache").glob("*.json"))) == 2  # the points of the first run are kept


# ---- rank correlation and auto-tune gap ----------------------------------------------------------

def labelled_record(flops, agreement, metric, **point):
    return {"point": point, "overrides": [], "preset": False,
            "summary": {"flops_ratio": flops, "latency_speedup": None, "agreement": agreement,
                        "metric_name": "bbox AP", "metric": metric, "baseline_metric": 31.0}}


LABELLED = [
    labelled_record(1.2, 0.99, 30.0, location=8),  # below 1.5x
    labelled_record(1.5, 0.90, 29.5, location=6),  # the best AP at or above 1.5x
    labelled_record(1.8, 0.93, 28.0, location=4),  # the best agreement at or above 1.5x: auto-tuned
    labelled_record(2.4, 0.80, 28.8, location=2),
    labelled_record(2.6, None, None, location=1),  # nothing compared, no metric: left out
]


def test_average_ranks_share_ties():
    assert average_ranks([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]
    assert average_ranks([3, 1, 3, 3]) == [3, 1, 3, 3]
    assert average_ranks([]) == []


def test_spearman_against_hand_computed_values():
    # No ties: 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60.
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    # Ties in x, ranks 1, 2.5, 2.5, 4: Pearson on ranks = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10).
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10))
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1], [2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    with pytest.raises(ValueError, match="paired"):
        spearman([1, 2], [1])


def test_spearman_matches_scipy_on_random_values_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(1)
    for _ in range(50):
        n = rng.randint(3, 20)
        xs, ys = [rng.randint(0, 5) for _ in range(n)], [rng.randint(0, 5) for _ in range(n)]
        expected = stats.spearmanr(xs, ys).statistic
        if math.isnan(expected):
            assert spearman(xs, ys) is None
        else:
            assert spearman(xs, ys) == pytest.approx(expected)


def test_rank_correlation_of_agreement_and_metric():
    # All labelled points: agreement ranks 4 2 3 1, AP ranks 4 3 1 2: 1 - 6 * 6 / 60.
    assert rank_correlation(LABELLED) == {"spearman": pytest.approx(0.4), "points": 4}
    # At or above 1.5x: ranks 2 3 1 against 3 1 2: 1 - 6 * 6 / 24.
    assert rank_correlation(LABELLED, "flops", 1.5) == {"spearman": pytest.approx(-0.5), "points": 3}


@pytest.mark.parametrize(
    "target, chosen, best, gap",
    [(1.5, 4, 6, 28.0 - 29.5), (2.0, 2, 2, 0.0), (1.1, 8, 8, 0.0)],
)
def test_autotune_gap_against_the_best_labelled_point_as_fast(target, chosen, best, gap):
    result = autotune_gap(LABELLED, target, "flops")
    assert result["chosen"]["point"] == {"location": chosen} and result["best"]["point"] == {"location": best}
    assert result["gap"] == pytest.approx(gap)
    assert result["chosen_metric"] - result["best_metric"] == pytest.approx(gap)


def test_autotune_gap_is_none_when_no_point_reaches_the_target():
    assert autotune_gap(LABELLED, 3.0, "flops") is None


def test_labelled_summary_and_its_lines():
    summary = labelled_summary(LABELLED, "flops", 1.5, gap_targets=(2.0, 3.0))
    assert summary["metric_name"] == "bbox AP" and summary["baseline_metric"] == 31.0
    assert summary["rank_correlation"]["spearman"] == pytest.approx(0.4)
    assert summary["rank_correlation_at_target"]["spearman"] == pytest.approx(-0.5)
    assert summary["autotune_gap"]["gap"] == pytest.approx(-1.5)
    assert [g["target"] for g in summary["autotune_gaps"]] == [1.5, 2.0]  # 3x is reached by no point
    text = format_labelled_summary(summary)
    assert "agreement with bbox AP: +0.400 over 4 points; -0.500 over the 3 points at or above 1.5x" in text
    assert ">= 1.5x: -1.50 (chosen location=4: 28.00; best location=6: 29.50; 3 points)" in text
    unlabelled = [{**r, "summary": {**r["summary"], "metric": None}} for r in LABELLED]
    assert labelled_summary(unlabelled, "flops", 1.5) is None


def test_labelled_sweep_writes_its_summary(sweep_run):
    _, output = sweep_run
    records = json.loads((output / "points.json").read_text())["points"]
    summary = json.loads((output / "summary.json").read_text())
    # The fixture's target, or the unreachable one of a rerun above: the summary is written for both.
    target = summary["target_speedup"]
    assert summary == json.loads(json.dumps(labelled_summary(records, "flops", target)))
    assert summary["metric_name"] == "bbox AP" and summary["rank_correlation"]["points"] == len(records)
    gap = autotune_gap(records, 1.1, "flops")
    assert gap["chosen"]["point"] == choose_point(records, 1.1, "flops")["point"]
    assert gap["gap"] <= 0 and gap["gap"] == pytest.approx(gap["chosen_metric"] - gap["best_metric"])


def test_points_csv_has_one_method_column_when_the_grid_sweeps_the_method(tmp_path):
    from expedite_vit.sweep.report import POINT_COLUMNS, write_points_csv

    records = [
        {"point": {"method": method, "location": 2}, "expedite": {"net": {"method": method, "location": 2}},
         "summary": {"method": method, **{column: 1.0 for column in POINT_COLUMNS}}, "overrides": []}
        for method in ("itpn", "expedit")
    ]
    write_points_csv(str(tmp_path / "points.csv"), records, records[:1])
    with open(tmp_path / "points.csv") as f:
        header, *rows = list(csv.reader(f))
    assert header.count("method") == 1 and header[:4] == ["method", "preset", "pareto", "location"]
    assert [row[:4] for row in rows] == [["itpn", "0", "1", "2"], ["expedit", "0", "0", "2"]]
