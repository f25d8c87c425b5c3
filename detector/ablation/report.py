"""An ablation's report from its run records alone: ``summary.md``, the tidy ``summary.csv``
(:data:`CSV_COLUMNS`; AP as fractions, undefined values empty) and the plots. Every per-run number
is a row of :data:`detector.ablation.table.STATS`. A run with a folder but no ``eval/metrics.json``,
an unreadable record or a non-finite value failed: it counts in "failed k of n seeds" and blocks a
"better" verdict for its config (a "worse" one for the baseline); a run not started yet is no
failure. With a pre-registered :class:`Family`, Holm runs over exactly its configs × primary
endpoints, "no difference" is claimed only by TOST, and every other comparison is exploratory."""

from __future__ import annotations

import csv
import math
import statistics
import sys
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from detector.ablation.launch import last_line
from detector.ablation.localisation import MATCH_IOU, SCORE_THRESHOLD, tide_available
from detector.ablation.plan import Run, Step, groups_of
from detector.ablation.plots import PLOTS, TP_IOU_BINS, plot_all, tp_iou_counts
from detector.ablation.record import RECORD, RecordError, ensure_record
from detector.ablation.stats import (
    ALPHA,
    CONFIDENCE,
    MIN_PAIRS,
    NAN,
    POWER,
    ZERO_SD,
    MeanStd,
    PairedDifference,
    defined,
    detectable_effect,
    holm,
    mean_std,
    paired_difference,
    pooled_sd,
    seeds_needed,
    simultaneous_interval,
    tost,
    verdict,
)
from detector.ablation.table import STATS, Stat
from detector.engine.logger import DYNAMIC_KEYS
from detector.engine.outputs import check_output_folder
from detector.engine.runs import FINAL_METRICS, is_finished
from detector.errors import read_json
from detector.losses.dynamic import dynamic_records

CSV_COLUMNS = (
    "kind",
    "config",
    "seed",
    "run",
    "metric",
    "n",
    "value",
    "std",
    "baseline",
    "ci95_low",
    "ci95_high",
    "p",
    "p_holm",
    "detectable",
    "verdict",
    "note",
    "family",
    "margin",
    "p_tost",
    "p_tost_holm",
    "ci_simultaneous_low",
    "ci_simultaneous_high",
)
NOT_STARTED = "not started"
# the first columns of summary.csv, by which an ablation's folder is recognised
CSV_OWN = CSV_COLUMNS[:5]
BETA_CSV = "beta.csv"
TP_IOU_CSV = "tp_iou.csv"
REPORT_FILES = ("summary.md", "summary.csv", TP_IOU_CSV, BETA_CSV, *PLOTS)
# what beta.csv holds per update of a run whose beta changes
BETA_COLUMNS = (*DYNAMIC_KEYS["beta"], *DYNAMIC_KEYS["sampling"])
DEFAULT_MARGINS = {"AP": 0.01, "AP90": 0.02}  # TOST margins, as fractions (±1 AP, ±2 AP90)


@dataclass(frozen=True)
class Family:
    """The pre-registered tests: every config against the baseline at each ``primary`` metric, Holm
    over all of them (a missing test counts, with p = 1); TOST with ``margins`` (fractions)."""

    primary: tuple[str, ...] = ()
    margins: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MARGINS))
    # the tests the seeds rule divides α by (the planned grid's family); 0: this report's family
    plan_tests: int = 0


