"""An ablation's report from its run folders alone: ``summary.md``, the tidy ``summary.csv`` (:data:`CSV_COLUMNS`; AP
as fractions, undefined values empty) and the plots. A run with a folder but no ``eval/metrics.json``, or with a
non-finite value, failed: it counts in "failed k of n seeds" and blocks a "better" verdict for its config (a "worse"
one for the baseline); a run not started yet is no failure."""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from detector.ablation.launch import last_line
from detector.ablation.localisation import (
    LOCALISATION,
    MATCH_IOU,
    SCORE_THRESHOLD,
    TIDE_HIGH_METRIC,
    TIDE_METRIC,
    summarise,
    tide_available,
)
from detector.ablation.plan import METRICS_FILE, Run, groups_of, is_finished
from detector.ablation.record import RECORD, RecordError, ensure_record
from detector.ablation.stats import (
    ALPHA,
    CONFIDENCE,
    MIN_PAIRS,
    NAN,
    POWER,
    PairedDifference,
    defined,
    detectable_effect,
    holm,
    mean_std,
    paired_difference,
    verdict,
)
from detector.evaluation.coco import COCO_METRIC_NAMES, IOU_THRESHOLDS
from detector.evaluation.voc import VOC_METRIC_NAMES

PER_IOU_NAMES = tuple(f"AP{round(t * 100)}" for t in IOU_THRESHOLDS)
_HIGH_IOU = tuple(
    n for n, t in zip(PER_IOU_NAMES, IOU_THRESHOLDS) if t >= 0.9
)  # where box losses separate
# every higher-is-better metric of a run: AP, AP at each IoU, the rest of COCOeval's, VOC's
CSV_METRICS = tuple(
    dict.fromkeys((COCO_METRIC_NAMES[0], *PER_IOU_NAMES, *COCO_METRIC_NAMES, *VOC_METRIC_NAMES))
)
SUMMARY_METRICS = tuple(
    n for n in CSV_METRICS if n in COCO_METRIC_NAMES and n.startswith("AP") or n in _HIGH_IOU
)
# per-run numbers that are not scores (no paired verdict)
DIAGNOSTICS = ("loss_box_reg", "images_per_s", "eval_time_s")
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
)
NOT_STARTED = "not started"


def _read_json(path: Path, lines: bool = False) -> Any:
    """The JSON document at ``path`` (``lines``: one per line, as a list); a :class:`RecordError`."""
    try:
        text = path.read_text()
        if lines:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except (OSError, ValueError) as exc:
        raise RecordError(f"{path}: cannot be read ({exc})") from None


