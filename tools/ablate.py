#!/usr/bin/env python
"""Run a box-loss ablation and write its report.

    python tools/ablate.py --cfgs l2.yaml smoothl1.yaml dynamic_smoothl1.yaml --seeds 3 [--cfg data/x.yaml] \\
        [--sweep model.roi_head.box_loss.beta=0.05,0.11,0.5,1.0] [--out DIR] [--jobs N] [key=value ...]

Every (config, sweep value, seed) trains with identical data, schedule and budget into ``DIR/runs/<name>``
(default DIR: ``runs/ablation-<config names>``). Finished runs are reused and interrupted ones resume, so the
same command continues an ablation. ``DIR`` then holds summary.md, summary.csv, ap_vs_iou.png,
loss_curves.png, beta.png and pred_err.png; ``tensorboard --logdir DIR/runs`` compares the runs (HParams tab).
"""
import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.ablation import plan_runs, run_all, summarize  # noqa: E402
from detector.config import ConfigError, load_config  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfgs", nargs="+", required=True, help="loss configs to compare (names in configs/)")
    parser.add_argument("--cfg", action="append", default=[], help="config layered on every run (e.g. data/...)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per config (seed=0..N-1)")
    parser.add_argument("--sweep", help="key=v1,v2,... : one group per value (e.g. a beta sweep)")
    parser.add_argument("--out", help="output folder (default runs/ablation-<names>)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (one per GPU; on CPU, sharing the cores)")
    parser.add_argument("--title", default="", help="title of summary.md")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    args = parser.parse_args(argv)

    runs = plan_runs(args.cfgs, args.cfg, args.seeds, args.overrides, args.sweep)
    try:  # every run's config is checked before the first one starts
        for run in runs:
            load_config(run.cfgs, run.overrides)
    except (ConfigError, ValueError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("runs") / ("ablation-" + "-".join(Path(c).stem for c in args.cfgs))
    print(f"{len(runs)} runs into {out / 'runs'}")
    errors = run_all(runs, out, jobs=args.jobs)
    command = "python tools/ablate.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    summarize(runs, out, title=args.title, command=command)
    print((out / "summary.md").read_text())
    if errors:
        print(f"{len(errors)} run(s) failed:\n" + "\n".join(errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
