"""Beta schedules of Dynamic Smooth L1: the Smooth L1 beta as explicit training state.

A schedule is owned by the RoI head (never mutated from outside), saved in checkpoints and logged. The forward
pass only reads it; the trainer advances it, once per optimizer step, through the head:

- ``.beta`` (float): the beta of the iteration being trained.
- ``step(iteration, statistic=None) -> beta``: after training iteration ``iteration`` (0-based) record its
  statistic (adaptive only) and move ``.beta`` to the value for iteration + 1. This is the only method that
  changes the state, and the only place the state crosses ranks.
- ``state_dict()`` / ``load_state_dict()``: Python numbers and CPU tensors, so a checkpoint written on a GPU loads
  on a CPU and back.

:class:`AdaptiveBeta` is Dynamic R-CNN's beta, with the statistic of either reference implementation
(``statistic: mmdet | official``, see its docstring). The explicit schedules give beta as a function of the
iteration over ``total_iters``: :class:`ConstantBeta`, :class:`StepBeta` (multiplied by ``gamma`` at each milestone
iteration), :class:`LinearBeta`, :class:`CosineBeta`, :class:`ExpBeta` (geometric from start to end).

:class:`IntervalRecord` holds one update interval's per-iteration statistics for the adaptive beta and for the
dynamic label assigner (:mod:`detector.modeling.matcher`): the one home of their cross-rank reduction.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist

from detector.losses.regression import resolve_beta

__all__ = ["BetaSchedule", "AdaptiveBeta", "ExplicitBetaSchedule", "ConstantBeta", "StepBeta", "LinearBeta",
           "CosineBeta", "ExpBeta", "BETA_SCHEDULES", "SCHEDULED_LOSSES", "STATISTIC_CONVENTIONS", "IntervalRecord",
           "build_beta_schedule"]

# Whose Dynamic R-CNN statistics (beta and DLA): open-mmlab/mmdetection's port, or hkzhang95/DynamicRCNN's code.
STATISTIC_CONVENTIONS = ("mmdet", "official")
_MEDIAN_EPS = 1e-15  # mmdetection's EPS: a median below it keeps the old beta (no such guard in the official code)


def check_convention(owner: str, statistic: str) -> str:
    if statistic not in STATISTIC_CONVENTIONS:
        raise ValueError(f"{owner}: statistic must be one of {', '.join(STATISTIC_CONVENTIONS)}, got {statistic!r}")
    return statistic


class IntervalRecord:
    """The per-iteration statistic of one update interval, kept on the statistic's device.

    ``record(iteration, statistic)`` stores a 0-d statistic (NaN: nothing was observed) in slot
    ``iteration % interval``, with no host sync and no collective, and says whether the iteration ends an interval.
    ``collect()`` returns the interval's statistics and clears the record. Under torch.distributed it is the one
    collective: an all_reduce of the ``[2, interval]`` (sum, count) table, which every rank reaches at the same
    iteration (the trainer's), so each iteration's statistic is averaged over the ranks that observed one. That
    gives the numbers of an all_reduce every iteration with one collective and one host sync per interval, and a
    rank's extra forward passes can neither shift the record nor leave a collective unmatched.
    """

    def __init__(self, interval: int):
        if interval < 1:
            raise ValueError(f"IntervalRecord: interval must be >= 1, got {interval}")
        self.interval = int(interval)
        self.table = torch.zeros(2, self.interval)  # [2,C]: statistic (0 where none), 1 where observed

    def record(self, iteration: int, statistic: torch.Tensor) -> bool:
        stat = torch.as_tensor(statistic).detach().float().reshape(())
        if self.table.device != stat.device:
            self.table = self.table.to(stat.device)
        seen = torch.isfinite(stat)
        self.table[:, iteration % self.interval] = torch.stack((torch.where(seen, stat, 0.0), seen.float()))
        return (iteration + 1) % self.interval == 0

    def collect(self) -> list[float]:
        """The interval's statistics in iteration order, each the mean over the ranks that observed it; the
        iterations no rank observed are left out. Every rank must call it at the same iteration."""
        table = self.table.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(table)
        self.table.zero_()
        sums, counts = table.tolist()
        return [s / c for s, c in zip(sums, counts) if c > 0]

    def state_dict(self) -> dict[str, Any]:
        return {"table": self.table.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        table = torch.as_tensor(state["table"], dtype=torch.float32)
        if tuple(table.shape) != (2, self.interval):
            raise ValueError(f"IntervalRecord.load_state_dict: the state records intervals of {table.shape[-1]} "
                             f"iterations, this one {self.interval}; use the interval the checkpoint was trained with")
        self.table = table.clone()


class BetaSchedule:
    """Base class: ``.beta`` plus the step/state interface described in the module docstring."""

    type: str = ""

    def __init__(self, beta: float, min_beta: float):
        if min_beta <= 0:
            raise ValueError(f"{type(self).__name__}: min_beta must be > 0, got {min_beta}")
        self.min_beta = float(min_beta)
        self.beta = max(float(beta), self.min_beta)

    def step(self, iteration: int, statistic: torch.Tensor | None = None) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"type": self.type, "beta": self.beta}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("type") != self.type:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state is of a {state.get('type')!r} "
                             f"schedule, this one is {self.type!r}; use the config the checkpoint was trained with")
        self.beta = float(state["beta"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta={self.beta:.4g})"


class AdaptiveBeta(BetaSchedule):
    """Dynamic R-CNN's beta: follows the spread of the (tx, ty) regression targets.

    Each iteration observes one statistic, the k-th smallest of mean(|tx|, |ty|) over a set of regression targets
    (:meth:`observe`); after every ``interval`` iterations beta = max(min_beta, min(initial_beta, median of the
    interval's statistics)), used from the next iteration on. The two reference implementations differ in the
    set, the median and the guard (``statistic``):

    ``mmdet`` (default), open-mmlab/mmdetection ``mmdet/models/roi_heads/dynamic_roi_head.py``:
    ``DynamicRoIHead.bbox_loss`` (``_bbox_forward_train`` in 2.x) takes the sampled positives' targets
    (``bbox_targets[pos_inds, :2].abs().mean(dim=1)``, the GT boxes added as proposals included when sampled),
    ``k = min(beta_topk * num_imgs, num_pos)`` and ``torch.kthvalue``, and records nothing without positives;
    ``DynamicRoIHead.update_hyperparameters`` sets ``min(initial_beta, np.median(beta_history))`` (the mean of the
    two middle values of an even record) and keeps the old beta when the record is empty or its median is below
    ``EPS = 1e-15``. Defaults from ``configs/dynamic_rcnn/dynamic_rcnn_r50_fpn_1x_coco.py``: ``beta_topk=10``,
    ``update_iter_interval=100``, ``initial_beta=1.0``.

    ``official``, hkzhang95/DynamicRCNN ``models/zhanghongkai/dynamic_rcnn/coco/dynamic_rcnn_r50_fpn_1x/``:
    ``network.py`` ``Network.forward`` ("record the statistics") takes the targets of every proposal before
    sampling (``raw_proposals`` of ``dynamic_rcnn/det_opr/rcnn/proposal_target_opr.py``, with the GT boxes that
    ``dynamic_rcnn/det_opr/rpn/proposal_opr.py`` appends in training), foreground and background alike: a proposal
    below the threshold is encoded against the image's first GT box (``matched_idxs.clamp(min=0)``). Its k is per
    GPU, ``min(KE * IMS_PER_GPU, number of proposals)``, over all the GPU's images at once. ``train.py`` ``main``
    sets ``min(sorted(S_E)[ITERATION_COUNT // 2], WARMUP_BETA)`` (the upper median) with no guard against a zero
    median. Defaults from its ``config.py``: ``KE=10``, ``ITERATION_COUNT=100``, ``WARMUP_BETA=1.0``.

    Ours in both: ``min_beta`` floors beta (neither reference does; a zero beta would give NaN gradients there).
    Neither reference synchronises ranks (each GPU keeps its own beta); here each iteration's statistic is
    averaged over the ranks that observed one (:class:`IntervalRecord`), so every rank trains with the same beta;
    on one process the numbers are the references'. For ``official``, images without GT boxes, which its training
    loop skips, neither contribute proposals nor count in k; the statistic uses this project's box coder (no
    legacy +1 pixel in widths, unlike the official ``BoxCoder``).
    """

    type = "adaptive"

    def __init__(self, initial_beta: float = 1.0, topk: int = 10, interval: int = 100, min_beta: float = 1e-3,
                 statistic: str = "mmdet"):
        super().__init__(initial_beta, min_beta)
        if topk < 1 or interval < 1:
            raise ValueError(f"AdaptiveBeta: topk and interval must be >= 1, got {topk}, {interval}")
        self.initial_beta = float(initial_beta)
        self.topk = int(topk)
        self.interval = int(interval)
        self.statistic = check_convention("AdaptiveBeta", statistic)
        self.record = IntervalRecord(interval)

    def observe(self, target_deltas: torch.Tensor, num_images: int | torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """This iteration's statistic, a 0-d float32 tensor (NaN: no target to measure); changes no state.

        ``target_deltas`` [Q,4] are the (tx, ty, tw, th) targets the convention measures (mmdet: the sampled
        positives; official: every proposal, with ``valid`` [Q] bool marking the real ones), from ``num_images``
        images (an int, or a 0-d tensor so that no host sync is needed). Returns the k-th smallest of
        mean(|tx|, |ty|) with k = min(topk * num_images, number of valid targets).
        """
        values = target_deltas[:, :2].float().abs().mean(dim=1)  # [Q]
        if values.numel() == 0:
            return values.new_full((), math.nan)
        if valid is None:
            count = values.new_tensor(float(values.numel()))
        else:
            values = values.masked_fill(~valid, math.inf)
            count = valid.sum().float()
        k = count.clamp(min=1, max=max(float(num_images * self.topk), 1.0))  # min(k_max, count), >= 1; no H2D copy
        kth = values.sort().values.gather(0, (k.long() - 1).view(1)).squeeze(0)
        return torch.where(count > 0, kth, torch.full_like(kth, math.nan))

    def step(self, iteration: int, statistic: torch.Tensor | None = None) -> float:
        if statistic is None:
            raise ValueError("AdaptiveBeta.step needs the iteration's statistic (the 'beta_statistic' of its "
                             "training forward's stats)")
        if self.record.record(iteration, statistic):
            self.beta = self._next_beta(self.record.collect())
        return self.beta

    def _next_beta(self, record: Sequence[float]) -> float:
        if not record:
            return self.beta
        if self.statistic == "official":
            median = sorted(record)[len(record) // 2]
        else:
            median = statistics.median(record)
            if median < _MEDIAN_EPS:
                return self.beta
        return max(min(self.initial_beta, median), self.min_beta)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "record": self.record.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.record.load_state_dict(state["record"])

    def __repr__(self) -> str:
        return (f"AdaptiveBeta(beta={self.beta:.4g}, initial_beta={self.initial_beta}, topk={self.topk}, "
                f"interval={self.interval}, min_beta={self.min_beta}, statistic={self.statistic!r})")


class ExplicitBetaSchedule(BetaSchedule):
    """Iteration i trains with ``value_at(i) = max(min_beta, beta_at(i))``; the state is only the current beta."""

    def __init__(self, start: float, min_beta: float = 1e-3):
        super().__init__(start, min_beta)
        self.start = float(start)

    def beta_at(self, iteration: int) -> float:
        raise NotImplementedError

    def value_at(self, iteration: int) -> float:
        return max(self.beta_at(iteration), self.min_beta)

    def step(self, iteration: int, statistic: torch.Tensor | None = None) -> float:
        self.beta = self.value_at(iteration + 1)
        return self.beta


class ConstantBeta(ExplicitBetaSchedule):
    type = "constant"

    def beta_at(self, iteration: int) -> float:
        return self.start


class StepBeta(ExplicitBetaSchedule):
    """start * gamma^(number of milestones <= iteration); milestones are iterations."""

    type = "step"

    def __init__(self, start: float, milestones: Sequence[int], gamma: float = 0.1, min_beta: float = 1e-3):
        super().__init__(start, min_beta)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.beta = self.value_at(0)  # a milestone at 0 already applies

    def beta_at(self, iteration: int) -> float:
        return self.start * self.gamma ** sum(iteration >= m for m in self.milestones)


class _AnnealBeta(ExplicitBetaSchedule):
    """From ``start`` at iteration 0 to ``end`` at ``total_iters`` (held after), shape given by ``_shape``."""

    def __init__(self, start: float, end: float, total_iters: int, min_beta: float = 1e-3):
        super().__init__(start, min_beta)
        if total_iters < 1:
            raise ValueError(f"{type(self).__name__}: total_iters must be >= 1, got {total_iters}")
        self.end = float(end)
        self.total_iters = int(total_iters)

    def beta_at(self, iteration: int) -> float:
        t = min(max(iteration, 0), self.total_iters) / self.total_iters
        return self._shape(t)

    def _shape(self, t: float) -> float:
        raise NotImplementedError


class LinearBeta(_AnnealBeta):
    type = "linear"

    def _shape(self, t: float) -> float:
        return self.start + (self.end - self.start) * t


class CosineBeta(_AnnealBeta):
    type = "cosine"

    def _shape(self, t: float) -> float:
        return self.end + 0.5 * (self.start - self.end) * (1 + math.cos(math.pi * t))


class ExpBeta(_AnnealBeta):
    type = "exp"

    def __init__(self, start: float, end: float, total_iters: int, min_beta: float = 1e-3):
        super().__init__(start, end, total_iters, min_beta)
        if self.start <= 0 or self.end <= 0:
            raise ValueError(f"ExpBeta: start and end must be > 0 for a geometric schedule, got {start}, {end}")

    def _shape(self, t: float) -> float:
        return self.start * (self.end / self.start) ** t


BETA_SCHEDULES = {cls.type: cls for cls in (AdaptiveBeta, ConstantBeta, StepBeta, LinearBeta, CosineBeta, ExpBeta)}
SCHEDULED_LOSSES = ("dynamic_smooth_l1",)  # box losses whose beta follows a schedule (owned by the RoI head)


def build_beta_schedule(cfg: Mapping, max_iters: int) -> BetaSchedule | None:
    """The schedule of a ``box_loss`` section, or None unless its loss is ``dynamic_smooth_l1``.

    adaptive starts from the section's beta (or 1/sigma^2), with ``schedule.statistic``'s convention; the explicit
    schedules go from ``schedule.start`` to ``schedule.end`` over ``max_iters`` (constant stays at ``start``; step
    multiplies ``start`` by ``step_gamma`` at the ``milestones``, fractions of ``max_iters``).
    """
    if cfg.get("name") not in SCHEDULED_LOSSES:
        return None
    sched = cfg["schedule"]
    kind = sched.get("type", "adaptive")
    min_beta = float(sched.get("min_beta", 1e-3))
    if kind == "adaptive":
        return AdaptiveBeta(initial_beta=resolve_beta(cfg), topk=int(sched.get("topk", 10)),
                            interval=int(sched.get("interval", 100)), min_beta=min_beta,
                            statistic=sched.get("statistic", "mmdet"))
    start, end = float(sched.get("start", 1.0)), float(sched.get("end", 0.1))
    if kind == "constant":
        return ConstantBeta(start, min_beta=min_beta)
    if kind == "step":
        milestones = [round(f * max_iters) for f in sched.get("milestones", (0.67, 0.89))]
        return StepBeta(start, milestones, gamma=float(sched.get("step_gamma", 0.1)), min_beta=min_beta)
    if kind in ("linear", "cosine", "exp"):
        return BETA_SCHEDULES[kind](start, end, max_iters, min_beta=min_beta)
    raise ValueError(f"unknown beta schedule type {kind!r}; valid types: {', '.join(BETA_SCHEDULES)}")