def read_run(run_dir: Path, ground_truth: dict) -> dict[str, Any]:
    """A finished run's results from its record alone (:mod:`detector.ablation.record`; written
    first from the heavy files when it is missing); a :class:`RecordError` names a file that cannot
    be read."""
    record = ensure_record(run_dir, ground_truth)
    metrics = _read_json(run_dir / METRICS_FILE)
    if not isinstance(metrics, dict):
        raise RecordError(f"{run_dir / METRICS_FILE}: not a metrics object")
    jsonl = run_dir / "metrics.jsonl"
    records = _read_json(jsonl, lines=True) if jsonl.is_file() else []
    train = [r for r in records if r.get("type") == "train"]
    tail = [
        r["loss_box_reg"]
        for r in train[-max(1, len(train) // 10) :]
        if r.get("loss_box_reg") is not None
    ]
    speeds = [r["images_per_s"] for r in train[1:] or train if r.get("images_per_s")]
    known = {**dict(zip(PER_IOU_NAMES, metrics.get("AP_per_iou") or [])), **metrics}
    values = {name: known[name] for name in CSV_METRICS if name in known}
    values["loss_box_reg"] = statistics.fmean(tail) if tail else None
    values["images_per_s"] = statistics.fmean(speeds) if speeds else None
    values["eval_time_s"] = metrics.get("eval_time_s")
    result = {
        "metrics": metrics,
        "values": values,
        "pred_err": None,
        "tp_ious": None,
        "curve": [
            (r["iter"], r.get("loss_box_reg"), r.get("total_loss"), r.get("beta")) for r in train
        ],
        "evals": {
            r["iter"]: r["AP"] for r in records if r.get("type") == "eval" and defined(r.get("AP"))
        },
    }
    if record is None:
        result["localisation_error"] = f"{run_dir.name}: no {RECORD} and no detections to make it"
        return result
    import torch

    if record.get("pred_err"):
        result["pred_err"] = torch.tensor(record["pred_err"], dtype=torch.float32)
    if record.get("tp_ious") is not None:
        result["tp_ious"] = torch.tensor(record["tp_ious"], dtype=torch.float32)
        values.update(summarise(result["tp_ious"]))
    else:
        result["localisation_error"] = record.get("localisation_error", "no true-positive IoUs")
    values.update(record.get("tide") or {})
    return result


def convergence(results: list[dict[str, Any]]) -> tuple[int, float, float] | None:
    """(the last iteration at or before 3/4 of training at which every run was evaluated, the seeds' mean AP there,
    mean AP at the end), else None. Converged: the two differ by < 1 AP point over (at least) the last quarter."""
    last = max((max(r["evals"]) for r in results if r["evals"]), default=None)
    common = set.intersection(*(set(r["evals"]) for r in results)) if results else set()
    starts = [i for i in common if last is not None and 0 < i <= last * 3 / 4]
    if last not in common or not starts:
        return None
    return max(starts), *(
        statistics.fmean(r["evals"][i] for r in results) for i in (max(starts), last)
    )


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


def collect(runs: list[Run], out: Path) -> list[Group]:
    """The groups in plan order, read from ``out/runs`` (after ``check_runs``: its finished runs are
    this one's). A finished run whose record cannot be read is skipped with one line on stderr and
    counts as failed."""
    groups = {name: Group(name, sum(r.group == name for r in runs)) for name in groups_of(runs)}
    ground_truth: dict = {}  # the val ground truth per data config, read once
    for run in runs:
        run_dir = run.run_dir(out)
        log = run_dir / "train.log"
        if is_finished(run_dir):
            try:
                result = {**read_run(run_dir, ground_truth), "run": run.name}
            except RecordError as exc:
                print(f"skipped {run.name}: {exc}", file=sys.stderr)
                groups[run.group].unfinished.append((run, f"unreadable: {exc}"))
                continue
            bad = [
                m
                for m, v in result["values"].items()
                if isinstance(v, float) and not math.isfinite(v)
            ]
            if not bad:
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
    groups: list[Group], baseline: str
) -> tuple[dict[str, dict[str, PairedDifference]], int]:
    """Per config and metric of :data:`SUMMARY_METRICS`, its :class:`PairedDifference` to ``baseline`` with its
    Holm-adjusted p, detectable effect (at Holm's strictest level α / m) and verdict; and m, the number of tests."""
    base = next(g for g in groups if g.name == baseline)
    diffs = {
        g.name: {
            m: paired_difference(
                {s: r["values"].get(m) for s, r in g.results.items()},
                {s: r["values"].get(m) for s, r in base.results.items()},
            )
            for m in SUMMARY_METRICS
        }
        for g in groups
        if g is not base and g.results and base.results
    }
    family = [
        (name, m) for name, by_metric in diffs.items() for m, d in by_metric.items() if d.testable
    ]
    adjusted = dict(zip(family, holm([diffs[name][m].p for name, m in family])))
    alpha = ALPHA / max(1, len(family))
    failed = {g.name: g.failed for g in groups}
    return {
        name: {
            m: replace(
                d,
                p_holm=adjusted.get((name, m), NAN),
                detectable=detectable_effect(d.std, d.n, alpha) if d.testable else NAN,
                verdict=verdict(d, adjusted.get((name, m), NAN), failed[name], failed[baseline]),
            )
            for m, d in by_metric.items()
        }
        for name, by_metric in diffs.items()
    }, len(family)


def write_report(
    runs: list[Run], out: Path, baseline: str, title: str = "", command: str = ""
) -> list[Group]:
    """Write summary.csv, summary.md and the plots into ``out``; return the groups."""
    from detector.ablation.plots import plot_all

    groups = collect(runs, out)
    stats = {
        g.name: {
            m: mean_std(r["values"].get(m) for r in g.results.values())
            for m in CSV_METRICS + DIAGNOSTICS + LOCALISATION
        }
        for g in groups
    }
    paired, tests = compare(groups, baseline)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "summary.csv", groups, stats, paired, baseline)
    (out / "summary.md").write_text(
        _markdown(groups, stats, paired, tests, baseline, title, command)
    )
    plot_all({g.name: list(g.results.values()) for g in groups if g.results}, out)
    return groups


def _num(value: float | None) -> str:
    return (
        "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"
    )


