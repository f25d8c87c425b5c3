"""Loss ablations: plan (config × sweep value × seed) runs, train them (packed on this machine's GPUs, or as a
SLURM job array), and report paired comparisons.

- :mod:`~detector.ablation.plan`: the runs, and what each run folder allows (reuse a finished run only when its
  stored config matches, resume an interrupted one, or stop naming the keys that differ);
- :mod:`~detector.ablation.launch`: local launcher: ``--jobs`` runs at once, round-robin over the user's GPUs,
  each with its share of the CPU;
- :mod:`~detector.ablation.slurm`: ``--launcher slurm`` through submitit (one job array);
- :mod:`~detector.ablation.stats`, :mod:`~detector.ablation.report`, :mod:`~detector.ablation.plots`: the report,
  written from the run folders alone: mean ± std per config, paired differences to a baseline with Student-t
  intervals, Holm-corrected verdicts and detectable effects, ``summary.csv``, plots;
- :mod:`~detector.ablation.localisation`: the IoU of each run's true-positive detections (and TIDE's
  localisation error when ``tidecv`` is installed).

``tools/ablate.py`` is the command line.
"""
from detector.ablation.launch import Interrupted, run_local
from detector.ablation.plan import AblationError, Run, Step, check_runs, parse_sweep, plan_runs, resolve_baseline
from detector.ablation.report import write_report

__all__ = ["AblationError", "Interrupted", "Run", "Step", "check_runs", "parse_sweep", "plan_runs",
           "resolve_baseline", "run_local", "write_report"]
