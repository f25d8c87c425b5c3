"""Loss ablations: plan the runs (:mod:`.plan`), train them on this machine (:mod:`.launch`) or through SLURM
(:mod:`.slurm`), and report paired comparisons (:mod:`.report`, :mod:`.stats`, :mod:`.localisation`, :mod:`.plots`).
``tools/ablate.py`` is the command line.
"""
from detector.ablation.launch import Interrupted, run_local
from detector.ablation.plan import AblationError, Run, Step, check_runs, parse_sweep, plan_runs, resolve_baseline
from detector.ablation.report import write_report

__all__ = ["AblationError", "Interrupted", "Run", "Step", "check_runs", "parse_sweep", "plan_runs",
           "resolve_baseline", "run_local", "write_report"]