def read_run(run_dir: Path, ground_truth: dict) -> dict[str, Any]:
    """A finished run's results from its record alone (:mod:`detector.ablation.record`; written
    first from the heavy files when it is missing), with ``values``: each row of ``STATS`` read
    from it; a :class:`RecordError` names a file that cannot be read."""
    import torch

    record = ensure_record(run_dir, ground_truth)
    metrics = read_json(run_dir / FINAL_METRICS, RecordError)
    if not isinstance(metrics, dict):
        raise RecordError(f"{run_dir / FINAL_METRICS}: not a metrics object")
    jsonl = run_dir / "metrics.jsonl"
    if not jsonl.is_file():
        # its curves and training means would drop out of the report unsaid
        raise RecordError(f"{jsonl}: missing, so the run's record is incomplete")
    log = read_json(jsonl, RecordError, lines=True)
    run = {
        "metrics": metrics,
        "log": log,
        # the logged training steps, which the STATS readers and the plots read; the records of
        # Dynamic's state (beta.csv, the sampling rows)
        "train": [r for r in log if r.get("type") == "train"],
        "dynamic": dynamic_records(log),
        # the beta trajectory: beta.csv, beta.png, the final beta
        "beta_log": dynamic_records(log, "beta"),
        "record": record or {},
        "tp_ious": None,
        "pred_err": None,
        "evals": {
            r["iter"]: r["AP"] for r in log if r.get("type") == "eval" and defined(r.get("AP"))
        },
    }
    if record and record.get("pred_err"):
        run["pred_err"] = torch.tensor(record["pred_err"], dtype=torch.float32)
    if record and record.get("tp_ious") is not None:
        run["tp_ious"] = torch.tensor(record["tp_ious"], dtype=torch.float32)
    elif record is None:
        run["localisation_error"] = f"{run_dir.name}: no {RECORD} and no detections to make it"
    else:
        run["localisation_error"] = record.get("localisation_error", "no true-positive IoUs")
    if record and record.get("tide_error"):
        run["tide_error"] = record["tide_error"]
    run["values"] = {stat.name: stat.read(run) for stat in STATS}
    return run


def convergence(results: list[dict[str, Any]]) -> tuple[int, float, float] | None:
    """(the last iteration at or before 3/4 of training at which every run was evaluated, the
    seeds' mean AP there, mean AP at the end), else None: the last-quarter diagnostic."""
    last = max((max(r["evals"]) for r in results if r["evals"]), default=None)
    common = set.intersection(*(set(r["evals"]) for r in results)) if results else set()
    starts = [i for i in common if last is not None and 0 < i <= last * 3 / 4]
    if last not in common or not starts:
        return None
    start = max(starts)
    mean_ap = [statistics.fmean(r["evals"][i] for r in results) for i in (start, last)]
    return start, *mean_ap


@dataclass
class Group:
    name: str
    planned: int
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    unfinished: list[tuple[Run, str]] = field(default_factory=list)  # (run, why, with its log)

    @property
    def failed(self) -> str:
        k = sum(why != NOT_STARTED for _, why in self.unfinished)
        return f"failed {k} of {self.planned} seeds" if k else ""

    def values(self, name: str) -> dict[int, Any]:
        """seed -> the value of the ``STATS`` row ``name`` of each finished run."""
        return {seed: r["values"].get(name) for seed, r in self.results.items()}

    @cached_property
    def stats(self) -> dict[str, MeanStd]:
        """Each row of ``STATS`` over the finished seeds (read once they are collected)."""
        return {s.name: mean_std(self.values(s.name).values()) for s in STATS}


def collect(steps: list[Step], out: Path) -> list[Group]:
    """The groups in plan order, read from ``out/runs`` (``steps`` from ``check_runs``: its
    finished runs are this plan's). A finished run whose record cannot be read is skipped with one
    line on stderr and counts as failed."""
    runs = [step.run for step in steps]
    groups = {name: Group(name, sum(r.group == name for r in runs)) for name in groups_of(runs)}
    ground_truth: dict = {}  # the val ground truth per data config, read once
    for step in steps:
        run, run_dir = step.run, step.run_dir
        log = run_dir / "train.log"
        if is_finished(run_dir):
            try:
                result = {**read_run(run_dir, ground_truth), "run": run.name}
            except RecordError as exc:
                print(f"skipped {run.name}: {exc}", file=sys.stderr)
                groups[run.group].unfinished.append((run, f"unreadable: {exc}"))
                continue
            values = result["values"].items()
            bad = [m for m, v in values if isinstance(v, float) and not math.isfinite(v)]
            if not bad:
                result["watched"] = step.watched
                groups[run.group].results[run.seed] = result
                continue
            why = f"diverged: non-finite {', '.join(bad)}; log: {log}"
        elif not run_dir.is_dir():
            why = NOT_STARTED
        else:
            line = last_line(log)
            why = f"did not finish{': ' + line if line else ''}; log: {log}"
        groups[run.group].unfinished.append((run, why))
    return list(groups.values())


