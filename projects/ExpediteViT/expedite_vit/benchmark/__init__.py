"""Speed and accuracy of the expedited model against the baseline (``tools/benchmark.py``)."""
from .fidelity import FeatureSimilarity, PredictionAgreement, TaskMetric, match_detections
from .flops import count_flops
from .models import build_model, build_model_pair, expedite_nodes, with_expedite_disabled
from .report import format_table, markdown_section, write_json, write_markdown
from .runner import BenchmarkSettings, check_targets, run_benchmark

__all__ = [
    "BenchmarkSettings",
    "FeatureSimilarity",
    "PredictionAgreement",
    "TaskMetric",
    "build_model",
    "build_model_pair",
    "check_targets",
    "count_flops",
    "expedite_nodes",
    "format_table",
    "markdown_section",
    "match_detections",
    "run_benchmark",
    "with_expedite_disabled",
    "write_json",
    "write_markdown",
]
