#!/usr/bin/env python
"""Accuracy parity: torchvision's own FasterRCNN against ours, built from one config and trained by
the same loop, data, schedule and evaluator, N seeds each. Example:

    python tools/parity.py --cfg smoothl1.yaml --seeds 5

The runs are an ablation (tools/ablate.py: its run folders, reuse and summary.md) with torchvision
as the baseline; parity.md adds each arm's difference to it, paired by seed and by Welch's test,
and the seconds per iteration. More arms: --arm ours_d2:model.roi_head.predictor_init=detectron2.
With --layer gpu.yaml the same command measures the GPU settings (docs/performance.md).
"""

import platform
import shlex
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

import scipy.stats
import torch
import yaml

from detector.ablation.record import RecordError
from detector.ablation.stats import mean_std, paired_difference
from detector.config import CONFIG_DIR, parse_override, resolve_config_path, tool_parser
from detector.engine.outputs import check_output, write_output
from detector.engine.runs import FINAL_METRICS, is_finished
from detector.errors import UsageError, read_json, run_tool

METRICS = ("AP", "AP50", "AP75", "AP90")
BASELINE = "torchvision"
TITLE = "# Accuracy parity: torchvision's FasterRCNN against ours"


def build_parser():
    parser = tool_parser(__doc__)
    parser.add_argument("--cfg", default="smoothl1.yaml", help="config both sides are built from")
    parser.add_argument(
        "--layer", action="append", default=[], help="config layered on it (e.g. gpu.yaml)"
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds per arm (seed=0..N-1)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs at a time (1: timings are comparable)"
    )
    parser.add_argument(
        "--arm",
        action="append",
        default=[],
        help="another arm, NAME:key=value[,key=value] (compared with torchvision too)",
    )
    parser.add_argument("--out", default="runs/parity", help="output folder")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files in --out that this tool did not write (the arms' configs, parity.md)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every arm")
    return parser


def parse_arms(texts: list[str]) -> dict[str, list[str]]:
    arms = {BASELINE: ["model.implementation=torchvision"], "ours": ["model.implementation=ours"]}
    for text in texts:
        name, _, assignments = text.partition(":")
        if not name.isidentifier() or not assignments or name in arms:
            raise UsageError(
                f"--arm {text!r}: expected a new NAME:key=value[,key=value] "
                f"(e.g. ours_d2:model.roi_head.predictor_init=detectron2)"
            )
        arms[name] = assignments.split(",")
    return arms


def arm_config(base: Path, overrides: list[str]) -> str:
    """A config file's text: ``base`` (by its name under configs/, so the file reads the same in
    any checkout) with the arm's dotted overrides as nested keys."""
    named = base.is_relative_to(CONFIG_DIR)
    layer: dict = {"_base_": str(base.relative_to(CONFIG_DIR) if named else base)}
    for text in overrides:
        key, value = parse_override(text)
        *parents, last = key.split(".")
        section = layer
        for part in parents:
            section = section.setdefault(part, {})
        section[last] = value
    return yaml.safe_dump(layer, sort_keys=False)


def check_outputs(out: Path, arms: dict[str, str], overwrite: bool) -> None:
    """The arms' config files and parity.md may be written (docs/runs.md, "Outputs"): a file that
    is there is replaced when this tool wrote it (the same arm's config, a parity report), else
    only with ``overwrite``."""
    for name, text in arms.items():
        path = out / "arms" / f"{name}.yaml"
        check_output(path, overwrite=overwrite or _text(path) == text)
    report = _text(out / "parity.md")
    check_output(out / "parity.md", overwrite=overwrite or report.startswith(TITLE + "\n"))


def _text(path: Path) -> str:
    """The file's text; "" when it is missing or unreadable."""
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return ""


def read_arm(runs: Path, arm: str, seeds: int) -> dict[int, dict[str, float]]:
    """Finished runs: seed -> {metric: 0..100, "s_per_iter": mean seconds per iteration}."""
    out = {}
    for seed in range(seeds):
        run = runs / f"{arm}-seed{seed}"
        if not is_finished(run):
            continue
        metrics = read_json(run / FINAL_METRICS, RecordError)
        row = {m: 100 * metrics[m] for m in METRICS if m in metrics}
        config = yaml.safe_load((run / "config.yaml").read_text())
        records = read_json(run / "metrics.jsonl", RecordError, lines=True)
        speeds = [r["images_per_s"] for r in records if r.get("type") == "train"]
        if speeds:
            row["s_per_iter"] = config["train"]["batch_size"] / statistics.fmean(speeds)
        out[seed] = row
    return out


def _interval(mean: float, low: float, high: float, p: float) -> str:
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}], p {p:.2g}"