def compare(
    groups: list[Group], baseline: str, family: Family = Family()
) -> tuple[dict[str, dict[str, PairedDifference]], int]:
    """Per config and compared statistic, its :class:`PairedDifference` to ``baseline`` with its
    Holm-adjusted p, TOST, detectable effect and verdict; and m, the number of tests Holm corrects
    for. Without ``family.primary`` every testable difference is one Holm family; with it, exactly
    configs × primary endpoints are, and the rest is exploratory (uncorrected, no verdict). The
    detectable effect uses the sd pooled over the configs, at Holm's strictest level α / m."""
    base = next(g for g in groups if g.name == baseline)
    names = [s.name for s in STATS if s.compared]
    # a pre-registered family holds every planned config, finished or not
    diffs = {
        g.name: {m: paired_difference(g.values(m), base.values(m)) for m in names}
        for g in groups
        if g is not base and (family.primary or g.results and base.results)
    }
    if family.primary:
        tests = [(name, m) for name in diffs for m in family.primary]
    else:
        tests = [(name, m) for name, by in diffs.items() for m, d in by.items() if d.testable]
    # a pre-registered test that cannot be made (no finished run, too few pairs) counts, as p = 1
    p_values = [diffs[name][m].p for name, m in tests]
    adjusted = dict(zip(tests, holm([1.0 if math.isnan(p) else p for p in p_values])))
    margins = {m: family.margins[m] for m in family.primary if m in family.margins}
    p_tost = {(name, m): tost(diffs[name][m], margins[m]) for name, m in tests if m in margins}
    tost_adjusted = dict(zip(p_tost, holm([1.0 if math.isnan(p) else p for p in p_tost.values()])))
    sd = {m: pooled_sd(by[m] for by in diffs.values()) for m in names}
    failed = {g.name: g.failed for g in groups}
    compared = {}
    for name, by_metric in diffs.items():
        compared[name] = {}
        for m, d in by_metric.items():
            member = (name, m) in adjusted
            level = ALPHA / max(1, len(tests)) if member else ALPHA
            sim = simultaneous_interval(d, len(tests)) if member and family.primary else (NAN, NAN)
            d = replace(
                d,
                sim_low=sim[0],
                sim_high=sim[1],
                p_holm=adjusted.get((name, m), NAN),
                detectable=detectable_effect(sd[m], d.n, level) if sd[m] >= ZERO_SD else NAN,
                family=("primary" if member else "exploratory") if family.primary else "",
                margin=margins.get(m, NAN) if member else NAN,
                p_tost=p_tost.get((name, m), NAN),
                p_tost_holm=tost_adjusted.get((name, m), NAN),
            )
            if family.primary and not member:
                why = "exploratory" if d.testable else "too few seeds"
            else:
                why = verdict(d, d.p_holm, failed[name], failed[baseline], d.p_tost_holm)
            if family.primary and why == "no evidence":
                why = "inconclusive"  # neither different nor equivalent
            if member and d.n == 0:
                why = "no pairs: counted at p = 1"
            compared[name][m] = replace(d, verdict=why)
    return compared, len(tests)


def check_report_folder(out: Path, inputs: list[str], overwrite: bool = False) -> Path:
    """``out`` resolved, once the report may be written there (docs/runs.md, "Outputs"): its
    report files are replaced when its summary.csv is an ablation's (its header begins with
    :data:`CSV_OWN`: columns added later do not disown it), else only with ``overwrite``; an input
    (a config) is never one of them."""
    own = _is_summary_csv(out / "summary.csv")
    return check_output_folder(out, REPORT_FILES, inputs=inputs, overwrite=overwrite or own)


