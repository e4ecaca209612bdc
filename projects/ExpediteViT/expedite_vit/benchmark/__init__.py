"""Speed and accuracy of the expedited model against the baseline (``tools/benchmark.py``)."""
from .fidelity import FeatureSimilarity, PredictionAgreement, TaskMetric, match_detections
from .flops import count_flops
from .report import format_table, markdown_section, write_json, write_markdown
from .runner import BenchmarkSettings, check_targets, run_benchmark

__all__ = [
    "BenchmarkSettings",
    "FeatureSimilarity",
    "PredictionAgreement",
    "TaskMetric",
    "check_targets",
    "count_flops",
    "format_table",
    "markdown_section",
    "match_detections",
    "run_benchmark",
    "write_json",
    "write_markdown",
]
