"""Beta schedules of Dynamic Smooth L1: the beta as explicit training state, owned by the RoI head.

The forward pass only reads ``.beta``; ``step(iteration, statistic=None)`` (once per optimizer step)
records that iteration's statistic and moves ``.beta`` to iteration + 1's value: the only state
change and cross-rank exchange.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.distributed as dist

from detector.errors import DetectorError, first_line, read_json
from detector.losses.regression import resolve_beta

# Whose Dynamic R-CNN statistics (beta and DLA): open-mmlab/mmdetection's port, or
# hkzhang95/DynamicRCNN's code.
STATISTIC_CONVENTIONS = ("mmdet", "official")
# mmdetection's EPS: a median below it keeps the old beta (no such guard in the official code)
_MEDIAN_EPS = 1e-15


def kth_valid(
    values: torch.Tensor, valid: torch.Tensor, k: int | torch.Tensor, largest: bool = False
) -> torch.Tensor:
    """The k-th smallest (``largest``: largest) of the valid ``values`` in each row ([..., Q] each;
    k an int or a 0-d tensor, capped to 1..count) -> [...] float32, NaN where nothing is valid; no
    host sync."""
    if values.shape[-1] == 0:
        return values.new_full(values.shape[:-1], math.nan, dtype=torch.float32)
    count = valid.sum(dim=-1, keepdim=True)  # [...,1]
    ordered = (
        values.masked_fill(~valid, -math.inf if largest else math.inf)
        .sort(dim=-1, descending=largest)
        .values
    )
    kth = ordered.gather(-1, (count.clamp(max=k).clamp(min=1) - 1).long()).squeeze(-1)
    return torch.where(count.squeeze(-1) > 0, kth, math.nan).float()


class IntervalRecord:
    """The per-iteration statistics (0-d, NaN: nothing observed) of one update interval, on their
    device; ``key`` names the statistic in a training forward's stats.

    ``add`` records one with no host sync; at the interval's end the one collective all_reduces the
    (sum, count) table, so each statistic is the mean over the ranks that observed it.
    """

    def __init__(self, interval: int, key: str):
        self.interval = int(interval)
        self.key = key
        # [2,C]: statistic (0 where none), 1 where observed
        self.table = torch.zeros(2, self.interval)

    def add(self, iteration: int, statistic: torch.Tensor | None) -> list[float]:
        """Record iteration ``iteration``'s statistic -> [] within the interval; at its end, the
        interval's statistics in iteration order (unobserved ones left out), and the record
        cleared. Every rank calls it at every iteration."""
        if statistic is None:
            raise ValueError(
                f"no {self.key!r} for iteration {iteration}: pass the stats of the iteration's "
                "training forward"
            )
        stat = torch.as_tensor(statistic).detach().float().reshape(())
        if self.table.device != stat.device:
            self.table = self.table.to(stat.device)
        seen = torch.isfinite(stat)
        self.table[:, iteration % self.interval] = torch.stack(
            (torch.where(seen, stat, 0.0), seen.float())
        )
        if not self.closes_after(iteration):
            return []
        table = self.table.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(table)
        self.table.zero_()
        sums, counts = table.tolist()
        return [s / c for s, c in zip(sums, counts) if c > 0]

    def closes_after(self, iteration: int) -> bool:
        """Whether iteration ``iteration`` ends an interval: its state updates after it."""
        return (iteration + 1) % self.interval == 0

    def state_dict(self) -> dict[str, Any]:
        return {"table": self.table.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        table = torch.as_tensor(state["table"], dtype=torch.float32)
        if tuple(table.shape) != (2, self.interval):
            raise ValueError(
                f"IntervalRecord.load_state_dict: the state records intervals of {table.shape[-1]} "
                f"iterations, this one {self.interval}; use the interval the "
                "checkpoint was trained with"
            )
        self.table = table.clone()


class BetaSchedule:
    """Base class: ``.beta``, ``step`` (module docstring) and a ``state_dict`` of Python numbers and
    CPU tensors. An explicit schedule gives ``value_at(iteration)``: the beta that iteration trains
    with."""

    type: str
    beta: float

    def value_at(self, iteration: int) -> float:
        raise NotImplementedError

    def step(self, iteration: int, statistic: torch.Tensor | None = None) -> float:
        self.beta = self.value_at(iteration + 1)
        return self.beta

    def state_dict(self) -> dict[str, Any]:
        return {"type": self.type, "beta": self.beta}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("type") != self.type:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: the state is of a {state.get('type')!r} "
                f"schedule, this one is {self.type!r}; use the config the "
                "checkpoint was trained with"
            )
        self.beta = float(state["beta"])


@dataclass(eq=False)
class AdaptiveBeta(BetaSchedule):
    """Dynamic R-CNN's beta: after every ``interval`` iterations beta = max(min_beta,
    min(initial_beta, median of the interval's statistics)), each the k-th smallest mean(|tx|, |ty|)
    of a set of targets (:meth:`observe`). ``mmdet`` (mmdetection's DynamicRoIHead): sampled
    positives, k = min(topk * num_imgs, num_pos), np.median; an empty record or a median < 1e-15
    keeps the old beta. ``official`` (hkzhang95/DynamicRCNN): every proposal of the images with GT
    before sampling (below-threshold ones encoded against the image's first GT), k per GPU, upper
    median sorted(S)[n // 2], no guard. Ours in both: ``min_beta`` floors beta; statistics are
    averaged over ranks.
    """

    type = "adaptive"
    beta: float = field(init=False)
    initial_beta: float = 1.0
    topk: float = 10
    interval: int = 100
    min_beta: float = 1e-3
    statistic: str = "mmdet"

    def __post_init__(self):
        self.initial_beta = float(self.initial_beta)
        self.min_beta = float(self.min_beta)
        self.beta = max(self.initial_beta, self.min_beta)
        self.topk = float(self.topk)
        self.interval = int(self.interval)
        self.record = IntervalRecord(self.interval, "beta_statistic")
        # what the last update computed, for its log record (empty when its interval observed
        # nothing; not checkpointed): the median that set beta and the share of zero statistics
        self.last_update: dict[str, float] = {}

    def observe(
        self,
        target_deltas: torch.Tensor,
        num_images: int | torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """target_deltas [Q,4] (``valid`` [Q] bool) -> 0-d float32 statistic (NaN: no target), k =
        min(round(topk * num_images), valid count) >= 1; ``num_images`` an int or a 0-d tensor. No
        state change, no host sync."""
        values = target_deltas[:, :2].float().abs().mean(dim=1)  # [Q]
        k = num_images * self.topk  # a float, or a 0-d tensor: no host sync either way
        k = k.round() if torch.is_tensor(k) else round(k)
        return kth_valid(
            values, torch.ones_like(values, dtype=torch.bool) if valid is None else valid, k
        )

    def step(self, iteration: int, statistic: torch.Tensor | None = None) -> float:
        record = self.record.add(iteration, statistic)
        if self.record.closes_after(iteration):
            self.last_update = {}
        if record:
            if self.statistic == "official":
                median = sorted(record)[len(record) // 2]
            else:
                median = statistics.median(record)
            zero_share = sum(s < _MEDIAN_EPS for s in record) / len(record)
            self.last_update = {"beta_median": median, "beta_zero_share": zero_share}
            # mmdetection's guard; the official code has none
            if self.statistic == "official" or median >= _MEDIAN_EPS:
                self.beta = max(min(self.initial_beta, median), self.min_beta)
        return self.beta

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "record": self.record.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.record.load_state_dict(state["record"])


# beta of each explicit schedule from its start/end at the training fraction t in [0, 1], k
# milestones passed
BETA_SCHEDULES: dict[str, Callable[..., float] | None] = {
    "adaptive": None,  # AdaptiveBeta: measured, not a function of t
    "replay": None,  # ReplayedBeta: a recorded trajectory, by iteration
    "constant": lambda start, end, t, k, gamma: start,
    "step": lambda start, end, t, k, gamma: start * gamma**k,
    "linear": lambda start, end, t, k, gamma: start + (end - start) * t,
    "cosine": lambda start, end, t, k, gamma: (
        end + 0.5 * (start - end) * (1 + math.cos(math.pi * t))
    ),
    "exp": lambda start, end, t, k, gamma: start * (end / start) ** t,  # geometric; start, end > 0
}
# box losses whose beta follows a schedule (owned by the RoI head)
SCHEDULED_LOSSES = ("dynamic_smooth_l1",)


@dataclass(eq=False)
class ScheduledBeta(BetaSchedule):
    """An explicit schedule: iteration i trains with max(min_beta, BETA_SCHEDULES[type](start, end,
    t, k, gamma)), t = i / total_iters (held at 1 after), k the number of ``milestones``
    (iterations) <= i; the state is the beta (a float)."""

    type: str
    start: float
    end: float
    total_iters: int
    milestones: Sequence[int] = ()
    gamma: float = 0.1
    min_beta: float = 1e-3
    beta: float = field(init=False)

    def __post_init__(self):
        self.milestones = sorted(int(m) for m in self.milestones)
        # a milestone at 0 already applies
        self.beta = self.value_at(0)

    def value_at(self, iteration: int) -> float:
        t = min(max(iteration, 0), self.total_iters) / self.total_iters
        passed = sum(iteration >= m for m in self.milestones)
        beta = BETA_SCHEDULES[self.type](self.start, self.end, t, passed, self.gamma)
        return float(max(beta, self.min_beta))


@dataclass(eq=False)
class ReplayedBeta(BetaSchedule):
    """A recorded beta trajectory as an explicit schedule (the control that separates Dynamic
    R-CNN's feedback from the shape of its beta curve): the beta logged at step ``iters[j]``, the
    one iteration ``iters[j] - 1`` trained with, holds for every iteration since the previous logged
    step; past the last, the last (floored at ``min_beta``). Exact for a recorded adaptive run (its
    ``metrics.jsonl`` holds the beta of every update and of its last step), else when its log
    period divides the schedule's changes."""

    type = "replay"
    iters: Sequence[int]
    betas: Sequence[float]
    min_beta: float = 1e-3
    beta: float = field(init=False)

    def __post_init__(self):
        self.beta = self.value_at(0)

    def value_at(self, iteration: int) -> float:
        # the first logged step after the iteration
        j = min(bisect.bisect_right(self.iters, iteration), len(self.iters) - 1)
        return float(max(self.betas[j], self.min_beta))


def dynamic_records(records: list[dict[str, Any]], key: str | None = None) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` that hold Dynamic's state. Without ``key``: its "dynamic"
    records, one per update, else its logged training steps (a run logged before 2026-12-07). With
    ``key`` (``"beta"``): the trajectory, every record that holds it by iteration (an update's where
    both; each holds the value iteration ``iter`` - 1 trained with): an adaptive beta's updates, a
    fixed schedule's or a replay's beta at the log steps, the last iteration's at the last step (an
    update after the last iteration trains nothing and is not in it), a run resumed across
    2026-12-07 whole."""
    updates = [r for r in records if r.get("type") == "dynamic"]
    if key is None:
        return updates or [r for r in records if r.get("type") == "train"]
    by_iter = {r["iter"]: r for r in records if r.get("type") == "train" and key in r}
    by_iter.update({r["iter"]: r for r in updates if key in r})
    return [by_iter[i] for i in sorted(by_iter)]


def read_beta_trajectory(path: str) -> tuple[list[int], list[float]]:
    """The logged (step, beta) pairs, by step, of a run (its folder or ``metrics.jsonl``: its beta
    trajectory, :func:`dynamic_records`) or of a report's
    ``beta.csv`` (one config: the mean over its runs at each step); a :class:`DetectorError` names
    the file and what is wrong."""
    key = "model.roi_head.box_loss.schedule.file"
    where = f"{key} {path}"
    file = Path(path) / "metrics.jsonl" if Path(path).is_dir() else Path(path)
    fix = f"{key}: give a run folder, its metrics.jsonl or a report's beta.csv"
    if file.suffix == ".csv":
        try:
            # utf-8-sig: a byte-order mark (a spreadsheet's save) is no part of the first column
            text = file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise DetectorError(f"{file}: cannot be read ({first_line(exc)}); {fix}") from None
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
        # a short row has None values, a long one a None key
        torn = next((i for i, r in enumerate(rows, 2) if None in r or None in r.values()), 0)
        if torn:
            raise DetectorError(
                f"{where}: line {torn} does not have the header's {len(reader.fieldnames)} "
                f"fields (a torn or edited file); {fix}"
            )
    else:
        rows = read_json(file, DetectorError, fix, lines=True)
    by_step: dict[int, list[float]] = {}
    try:
        if file.suffix != ".csv":
            rows = dynamic_records(rows, "beta")
        for r in rows:
            if r.get("beta") not in (None, ""):
                by_step.setdefault(int(r["iter"]), []).append(float(r["beta"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DetectorError(f"{where}: not a log of beta ({first_line(exc)})") from None
    configs = sorted({r.get("config") or "" for r in rows})
    if len(configs) > 1:
        raise DetectorError(
            f"{where}: holds the beta of configs {', '.join(configs)}; a replay takes one: keep "
            "only its rows"
        )
    betas = [b for values in by_step.values() for b in values]
    if not betas or not all(math.isfinite(b) and b >= 0 for b in betas):
        raise DetectorError(
            f"{where}: no beta logged, or one not finite and >= 0; give the log of a run whose "
            "box loss has a beta (dynamic_smooth_l1)"
        )
    steps = sorted(by_step)
    return steps, [statistics.fmean(by_step[s]) for s in steps]


def build_beta_schedule(roi_cfg: Mapping, max_iters: int) -> BetaSchedule | None:
    """The beta schedule of a ``model.roi_head`` section, or None unless its box loss is scheduled;
    adaptive's k is scaled by ``batch_size_per_image / reference_rois`` when set (Dynamic R-CNN's k
    = 10 is for 512 RoIs)."""
    cfg = roi_cfg["box_loss"]
    if cfg["name"] not in SCHEDULED_LOSSES:
        return None
    sched = cfg["schedule"]
    if sched["type"] == "replay":
        return ReplayedBeta(*read_beta_trajectory(sched["file"]), min_beta=sched["min_beta"])
    if sched["type"] == "adaptive":
        reference = sched["reference_rois"]
        topk = sched["topk"] * (roi_cfg["batch_size_per_image"] / reference if reference else 1)
        return AdaptiveBeta(
            initial_beta=resolve_beta(cfg),
            topk=topk,
            interval=sched["interval"],
            min_beta=sched["min_beta"],
            statistic=sched["statistic"],
        )
    return ScheduledBeta(
        sched["type"],
        sched["start"],
        sched["end"],
        max_iters,
        milestones=[round(f * max_iters) for f in sched["milestones"]],
        gamma=sched["step_gamma"],
        min_beta=sched["min_beta"],
    )
