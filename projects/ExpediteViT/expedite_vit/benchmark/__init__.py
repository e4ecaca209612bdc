"""Speed and accuracy of the expedited model against the baseline (``tools/benchmark.py``);
video models per clip (:mod:`.video`)."""
from .fidelity import FeatureSimilarity, PredictionAgreement, TaskMetric, match_detections, match_tracks
from .flops import count_flops
from .report import format_table, markdown_section, write_json, write_markdown
from .runner import BenchmarkSettings, check_targets, run_benchmark
from .video import VideoBenchmarkSettings, run_video_benchmark

__all__ = [
    "BenchmarkSettings",
    "FeatureSimilarity",
    "PredictionAgreement",
    "TaskMetric",
    "VideoBenchmarkSettings",
    "check_targets",
    "count_flops",
    "format_table",
    "markdown_section",
    "match_detections",
    "match_tracks",
    "run_benchmark",
    "run_video_benchmark",
    "write_json",
    "write_markdown",
]
