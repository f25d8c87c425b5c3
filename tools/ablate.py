#!/usr/bin/env python
"""Run a box-loss ablation and write its report, e.g. ``python tools/ablate.py --cfgs l2.yaml
smoothl1.yaml dynamic_smoothl1.yaml --sweep model.roi_head.box_loss.beta=0.11,1.0 --jobs 2``.

Every (config, sweep value, seed) trains with identical data, schedule and budget into
``DIR/runs/<name>``. A finished run keeps its record (config.yaml, metrics.jsonl, eval/metrics.json,
record.json: small enough to commit) and last.pth. The same command continues an ablation, in a
fresh clone too: an interrupted run resumes, a finished one is reused only when its stored
config.yaml matches (log periods and loader workers aside); otherwise nothing trains and the run and
keys are named. DIR then holds summary.md (mean ± std per config, paired differences to the
baseline with Holm-corrected verdicts, over a pre-registered family with --primary, TOST for
equivalence; true-positive IoUs), summary.csv and plots, all rebuilt from the records by
--report-only (or: tensorboard --logdir DIR/runs).

Exit codes: 0 every run finished; 1 some run failed (the report lists it) or no report; 2 a bad
option, config or run folder (nothing trained); 130 stopped by Ctrl-C.
"""

import contextlib
import importlib.util
import shlex
import sys
from collections import Counter
from pathlib import Path

from detector.ablation.launch import REPO, Interrupted, run_local
from detector.ablation.plan import (
    AblationError,
    check_runs,
    plan_runs,
    resolve_baseline,
)
from detector.ablation.record import CHECKPOINT_CHOICES
from detector.ablation.report import DEFAULT_MARGINS, Family, check_report_folder, write_report
from detector.ablation.table import STATS
from detector.config import tool_parser
from detector.engine.runs import RunLock
from detector.errors import run_tool

# --launcher slurm's options: flag -> add_argument's keywords (not given: None or False)
SLURM_ARGS = {
    "--partition": dict(help="SLURM partition"),
    "--time": dict(
        help="time limit per run: minutes or [days-]hours:minutes:seconds (default 4:00:00)"
    ),
    "--gpus-per-run": dict(type=int, help="GPUs per run (default 1; >1 trains it with torchrun)"),
    "--cpus-per-run": dict(type=int, help="CPUs per run (default 4)"),
    "--constraint": dict(help="SLURM --constraint (node features, e.g. a100)"),
    "--account": dict(help="SLURM account to charge"),
    "--no-wait": dict(
        action="store_true", help="submit and return; write the report later with --report-only"
    ),
}