def _write_csv(path: Path, groups: list[Group], stats, paired, baseline: str) -> None:
    rows = []
    for g in groups:
        for seed, result in sorted(g.results.items()):
            for metric, value in result["values"].items():
                rows.append(
                    {
                        "kind": "run",
                        "config": g.name,
                        "seed": seed,
                        "run": result["run"],
                        "metric": metric,
                        "n": 1,
                        "value": _num(float(value) if defined(value) else None),
                    }
                )
        for run, why in g.unfinished:
            rows.append(
                {
                    "kind": "unfinished",
                    "config": g.name,
                    "seed": run.seed,
                    "run": run.name,
                    "note": why,
                }
            )
        for metric, s in stats[g.name].items():
            rows.append(
                {
                    "kind": "group",
                    "config": g.name,
                    "metric": metric,
                    "n": s.n,
                    "value": _num(s.mean),
                    "std": _num(s.std),
                }
            )
        for metric, d in paired.get(g.name, {}).items():
            rows.append(
                {
                    "kind": "paired",
                    "config": g.name,
                    "metric": metric,
                    "n": d.n,
                    "value": _num(d.mean),
                    "std": _num(d.std),
                    "baseline": baseline,
                    "ci95_low": _num(d.ci_low),
                    "ci95_high": _num(d.ci_high),
                    "p": _num(d.p),
                    "p_holm": _num(d.p_holm),
                    "detectable": _num(d.detectable),
                    "verdict": d.verdict,
                    "note": g.failed,
                }
            )
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _pct(value: float, signed: bool = False) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:{'+' if signed else ''}.1f}"


def _cell(s, scale: float = 100, fmt: str = ".1f", with_std: bool = True) -> str:
    """Mean ± std (AP in percent by default); "n/a" without values."""
    if s.n == 0:
        return "n/a"
    return f"{scale * s.mean:{fmt}}" + (
        "" if math.isnan(s.std) or not with_std else f" ± {scale * s.std:{fmt}}"
    )


_CELL_FORMATS = {
    "loss_box_reg": (1, ".3f"),
    "images_per_s": (1, ".1f", False),
    "eval_time_s": (1, ".0f", False),
}


def _row(cells) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def _table_head(columns: list[str]) -> list[str]:
    return [_row(columns), "|---" * len(columns) + "|"]


def _p(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2g}" if value >= 0.001 else "<0.001"


