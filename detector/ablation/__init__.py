"""Loss ablations: plan the runs, train them here or through SLURM, report paired comparisons
(``tools/ablate.py``)."""

from detector.ablation.launch import Interrupted, run_local
from detector.ablation.plan import (
    AblationError,
    Run,
    Step,
    check_runs,
    parse_sweep,
    plan_runs,
    resolve_baseline,
)
from detector.ablation.report import write_report

__all__ = [
    "AblationError",
    "Interrupted",
    "Run",
    "Step",
    "check_runs",
    "parse_sweep",
    "plan_runs",
    "resolve_baseline",
    "run_local",
    "write_report",
]