def build_parser():
    parser = tool_parser(__doc__)
    parser.add_argument(
        "--cfgs", nargs="+", required=True, help="loss configs to compare (names in configs/)"
    )
    parser.add_argument(
        "--cfg", action="append", default=[], help="config layered on every run (e.g. data/...)"
    )
    parser.add_argument(
        "--seeds", type=int, default=5, help="seeds per config (seed=0..N-1; default 5)"
    )
    parser.add_argument("--sweep", help="key=v1,v2,... : one group per value (e.g. a beta sweep)")
    parser.add_argument(
        "--baseline", help="config the paired differences are taken against (default: the first)"
    )
    parser.add_argument("--out", help="output folder (default runs/ablation-<names>)")
    parser.add_argument(
        "--jobs",
        type=int,
        help="runs at once (local: default 1, round-robin over the GPUs of "
        "CUDA_VISIBLE_DEVICES, else all, cores // JOBS CPU threads each; slurm: most array tasks "
        "at once, default no limit)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="train again (replacing them) the runs whose folder holds a run of another "
        "config or one with no checkpoint to resume (or pick another --out)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace report files (summary.md, ...) in an --out folder that no ablation wrote",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from the run folders; train nothing",
    )
    parser.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="where the runs train (slurm: one job array through submitit)",
    )
    parser.add_argument(
        "--noise-per-seed",
        action="store_true",
        help="draw each run's label noise from its own seed (data.label_noise_seed=SEED), not "
        "one corrupted set for every seed",
    )
    parser.add_argument(
        "--keep-checkpoint",
        choices=CHECKPOINT_CHOICES,
        default="last",
        help="checkpoints a finished run keeps (default last: last.pth; none: its record alone)",
    )
    parser.add_argument(
        "--primary",
        nargs="+",
        metavar="METRIC",
        help="the pre-registered endpoints (e.g. AP AP90): Holm over exactly each config x these "
        "against the baseline, equivalence by TOST; every other comparison is exploratory",
    )
    parser.add_argument(
        "--margins",
        nargs="+",
        metavar="METRIC=POINTS",
        help="TOST margins of the primary endpoints in AP points (those not given keep their "
        "default: AP=1 AP90=2)",
    )
    parser.add_argument(
        "--plan-tests",
        type=int,
        metavar="M",
        help="the seeds rule's family size: the report states the seeds a paired t test at "
        "0.05/M needs for each margin (default: this report's family)",
    )
    parser.add_argument(
        "--code",
        metavar="DIR",
        help="train with DIR's tools/train.py and detector package: a checkout of the commit a "
        "protocol fixes (e.g. a git worktree); planning, reuse and the report stay this "
        "checkout's (default: this checkout)",
    )
    parser.add_argument("--title", default="", help="title of summary.md")
    slurm = parser.add_argument_group("--launcher slurm")
    for flag, keywords in SLURM_ARGS.items():
        slurm.add_argument(flag, **keywords)
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    return parser


@run_tool
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_intermixed_args(argv)
    command = "python tools/ablate.py " + shlex.join(argv)
    # --cfgs takes every word up to the next option: key=value words right after it are overrides
    overrides = [c for c in args.cfgs if "=" in c] + args.overrides
    cfgs = [c for c in args.cfgs if "=" not in c]
    if not cfgs:
        raise AblationError("--cfgs: name at least one config (e.g. --cfgs l2.yaml smoothl1.yaml)")
    code = Path(args.code).resolve() if args.code else REPO
    if args.report_only and args.force:
        raise AblationError(
            "--report-only trains nothing, so --force has nothing to rerun; drop one of them"
        )
    given = [f for f in SLURM_ARGS if getattr(args, f[2:].replace("-", "_")) not in (None, False)]
    if given and args.launcher != "slurm":
        raise AblationError(f"{', '.join(given)}: SLURM options; add --launcher slurm")
    for flag, value, least in (
        ("--jobs", args.jobs, 1),
        ("--gpus-per-run", args.gpus_per_run, 0),
        ("--cpus-per-run", args.cpus_per_run, 1),
    ):
        if value is not None and value < least:
            raise AblationError(f"{flag} {value}: must be at least {least}")
    family = parse_family(args.primary, args.margins, args.plan_tests)
    runs = plan_runs(cfgs, args.cfg, args.seeds, overrides, args.sweep, args.noise_per_seed)
    baseline = resolve_baseline(runs, args.baseline)
    default_out = Path("runs") / ("ablation-" + "-".join(Path(c).stem for c in cfgs))
    out = Path(args.out) if args.out else default_out
    # one training ablation per --out at a time, planned under the lock (another's plan would be
    # stale); a report alone may look at a running one
    lock = contextlib.nullcontext() if args.report_only else RunLock(out, "use another --out")
    with lock:
        return plan_train_report(args, cfgs, runs, baseline, family, out, command, code)