def _is_summary_csv(path: Path) -> bool:
    try:
        with open(path, newline="") as f:
            return (next(csv.reader(f), None) or [])[: len(CSV_OWN)] == list(CSV_OWN)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False


def write_report(
    steps: list[Step],
    out: Path,
    baseline: str,
    title: str = "",
    command: str = "",
    family: Family = Family(),
) -> list[Group]:
    """Write summary.csv, summary.md and the plots into ``out``; return the groups."""
    groups = collect(steps, out)
    paired, tests = compare(groups, baseline, family)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "summary.csv", groups, paired, baseline)
    sections = (
        _header(groups, title, command),
        _summary_section(groups),
        _paired_section(groups, paired, tests, baseline, family),
        _power_section(paired, family, family.plan_tests or tests),
        _localisation_section(groups, _write_tp_iou_csv(out / TP_IOU_CSV, groups)),
        _sampling_section(groups, _write_beta_csv(out / BETA_CSV, groups)),
        _convergence_section(groups),
        _unfinished_section(groups),
    )
    (out / "summary.md").write_text("\n".join(line for s in sections for line in s) + "\n")
    plot_all({g.name: g.results for g in groups if g.results}, out, baseline)
    return groups


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}"


def _write_csv(path: Path, groups: list[Group], paired, baseline: str) -> None:
    rows = []
    for g in groups:
        for seed, result in sorted(g.results.items()):
            for metric, value in result["values"].items():
                if value is None:
                    continue
                number = _num(float(value) if defined(value) else None)
                rows.append(dict(kind="run", config=g.name, seed=seed, run=result["run"]))
                rows[-1].update(metric=metric, n=1, value=number)
        for run, why in g.unfinished:
            rows.append(
                dict(kind="unfinished", config=g.name, seed=run.seed, run=run.name, note=why)
            )
        for metric, s in g.stats.items():
            rows.append(dict(kind="group", config=g.name, metric=metric, n=s.n))
            rows[-1].update(value=_num(s.mean), std=_num(s.std))
        for metric, d in paired.get(g.name, {}).items():
            # a config with no finished run: its pre-registered tests alone
            if not g.results and d.family != "primary":
                continue
            numbers = dict(value=d.mean, std=d.std, ci95_low=d.ci_low, ci95_high=d.ci_high, p=d.p)
            numbers.update(p_holm=d.p_holm, detectable=d.detectable, margin=d.margin)
            numbers.update(p_tost=d.p_tost, p_tost_holm=d.p_tost_holm)
            numbers.update(ci_simultaneous_low=d.sim_low, ci_simultaneous_high=d.sim_high)
            rows.append(dict(kind="paired", config=g.name, metric=metric, n=d.n))
            rows[-1].update({k: _num(v) for k, v in numbers.items()})
            rows[-1].update(baseline=baseline, verdict=d.verdict, note=g.failed, family=d.family)
    _write_rows(path, rows, CSV_COLUMNS)


def _write_rows(path: Path, rows: list[dict], columns=None) -> None:
    """``rows`` as a CSV file (``columns``: its header; default the first row's keys); none and no
    ``columns``: no file (an earlier one removed)."""
    path.unlink(missing_ok=True)
    if not rows and columns is None:
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------- summary.md


def _pct(value: float, signed: bool = False) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:{'+' if signed else ''}.1f}"


def _cell(s: MeanStd, stat: Stat) -> str:
    """Mean ± std of ``stat`` as it is shown; "n/a" without values."""
    if s.n == 0:
        return "n/a"
    text = f"{stat.scale * s.mean:{stat.fmt}}"
    if stat.with_std and not math.isnan(s.std):
        text += f" ± {stat.scale * s.std:{stat.fmt}}"
    return text


def _row(cells) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def _table(head: list[str], rows: list[list]) -> list[str]:
    return [_row(head), "|---" * len(head) + "|", *map(_row, rows)]


def _section(title: str, text: str, table: list[str] = ()) -> list[str]:
    """A summary.md section: its heading, ``text``, then ``table`` when there is one."""
    lines = ["", f"## {title}", "", text]
    return [*lines, "", *table] if table else lines


