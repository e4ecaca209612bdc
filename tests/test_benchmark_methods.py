"""tools/benchmark.py --methods: every method against one baseline, at presets or matched FLOPs."""
import json

import pytest

from expedite_vit.benchmark import BenchmarkSettings
from expedite_vit.benchmark.methods import MATCH_TOLERANCE, match_backbone_flops, parse_methods
from expedite_vit.runtime.config import ConfigError, load_config
from test_benchmark import TEST_DATASET, load_tool, tiny_coco_dir  # noqa: F401 (fixture)
from test_train_net import TINY_CONFIG


@pytest.mark.parametrize(
    "text, message",
    [
        ("expedit,merge", r"unknown \['merge'\]"),
        ("tome,tome", "repeated names"),
        (",", "no method"),
    ],
)
def test_bad_method_lists_are_named(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_methods(text)


def test_matching_reaches_the_reference_flops_ratio(tiny_coco_dir):  # noqa: F811
    cfg = load_config(str(TINY_CONFIG))
    settings = BenchmarkSettings(device="cpu", num_images=1, inputs=[], dataset=None)
    matched = match_backbone_flops(cfg, settings, ["expedit", "tome", "itpn"])
    target = matched["expedit"]["flops_ratio"]
    for method, setting, kind in (("tome", "r", int), ("itpn", "keep", float)):
        found = matched[method]
        assert found["target"] == target and target > 1.0
        assert found["matched"] == (abs(found["flops_ratio"] / target - 1) <= MATCH_TOLERANCE)
        assert found["matched"], found
        assert found["point"]["method"] == method and isinstance(found["point"][f"{method}.{setting}"], kind)


def test_methods_table_end_to_end(tiny_coco_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "methods.json"
    argv = [
        "--config-file", str(TINY_CONFIG), "--dataset", TEST_DATASET, "--num-images", "2", "--warmup", "0",
        "--iters", "1", "--score-threshold", "0.0", "--methods", "expedit,ailurus,tome,itpn",
        "--output-json", str(out),
    ]
    assert load_tool().main(argv) == 0
    table = capsys.readouterr().out
    for method in ("expedit", "ailurus", "tome", "itpn"):
        assert f"| {method}" in table
    results = json.loads(out.read_text())
    assert [r["summary"]["method"] for r in results["methods"]] == ["expedit", "ailurus", "tome", "itpn"]
    for result in results["methods"]:
        summary = result["summary"]
        assert summary["flops_ratio"] > 0 and summary["metric"] is not None
        assert 0.0 <= summary["agreement"] <= 1.0


def test_match_flops_needs_methods(capsys):
    with pytest.raises(SystemExit):
        load_tool().main(["--config-file", str(TINY_CONFIG), "--match-flops"])
    assert "--match-flops needs --methods" in capsys.readouterr().err


def test_match_only_prints_the_matched_settings(tiny_coco_dir, capsys):  # noqa: F811
    argv = ["--config-file", str(TINY_CONFIG), "--num-images", "1", "--methods", "expedit,tome", "--match-flops",
            "--match-only"]
    assert load_tool().main(argv) == 0
    table = capsys.readouterr().out
    assert "| tome" in table and "r=" in table and "yes" in table