def plan_train_report(
    args, cfgs, runs, baseline, family, out: Path, command: str, code: Path
) -> int:
    """Plan, train and report the ablation of ``main``."""
    # every config, run folder and report file, before anything trains
    # this checkout's trainer starts a run with no checkpoint over cleanly; another's may not
    # (ec6293d's appended to the old metrics.jsonl)
    starts_over = code == REPO or args.report_only
    steps = check_runs(runs, out, force=args.force, starts_over=starts_over)
    check_report_folder(out, [*cfgs, *args.cfg], args.overwrite)
    errors: dict = {}
    if not args.report_only:
        if importlib.util.find_spec("scipy") is None:
            print(
                "note: scipy is not installed; the runs train, but the report's intervals need it: "
                "pip install scipy, then rerun this command with --report-only",
                file=sys.stderr,
            )
        errors = launch(args, steps, out, command, code)
        if errors is None:  # submitted without waiting
            return 0
    groups = write_report(steps, out, baseline, args.title, command, family)
    print((out / "summary.md").read_text())
    missing = [f"{run.name}: {why}" for g in groups for run, why in g.unfinished]
    failed = [e for e in errors.values() if e]
    if missing:
        print(
            f"{len(missing)} of {len(runs)} run(s) have no results:\n"
            + "\n".join(failed or missing),
            file=sys.stderr,
        )
        return 1
    return 0


def parse_family(
    primary: list[str] | None, margins: list[str] | None, plan_tests: int | None = None
) -> Family:
    """--primary, --margins (AP points) and --plan-tests as the report's :class:`Family`."""
    if plan_tests is not None and (plan_tests < 1 or not primary):
        raise AblationError(f"--plan-tests {plan_tests}: at least 1, with --primary endpoints")
    compared = [s.name for s in STATS if s.compared]
    for name in primary or []:
        if name not in compared:
            raise AblationError(
                f"--primary {name}: not a compared metric; one of {', '.join(compared)}"
            )
    if margins is None:
        return Family(tuple(primary or ()), plan_tests=plan_tests or 0)
    if not primary:
        raise AblationError("--margins: TOST margins belong to --primary endpoints; add --primary")
    # a margin not given keeps its default
    parsed = dict(DEFAULT_MARGINS)
    for text in margins:
        name, _, value = text.partition("=")
        try:
            parsed[name] = float(value) / 100
        except ValueError:
            parsed[name] = -1.0
        if name not in primary or not parsed[name] > 0:
            raise AblationError(
                f"--margins {text}: expected METRIC=POINTS with a --primary metric and POINTS > 0 "
                f"(e.g. --margins AP=1 AP90=2)"
            )
    return Family(tuple(primary), parsed, plan_tests or 0)


def launch(args, steps, out: Path, command: str, code: Path):
    """Train what the steps ask for with the checkout ``code``; ``{run name: error or None}``, or
    None when submitted and not waited for."""
    actions = Counter(s.action for s in steps)
    counts = [f"{actions[a]} {a}" for a in ("reuse", "train", "resume", "overwrite") if actions[a]]
    print(f"{len(steps)} runs into {out / 'runs'}: {', '.join(counts)}", flush=True)
    if args.launcher == "local":
        return run_local(
            steps, jobs=args.jobs or 1, keep_checkpoint=args.keep_checkpoint, code=code
        )
    from detector.ablation import slurm

    given = dict(
        slurm_partition=args.partition,
        timeout_min=slurm.parse_time(args.time) if args.time else None,
        gpus_per_node=args.gpus_per_run,
        cpus_per_task=args.cpus_per_run,
        slurm_constraint=args.constraint,
        slurm_account=args.account,
        slurm_array_parallelism=args.jobs,
        keep_checkpoint=args.keep_checkpoint,
        code=code,
    )
    # an option not given keeps SlurmOptions' default
    options = slurm.SlurmOptions(**{k: v for k, v in given.items() if v is not None})
    submitted = slurm.submit(steps, out, options)
    report = f"{command} --report-only"
    if submitted:
        print(
            f"submitted SLURM array {submitted[0][1].job_id.split('_')[0]} ({len(submitted)} "
            f"runs); submitit's logs: {out / 'slurm'}",
            flush=True,
        )
    if args.no_wait:
        print(f"when the jobs finish, write the report with: {report}")
        return None
    try:
        return slurm.wait(submitted)
    except KeyboardInterrupt:
        print(
            f"stopped waiting; the jobs keep running. When they finish: {report}", file=sys.stderr
        )
        raise Interrupted from None


if __name__ == "__main__":
    sys.exit(main())