def _stats_table(columns: list[Stat], counted: str, counts: list[tuple]) -> list[str]:
    """Per (group, its cell under ``counted``) of ``counts``: the mean ± std of each of ``columns``,
    or "–" without a finished run."""
    head = ["config", counted, *(c.label or c.name for c in columns)]
    rows = []
    for g, count in counts:
        cells = [_cell(g.stats[c.name], c) for c in columns]
        rows.append([g.name, count, *(cells if g.results else ["–"] * len(columns))])
    return _table(head, rows)


def _p(value: float) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:.2g}" if value >= 0.001 else "<0.001"


def _interval(low: float, high: float) -> str:
    return "n/a" if math.isnan(low) else f"[{_pct(low, True)}, {_pct(high, True)}]"


def _columns(groups: list[Group], table: str) -> list[Stat]:
    """The rows of ``STATS`` shown in ``table``: an optional one only when some run has it."""
    shown = [s for s in STATS if s.table == table]
    return [s for s in shown if not s.optional or any(g.stats[s.name].n for g in groups)]


def _header(groups: list[Group], title: str, command: str) -> list[str]:
    done = sum(len(g.results) for g in groups)
    planned = sum(g.planned for g in groups)
    lines = [f"# {title or 'Loss ablation'}", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines.append(f"{done} of {planned} runs finished ({len(groups)} configs).")
    # reused runs watched at other periods than the command says (what they learn is the same)
    watched: dict[str, list[str]] = {}
    for g in groups:
        for seed, result in sorted(g.results.items()):
            if result.get("watched"):
                watched.setdefault(", ".join(result["watched"]), []).append(result["run"])
    for settings, names in watched.items():
        lines.append(
            f"Reused with other settings that only watch a run (its config.yaml): {settings} in "
            f"{', '.join(names)}."
        )
    if done < planned:
        lines.append(
            f"**This report is partial: {planned - done} run(s) have no results** (listed at the "
            "end)."
        )
    return lines


def _summary_section(groups: list[Group]) -> list[str]:
    columns = _columns(groups, "summary")
    text = (
        "COCO AP in percent (AP90, AP95: at IoU 0.90, 0.95); std over seeds. loss_box_reg: the "
        "mean over the last 10% of logged iterations; images_per_s: training throughput; "
        "eval_time_s: seconds of the final evaluation (inference and scoring). summary.csv holds "
        'every run\'s numbers, as fractions. A failed run is in no mean; "failed k of n seeds" '
        "counts it."
    )
    if any(c.name == "label_noise" for c in columns):
        text += (
            " noise: the nominal share of non-crowd training boxes corrupted; noise realised: "
            "the share of them that differs from the clean boxes (record.json)."
        )
    counts = []
    for g in groups:
        seeds = str(len(g.results))
        if len(g.results) != g.planned:
            seeds = f"{len(g.results)} of {g.planned}"
        if not g.results:
            seeds += ": **failed**" if g.failed else ": not started"
        elif g.failed:
            seeds += f"; {g.failed}"
        counts.append((g, seeds))
    return _section("Mean ± std over seeds", text, _stats_table(columns, "seeds", counts))


def _paired_prose(baseline: str, tests: int, family: Family) -> str:
    level, alpha, quantile = round(100 * CONFIDENCE), f"{ALPHA:.2g}", (1 + CONFIDENCE) / 2
    text = (
        f"Per metric, d = config − {baseline} for each seed both finished (AP points): its mean "
        f"over the n pairs and a {level}% Student-t interval over the paired differences, mean ± "
        f"t({quantile:g}, n−1) · sd(d) / √n, **uncorrected** (not simultaneous); p: the two-sided "
        "paired t test. "
    )
    if family.primary:
        margins = ", ".join(
            f"±{100 * family.margins[m]:g} {m}" for m in family.primary if m in family.margins
        )
        text += (
            f"**Pre-registered family: {tests} tests** (each config × "
            f"{', '.join(family.primary)}); Holm's correction runs over exactly these (an "
            "untestable one counts, with p = 1); the verdict is better or worse only when the "
            f'Holm-adjusted p < {alpha}. "No difference" is claimed only by equivalence: TOST (two '
            f"one-sided paired t tests) with margins {margins}, Holm-adjusted over the same tests, "
            f"< {alpha}. Every other metric is **exploratory**: its p and interval are uncorrected "
            "and it gets no verdict. "
        )
    else:
        text += (
            f"**Multiple testing: {tests} tests** (the rows with a p value) are Holm-corrected "
            f"together; the verdict is better or worse only when the Holm-adjusted p < {alpha}. "
        )
    return text + (
        f"Too few seeds when n < {MIN_PAIRS} or sd(d) = 0. A failed seed of the config blocks "
        "better (of the baseline: worse): the survivors are not a fair sample. detectable: the "
        f"smallest true difference found with {POWER:.0%} power at Holm's strictest level ({alpha} "
        f"/ the number of tests; exploratory rows: {alpha}), from the sd of d pooled over the "
        "report's configs; with no evidence, smaller ones may exist unseen. Metrics undefined on "
        "either side (COCO's -1) are left out."
    )


def _paired_section(
    groups: list[Group], paired, tests: int, baseline: str, family: Family
) -> list[str]:
    title = f"Paired differences to {baseline}"
    if not next(g for g in groups if g.name == baseline).results:
        text = f"The baseline {baseline} has no finished run: there is nothing to pair with."
        return _section(title, text)
    if not paired:
        return _section(title, "No other config has a finished run: there is nothing to compare.")
    level = f"{round(100 * CONFIDENCE)}% CI"
    # a pre-registered family adds its columns (family, simultaneous interval, TOST)
    if family.primary:
        simultaneous = f"simultaneous {100 - 100 * ALPHA / tests:.3g}% CI"
        head = ["config", "metric", "family", "pairs", "mean diff", f"{level} (uncorrected)"]
        head += [simultaneous, "p (uncorrected)", "p (Holm)", "TOST p (Holm)"]
    else:
        head = ["config", "metric", "pairs", "mean diff", level, "p", "p (Holm)"]
    rows = []
    for name, by_metric in paired.items():
        # the pre-registered tests first
        for metric, d in sorted(by_metric.items(), key=lambda item: item[1].family != "primary"):
            # a pre-registered test shows, made or not
            if d.n == 0 and d.family != "primary":
                continue
            ci = _interval(d.ci_low, d.ci_high)
            if family.primary:
                sim = _interval(d.sim_low, d.sim_high) if d.family == "primary" else "–"
                cells = [name, metric, d.family, d.n, _pct(d.mean, True), ci, sim]
                cells += [_p(d.p), _p(d.p_holm), _p(d.p_tost_holm)]
            else:
                cells = [name, metric, d.n, _pct(d.mean, True), ci, _p(d.p), _p(d.p_holm)]
            detectable = "–" if math.isnan(d.detectable) else f"±{_pct(d.detectable)}"
            shown = f"**{d.verdict}**" if d.verdict in ("better", "worse") else d.verdict
            rows.append([*cells, detectable, shown])
    head += ["detectable", "verdict"]
    return _section(title, _paired_prose(baseline, tests, family), _table(head, rows))


def _power_section(paired, family: Family, tests: int) -> list[str]:
    """The seeds rule of the protocol: per primary endpoint, the sd of d pooled over the configs
    and the seeds a paired t test at α / ``tests`` needs to find its margin with 80% power."""
    if not family.primary or not paired:
        return []
    alpha = ALPHA / max(1, tests)
    text = (
        "Per primary endpoint: the sd of the paired differences pooled over the configs (df: "
        "Σ (n − 1) over them; the configs share the baseline's runs, so their differences are "
        "not independent and the sd is less sure than df says), the smallest true difference "
        "the most pairs here find with "
        f"{POWER:.0%} power, and the seeds a two-sided paired t test at {ALPHA:g} / {tests} = "
        f"{alpha:.3g} needs to find the endpoint's margin with {POWER:.0%} power (more than 100: "
        "'> 100')."
    )
    rows = []
    for metric in family.primary:
        diffs = [by[metric] for by in paired.values()]
        sd = pooled_sd(diffs)
        dof = sum(d.n - 1 for d in diffs if d.n >= 2 and not math.isnan(d.std))
        pairs = max(d.n for d in diffs)
        now = detectable_effect(sd, pairs, alpha) if sd >= ZERO_SD else NAN
        margin = family.margins.get(metric)
        need = seeds_needed(sd, margin, alpha) if margin and sd >= ZERO_SD else None
        shown = "–" if margin is None or sd < ZERO_SD else str(need or "> 100")
        cells = [metric, "n/a" if math.isnan(sd) else f"{100 * sd:.2f}", dof, pairs]
        cells += ["–" if math.isnan(now) else f"±{_pct(now)}"]
        cells += ["–" if margin is None else f"±{100 * margin:g}", shown]
        rows.append(cells)
    head = ["metric", "pooled sd of d", "df", "pairs", "detectable", "margin", "seeds"]
    return _section("Power: the seeds rule", text, _table(head, rows))


def _localisation_section(groups: list[Group], histogram: bool = False) -> list[str]:
    title = "Localisation of true positives"
    errors = [
        r[key]
        for g in groups
        for r in g.results.values()
        for key in ("localisation_error", "tide_error")
        if key in r
    ]
    with_tps = [g for g in groups if g.stats["tp_iou_median"].n]
    if not with_tps:
        text = "No finished run has true-positive IoUs in its record: nothing to show."
        return _section(title, text + (f" ({errors[0]})" if errors else ""))
    columns = _columns(with_tps, "localisation")
    if any(c.name.startswith("tide_") for c in columns):
        tide_note = (
            "TIDE Loc: TIDE's localisation-error dAP (tidecv; AP points at IoU 0.5 gained by "
            "fixing detections mislocalised at IoU 0.1 to 0.5; lower is better); Loc@0.75: the "
            "same with true positives at IoU >= 0.75 (AP points at IoU 0.75; errors at 0.1 to "
            "0.75), closer to where box losses differ."
        )
    elif tide_available():
        tide_note = "TIDE's localisation error is not shown: no run gave it."
    else:
        tide_note = (
            "TIDE's localisation error is not shown: tidecv is not importable (optional: pip "
            'install -e ".[tide]").'
        )
    text = (
        f"Each detection with score >= {SCORE_THRESHOLD} is matched the COCO way (at IoU >= "
        f"{MATCH_IOU}); the IoUs of these true positives per run, by their median and the share >= "
        f"0.75 and >= 0.9, then mean ± std over seeds (tp_iou.png: their histogram per config"
        f"{f'; {TP_IOU_CSV}: its counts, pooled over seeds' if histogram else ''}). {tide_note}"
    )
    if errors:
        text += f"\nRuns without these numbers: {'; '.join(errors)}."
    counts = [(g, g.stats["tp_iou_median"].n) for g in with_tps]
    return _section(title, text, _stats_table(columns, "runs", counts))


def _write_tp_iou_csv(path: Path, groups: list[Group]) -> bool:
    """Per config, its true positives' IoUs pooled over seeds as a histogram (:data:`TP_IOU_BINS`:
    count and share per bin); False (no file) without any."""
    import torch

    rows = []
    for g in groups:
        ious = [r["tp_ious"] for r in g.results.values() if r["tp_ious"] is not None]
        if not ious:
            continue
        pooled = torch.cat(ious)
        if not len(pooled):
            continue
        counts = tp_iou_counts(pooled)
        for low, high, count in zip(TP_IOU_BINS, TP_IOU_BINS[1:], counts):
            share = _num(count / len(pooled))
            rows.append(
                dict(config=g.name, runs=len(ious), iou_low=f"{low:.3f}", iou_high=f"{high:.3f}")
            )
            rows[-1].update(count=count, share=share)
    _write_rows(path, rows)
    return bool(rows)


def _write_beta_csv(path: Path, groups: list[Group]) -> int:
    """Every logged beta (each update and log step) of each run whose beta changes, as
    :data:`BETA_COLUMNS`; the number of such runs (none: no file)."""
    rows = []
    for g in groups:
        for seed, result in sorted(g.results.items()):
            if len({r.get("beta") for r in result["beta_log"]} - {None}) < 2:
                continue
            for r in result["beta_log"]:
                rows.append(dict(config=g.name, seed=seed, run=result["run"], iter=r["iter"]))
                rows[-1].update({k: _num(r.get(k)) for k in BETA_COLUMNS})
    _write_rows(path, rows)
    return len({(r["config"], r["seed"]) for r in rows})


def _sampling_section(groups: list[Group], dynamic_runs: int) -> list[str]:
    columns = _columns(groups, "sampling")
    shown = [g for g in groups if g.stats["num_pos_per_image"].n]
    if not shown:
        return []
    text = (
        "Means over a run's updates of Dynamic's β or IoU threshold, each at the last iteration "
        "of its interval (else over its logged training steps), then mean ± std over seeds. Zero "
        "targets: sampled positives whose regression target is exactly 0, the GT boxes added as "
        "proposals. Dynamic Smooth L1's statistic (statistic: mmdet, the default) is the k-th "
        "smallest |target| of the sampled positives, 0 whenever k of them are zero targets, and "
        "an update whose median statistic is 0 keeps the old β (official: over every proposal "
        "before sampling, and a 0 median sets β to its floor). Zero statistics per update: the "
        "share of an update interval's statistics that were 0. Final β: the β the last iteration "
        "trained with."
    )
    if dynamic_runs:
        text += (
            f" {BETA_CSV}: every logged β of the {dynamic_runs} run(s) whose β changes, each "
            "update's and each log step's: the β that step trained with, that iteration's "
            "statistic, positives and zero targets per image, and at an update the median of its "
            "interval's statistics (which sets the next β, as above) and their zero share."
        )
    counts = [(g, g.stats["num_pos_per_image"].n) for g in shown]
    table = _stats_table(columns, "runs", counts)
    return _section("Sampled positives and Dynamic's statistic", text, table)


def _convergence_section(groups: list[Group]) -> list[str]:
    moved = {g.name: convergence(list(g.results.values())) for g in groups if g.results}
    # nothing to say where no run was evaluated before its end
    if not any(len(r["evals"]) > 1 for g in groups for r in g.results.values()):
        return []
    text = (
        "Mean AP over the seeds at the last evaluation by 3/4 of training and at the end "
        "(ap_curve.png shows every evaluation). A diagnostic, not a convergence test: under a "
        "cosine schedule the last quarter holds 2.5% of the lr integral, so this mostly measures "
        "the final annealing; the budget is tested by doubling it (docs/results/README.md)."
    )
    rows = []
    for name, m in moved.items():
        if m is None:
            # its seeds share no evaluation by 3/4 (e.g. runs reused under another eval_period)
            rows.append([name, "no evaluation by 3/4 shared by its seeds", "", "", ""])
            continue
        it, a, b = m
        change = "yes" if abs(b - a) < 0.01 else "no"
        rows.append([name, f"{_pct(a)} (iteration {it})", _pct(b), _pct(b - a, True), change])
    head = ["config", "AP by 3/4", "AP at the end", "change", "change < 1 AP"]
    return _section("The last quarter (a diagnostic)", text, _table(head, rows))


def _unfinished_section(groups: list[Group]) -> list[str]:
    unfinished = [g for g in groups if g.unfinished]
    if not unfinished:
        return []
    lines = []
    for g in unfinished:
        if g.results:
            head = g.failed or "not all runs started"
        else:
            head = "all runs failed: no results" if g.failed else "no run started yet"
        lines.append(f"- **{g.name}**: {head}")
        lines += [f"  - {run.name}: {why}" for run, why in g.unfinished]
    return _section("Runs without results", "\n".join(lines))