def _markdown(
    groups: list[Group], stats, paired, tests: int, baseline: str, title: str, command: str
) -> str:
    done = sum(len(g.results) for g in groups)
    planned = sum(g.planned for g in groups)
    lines = [f"# {title or 'Loss ablation'}", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines.append(f"{done} of {planned} runs finished ({len(groups)} configs).")
    if done < planned:
        lines.append(
            f"**This report is partial: {planned - done} run(s) have no results** (listed at the end)."
        )
    columns = [*SUMMARY_METRICS, *DIAGNOSTICS]
    lines += [
        "",
        "## Mean ± std over seeds",
        "",
        "COCO AP in percent (AP90, AP95: at IoU 0.90, 0.95); std over seeds. loss_box_reg: the "
        "mean over the last 10% of logged iterations; images_per_s: training throughput; "
        "eval_time_s: seconds of the final evaluation (inference and scoring). summary.csv holds "
        'every run\'s numbers, as fractions. A failed run is in no mean; "failed k of n seeds" '
        "counts it.",
        "",
        *_table_head(["config", "seeds", *columns]),
    ]
    for g in groups:
        seeds = (
            str(len(g.results))
            if len(g.results) == g.planned
            else f"{len(g.results)} of {g.planned}"
        )
        if not g.results:
            lines.append(_row([g.name, f"{seeds}: **failed**", *["–"] * len(columns)]))
        else:
            lines.append(
                _row(
                    [
                        g.name,
                        seeds + (f"; {g.failed}" if g.failed else ""),
                        *(_cell(stats[g.name][c], *_CELL_FORMATS.get(c, ())) for c in columns),
                    ]
                )
            )
    lines += ["", f"## Paired differences to {baseline}", ""]
    if not next(g for g in groups if g.name == baseline).results:
        lines.append(f"The baseline {baseline} has no finished run: there is nothing to pair with.")
    elif not paired:
        lines.append("No other config has a finished run: there is nothing to compare.")
    else:
        level, alpha, quantile = round(100 * CONFIDENCE), f"{ALPHA:.2g}", (1 + CONFIDENCE) / 2
        lines += [
            f"Per metric, d = config − {baseline} for each seed both finished (AP points): its mean over the n "
            f"pairs and a {level}% Student-t interval over the paired differences, mean ± t({quantile:g}, "
            f"n−1) · sd(d) / √n, uncorrected; p: the two-sided paired t test. **Multiple testing: "
            f"{tests} tests** (the rows with a p value) are Holm-corrected together; the verdict is better or "
            f"worse only when the Holm-adjusted p < {alpha}; too few seeds when n < {MIN_PAIRS} or sd(d) = 0. "
            f"A failed seed of the config blocks better (of the baseline: worse): the survivors are not a fair "
            f"sample. detectable: the smallest true difference found with {POWER:.0%} power at Holm's "
            f"strictest level ({alpha} / the number of tests); with no evidence, smaller ones may exist unseen. "
            f"Metrics undefined on either side (COCO's -1) are left out.",
            "",
            *_table_head(
                [
                    "config",
                    "metric",
                    "pairs",
                    "mean diff",
                    f"{level}% CI",
                    "p",
                    "p (Holm)",
                    "detectable",
                    "verdict",
                ]
            ),
        ]
        for name, by_metric in paired.items():
            for metric, d in by_metric.items():
                if d.n == 0:
                    continue
                ci = (
                    "n/a"
                    if math.isnan(d.ci_low)
                    else f"[{_pct(d.ci_low, True)}, {_pct(d.ci_high, True)}]"
                )
                detectable = "–" if math.isnan(d.detectable) else f"±{_pct(d.detectable)}"
                verdict = f"**{d.verdict}**" if d.verdict in ("better", "worse") else d.verdict
                lines.append(
                    _row(
                        [
                            name,
                            metric,
                            d.n,
                            _pct(d.mean, True),
                            ci,
                            _p(d.p),
                            _p(d.p_holm),
                            detectable,
                            verdict,
                        ]
                    )
                )
    lines += _localisation_markdown(groups, stats)
    moved = {g.name: convergence(list(g.results.values())) for g in groups if g.results}
    if any(moved.values()):
        lines += [
            "",
            "## Convergence",
            "",
            "Mean AP over the seeds at the last evaluation by 3/4 of training and at "
            "the end (ap_curve.png shows every evaluation); the budget has converged where they differ by less "
            "than 1 AP point.",
            "",
            *_table_head(["config", "AP by 3/4", "AP at the end", "change", "converged"]),
        ]
        lines += [
            _row(
                [
                    name,
                    f"{_pct(a)} (iteration {it})",
                    _pct(b),
                    _pct(b - a, True),
                    "yes" if abs(b - a) < 0.01 else "no",
                ]
            )
            for name, m in moved.items()
            if m
            for it, a, b in [m]
        ]
    unfinished = [g for g in groups if g.unfinished]
    if unfinished:
        lines += ["", "## Runs without results", ""]
        for g in unfinished:
            head = (
                "all runs failed: no results"
                if not g.results
                else (g.failed or "not all runs started")
            )
            lines.append(f"- **{g.name}**: {head}")
            lines += [f"  - {run.name}: {why}" for run, why in g.unfinished]
    return "\n".join(lines) + "\n"


def _localisation_markdown(groups: list[Group], stats) -> list[str]:
    lines = ["", "## Localisation of true positives", ""]
    errors = [
        r["localisation_error"]
        for g in groups
        for r in g.results.values()
        if "localisation_error" in r
    ]
    with_tps = [g for g in groups if stats[g.name]["tp_iou_median"].n]
    if not with_tps:
        lines.append(
            "No finished run has eval/detections.json and its val data here: nothing to show."
            + (f" ({errors[0]})" if errors else "")
        )
        return lines
    tide = any(stats[g.name][TIDE_METRIC].n for g in with_tps)
    tide_note = (
        "TIDE Loc: TIDE's localisation-error dAP (tidecv; AP points at IoU 0.5 gained by fixing "
        "detections mislocalised at IoU 0.1 to 0.5; lower is better); Loc@0.75: the same with true "
        "positives at IoU >= 0.75 (errors at 0.1 to 0.75), closer to where box losses differ."
        if tide
        else "TIDE's localisation error is not shown: "
        + (
            "no run gave it."
            if tide_available()
            else 'tidecv is not importable (optional: pip install -e ".[tide]").'
        )
    )
    lines += [
        f"Each detection with score >= {SCORE_THRESHOLD} is matched the COCO way (at IoU >= {MATCH_IOU}); the "
        f"IoUs of these true positives per run, by their median and the share >= 0.75 and >= 0.9, then mean ± "
        f"std over seeds (tp_iou.png: their histogram per config). {tide_note}"
    ]
    if errors:
        lines.append(f"Runs without these numbers: {'; '.join(errors)}.")
    head = ["TPs per run", "median IoU", "IoU ≥ 0.75 (%)", "IoU ≥ 0.9 (%)"] + (
        ["TIDE Loc dAP", "TIDE Loc@0.75 dAP"] if tide else []
    )
    lines += ["", *_table_head(["config", "runs", *head])]
    for g in with_tps:
        s = stats[g.name]
        cells = [
            _cell(s["tp_count"], 1, ".0f"),
            _cell(s["tp_iou_median"], 1, ".3f"),
            _cell(s["tp_iou_ge75"]),
            _cell(s["tp_iou_ge90"]),
        ] + ([_cell(s[m], 1, ".2f") for m in (TIDE_METRIC, TIDE_HIGH_METRIC)] if tide else [])
        lines.append(_row([g.name, s["tp_iou_median"].n, *cells]))
    return lines
