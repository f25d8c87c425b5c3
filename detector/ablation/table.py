"""What an ablation report says about each run: one row per statistic (:data:`STATS`).

A row names the statistic (its ``metric`` in summary.csv), reads it from a run's record (the dict of
:func:`detector.ablation.report.read_run`: ``metrics`` is ``eval/metrics.json``, ``log`` the
records of ``metrics.jsonl`` and ``train`` its training steps, ``record`` the ``record.json``),
says how summary.md shows it and whether its paired difference to the baseline is taken. Adding a
statistic is adding a row: the report's tables, summary.csv and the comparisons follow.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable

from detector.ablation.localisation import TIDE_HIGH_METRIC, TIDE_METRIC, summarise
from detector.evaluation.coco import COCO_METRIC_NAMES, IOU_THRESHOLDS
from detector.evaluation.voc import VOC_METRIC_NAMES

Reader = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class Stat:
    name: str
    read: Reader  # run -> a number, or None where the run has none
    # the summary.md table showing it: summary, localisation or sampling; None: summary.csv only
    table: str | None = None
    label: str = ""  # its column header in summary.md (default: the name)
    fmt: str = ".1f"  # summary.md shows mean ± std of scale · value in this format
    scale: float = 1  # 100: a fraction shown as percent (AP)
    with_std: bool = True
    optional: bool = False  # a column only when some run has it
    compared: bool = False  # paired differences to the baseline, a higher value being better


def metric(name: str, default: Reader | None = None) -> Reader:
    """``eval/metrics.json``'s value of ``name`` (else ``default(run)``)."""
    return lambda run: run["metrics"].get(name, default(run) if default else None)


def ap_at(index: int) -> Reader:
    """The AP at ``IOU_THRESHOLDS[index]`` (from ``AP_per_iou``)."""
    return lambda run: (run["metrics"].get("AP_per_iou") or [None] * (index + 1))[index]


def train_mean(
    key: str, tail: float = 1.0, skip_first: bool = False, series: str = "train"
) -> Reader:
    """The mean of ``key`` over the last ``tail`` of the logged training steps (``"dynamic"``: of
    Dynamic's feedback updates where the run logged them)."""

    def read(run):
        train = run[series]
        if skip_first and len(train) > 1:  # the first window includes start-up
            train = train[1:]
        values = [
            r[key] for r in train[-max(1, int(len(train) * tail)) :] if r.get(key) is not None
        ]
        return statistics.fmean(values) if values else None

    return read


def train_last(key: str, series: str = "train") -> Reader:
    """The last logged training step's ``key`` (``"beta_log"``: the last of the run's beta
    trajectory, :func:`detector.losses.dynamic.dynamic_records`)."""

    def read(run):
        values = [r[key] for r in run[series] if r.get(key) is not None]
        return values[-1] if values else None

    return read


def tp_iou(name: str) -> Reader:
    """A :func:`detector.ablation.localisation.summarise` value of the run's true-positive IoUs."""
    return lambda run: None if run["tp_ious"] is None else summarise(run["tp_ious"])[name]


def recorded(section: str, name: str) -> Reader:
    """``record.json``'s ``section[name]`` (``tide``, ``label_noise``)."""
    return lambda run: (run["record"].get(section) or {}).get(name)


PER_IOU_NAMES = tuple(f"AP{round(t * 100)}" for t in IOU_THRESHOLDS)
# compared: AP, COCO's AP slices and AP at IoU >= 0.9, where box losses separate
COMPARED = ("AP", "AP50", "AP75", "AP90", "AP95", "APs", "APm", "APl")
_SCORES = dict.fromkeys(
    (COCO_METRIC_NAMES[0], *PER_IOU_NAMES, *COCO_METRIC_NAMES, *VOC_METRIC_NAMES)
)
_AP_AT = {name: ap_at(i) for i, name in enumerate(PER_IOU_NAMES)}

STATS: list[Stat] = [
    *(
        Stat(
            name,
            metric(name, _AP_AT.get(name)),
            "summary" if name in COMPARED else None,
            scale=100,
            compared=name in COMPARED,
        )
        for name in _SCORES
    ),
    Stat("loss_box_reg", train_mean("loss_box_reg", tail=0.1), "summary", fmt=".3f"),
    Stat("images_per_s", train_mean("images_per_s", skip_first=True), "summary", with_std=False),
    Stat("eval_time_s", metric("eval_time_s"), "summary", fmt=".0f", with_std=False, optional=True),
    *(
        Stat(name, recorded("label_noise", key), "summary", label, scale=100, optional=True)
        for name, key, label in (
            ("label_noise", "nominal", "noise (%)"),
            ("label_noise_realised", "realised", "noise realised (%)"),
        )
    ),
    Stat("tp_count", tp_iou("tp_count"), "localisation", "TPs per run", ".0f"),
    Stat("tp_iou_median", tp_iou("tp_iou_median"), "localisation", "median IoU", ".3f"),
    Stat("tp_iou_ge75", tp_iou("tp_iou_ge75"), "localisation", "IoU ≥ 0.75 (%)", scale=100),
    Stat("tp_iou_ge90", tp_iou("tp_iou_ge90"), "localisation", "IoU ≥ 0.9 (%)", scale=100),
    # the sampler's statistics: means over Dynamic's feedback updates, else over the log steps
    Stat(
        "num_pos_per_image",
        train_mean("num_pos_per_image", series="dynamic"),
        "sampling",
        "positives per image",
    ),
    Stat(
        "num_zero_target_per_image",
        train_mean("num_zero_target_per_image", series="dynamic"),
        "sampling",
        "of them zero targets (GT)",
        optional=True,
    ),
    Stat(
        "beta_zero_share",
        train_mean("beta_zero_share", series="dynamic"),
        "sampling",
        "zero statistics per update (%)",
        scale=100,
        optional=True,
    ),
    Stat("beta_final", train_last("beta", "beta_log"), "sampling", "final β", ".3f", optional=True),
    *(
        Stat(name, recorded("tide", name), "localisation", label, ".2f", optional=True)
        for name, label in ((TIDE_METRIC, "TIDE Loc dAP"), (TIDE_HIGH_METRIC, "TIDE Loc@0.75 dAP"))
    ),
]