def compare(arm: dict, base: dict, metric: str) -> tuple[str, str]:
    """(paired by seed, Welch) difference arm − torchvision with its 95% interval and p value."""
    a = {seed: row[metric] for seed, row in arm.items() if metric in row}
    b = {seed: row[metric] for seed, row in base.items() if metric in row}
    paired = welch = "too few runs"
    d = paired_difference(a, b)
    if d.n >= 2:
        paired = _interval(d.mean, d.ci_low, d.ci_high, d.p)
    if len(a) >= 2 and len(b) >= 2:
        test = scipy.stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
        ci = test.confidence_interval(0.95)
        mean = statistics.fmean(a.values()) - statistics.fmean(b.values())
        welch = _interval(mean, ci.low, ci.high, test.pvalue)
    return paired, welch


def _mean_std(rows: dict, key: str, fmt: str = ".1f") -> str:
    summary = mean_std(row[key] for row in rows.values() if key in row)
    if not summary.n:
        return "-"
    return f"{summary.mean:{fmt}} ± {summary.std:{fmt}}"


def parity_markdown(results: dict[str, dict], command: str) -> str:
    base = results[BASELINE]
    lines = [
        TITLE,
        "",
        f"`{command}`",
        "",
        f"{date.today()}, {platform.machine()} {platform.processor() or ''}, "
        f"torch {torch.__version__}; "
        "both sides built from one config (detector/modeling/reference.py says what cannot be "
        "matched), trained by the same loop on the same data and scored by the same evaluator.",
        "",
        "| arm | runs | " + " | ".join(METRICS) + " | s/iter |",
        "|---" * (len(METRICS) + 3) + "|",
    ]
    for arm, rows in results.items():
        cells = [_mean_std(rows, m) for m in METRICS] + [_mean_std(rows, "s_per_iter", ".3f")]
        lines.append(f"| {arm} | {len(rows)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Differences to torchvision, arm − torchvision, with 95% intervals (uncorrected: each line "
        "is its own question): paired by seed (Student t on the per-seed differences) and "
        "unpaired (Welch).",
        "",
        "| arm | metric | paired by seed | Welch |",
        "|---|---|---|---|",
    ]
    for arm, rows in results.items():
        if arm == BASELINE:
            continue
        for metric in METRICS:
            paired, welch = compare(rows, base, metric)
            lines.append(f"| {arm} | {metric} | {paired} | {welch} |")
        both = [
            s for s in rows if s in base and "s_per_iter" in rows[s] and "s_per_iter" in base[s]
        ]
        if both:
            ratio = statistics.fmean(rows[s]["s_per_iter"] / base[s]["s_per_iter"] for s in both)
            lines.append(f"| {arm} | s/iter ratio | {ratio:.2f} | |")
    return "\n".join(lines) + "\n"


@run_tool
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_intermixed_args(argv)
    arms = parse_arms(args.arm)
    out = Path(args.out)
    base = resolve_config_path(args.cfg)
    texts = {name: arm_config(base, overrides) for name, overrides in arms.items()}
    check_outputs(out, texts, args.overwrite)
    cfgs = []
    for name, text in texts.items():
        path = out / "arms" / f"{name}.yaml"
        write_output(path, text, overwrite=True)
        cfgs.append(str(path))
    ablate = [sys.executable, str(Path(__file__).with_name("ablate.py")), "--cfgs", *cfgs]
    for layer in args.layer:
        ablate += ["--cfg", layer]
    ablate += ["--seeds", str(args.seeds), "--jobs", str(args.jobs), "--baseline", BASELINE]
    ablate += ["--out", str(out), "--title", "Accuracy parity", *args.overrides]
    ablate += ["--overwrite"] if args.overwrite else []
    code = subprocess.call(ablate)
    results = {name: read_arm(out / "runs", name, args.seeds) for name in arms}
    command = "python tools/parity.py " + shlex.join(argv)
    write_output(out / "parity.md", parity_markdown(results, command), overwrite=True)
    print((out / "parity.md").read_text())
    return code


if __name__ == "__main__":
    sys.exit(main())
