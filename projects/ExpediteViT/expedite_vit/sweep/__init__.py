"""Operating points: sweep token-reduction settings against one baseline, the Pareto front of
speed-up against accuracy, and label-free auto-tuning to a target speed-up (``tools/sweep.py``)."""
from .autotune import TargetNotReachedError, check_target, choose_point, write_tuned_config
from .cache import PointCache, prepare_output_folder, sweep_identity
from .grid import DEFAULT_GRIDS, apply_point, build_points, parse_grid, point_overrides, setting_names
from .pareto import pareto_front, pareto_records
from .plot import plot_sweep
from .points import SPEEDUP_MEASURES, agreement_score, measure_points, summarize, sweep_points

__all__ = [
    "DEFAULT_GRIDS",
    "PointCache",
    "SPEEDUP_MEASURES",
    "TargetNotReachedError",
    "agreement_score",
    "apply_point",
    "build_points",
    "check_target",
    "choose_point",
    "measure_points",
    "pareto_front",
    "pareto_records",
    "parse_grid",
    "plot_sweep",
    "point_overrides",
    "prepare_output_folder",
    "setting_names",
    "summarize",
    "sweep_identity",
    "sweep_points",
    "write_tuned_config",
]
