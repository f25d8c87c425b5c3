"""Beta schedules of Dynamic Smooth L1: the Smooth L1 beta as explicit training state.

A schedule is owned by the RoI head (never mutated from outside), updated once per iteration, saved in
checkpoints and logged. Interface: ``.beta`` (float, the beta to use now),
``update(iteration, pos_target_deltas [P,4], num_images) -> beta``, ``state_dict()``, ``load_state_dict()``.
``iteration`` counts from 0; ``pos_target_deltas`` are the encoded (tx, ty, tw, th) regression targets of the
P positive (foreground, label >= 1) RoIs of this iteration's ``num_images`` images on this rank.

- :class:`AdaptiveBeta` (Dynamic R-CNN): each iteration records the k-th smallest of mean(|tx|, |ty|) over the
  positives, k = min(topk * num_images, P); after every ``interval`` iterations beta = min(initial, median of
  the record) and the record is cleared. The old beta is kept when the median is ~0 or no iteration had
  positives; beta never drops below ``min_beta``. Under torch.distributed the per-iteration statistic is
  averaged over the ranks that had positives (all_reduce of (sum, count)), so every rank keeps the same beta.
  The record stays on the device; the only host sync is at the interval boundary.
- Explicit schedules, beta as a function of the iteration over ``total_iters``: :class:`ConstantBeta`,
  :class:`StepBeta` (multiplied by ``gamma`` at each milestone iteration), :class:`LinearBeta`,
  :class:`CosineBeta`, :class:`ExpBeta` (geometric from start to end).
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist

from detector.losses.regression import resolve_beta

__all__ = ["BetaSchedule", "AdaptiveBeta", "ExplicitBetaSchedule", "ConstantBeta", "StepBeta", "LinearBeta",
           "CosineBeta", "ExpBeta", "BETA_SCHEDULES", "build_beta_schedule"]

_MEDIAN_EPS = 1e-8  # a median below this keeps the old beta (Dynamic R-CNN's guard against beta -> 0)


class BetaSchedule:
    """Base class: ``.beta`` plus the update/state interface described in the module docstring."""

    type: str = ""

    def __init__(self, beta: float, min_beta: float):
        if min_beta <= 0:
            raise ValueError(f"{type(self).__name__}: min_beta must be > 0, got {min_beta}")
        self.min_beta = float(min_beta)
        self.beta = max(float(beta), self.min_beta)

    def update(self, iteration: int, pos_target_deltas: torch.Tensor, num_images: int) -> float:
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
    """Dynamic R-CNN's beta: follows the spread of the positives' (tx, ty) regression targets."""

    type = "adaptive"

    def __init__(self, initial_beta: float = 1.0, topk: int = 10, interval: int = 100, min_beta: float = 1e-3):
        super().__init__(initial_beta, min_beta)
        if topk < 1 or interval < 1:
            raise ValueError(f"AdaptiveBeta: topk and interval must be >= 1, got {topk}, {interval}")
        self.initial_beta = float(initial_beta)
        self.topk = int(topk)
        self.interval = int(interval)
        self._history: list[torch.Tensor] = []  # 0-d tensors, NaN where an iteration had no positives

    def _statistic(self, pos_target_deltas: torch.Tensor, num_images: int) -> torch.Tensor:
        """0-d float32 tensor: this iteration's statistic, averaged over ranks; NaN if no rank had positives."""
        num_pos = pos_target_deltas.shape[0]
        if num_pos > 0:
            values = pos_target_deltas[:, :2].float().abs().mean(dim=1)  # [P]
            k = min(self.topk * max(int(num_images), 1), num_pos)
            stat = torch.kthvalue(values, k).values
        else:
            stat = pos_target_deltas.new_zeros((), dtype=torch.float32)
        count = stat.new_tensor(1.0 if num_pos > 0 else 0.0)
        if dist.is_available() and dist.is_initialized():
            packed = torch.stack((stat * count, count))  # [2]: every rank joins, with or without positives
            dist.all_reduce(packed)
            stat, count = packed[0], packed[1]
            stat = stat / count.clamp(min=1)
        return torch.where(count > 0, stat, torch.full_like(stat, math.nan))

    def update(self, iteration: int, pos_target_deltas: torch.Tensor, num_images: int) -> float:
        self._history.append(self._statistic(pos_target_deltas, num_images).detach())
        if (iteration + 1) % self.interval == 0:
            record = [v for v in self._history_values() if not math.isnan(v)]
            self._history = []
            if record:
                median = statistics.median(record)
                if median >= _MEDIAN_EPS:
                    self.beta = max(min(self.initial_beta, median), self.min_beta)
        return self.beta

    def _history_values(self) -> list[float]:
        """The recorded statistics as floats (NaN: no positives); the one host-device sync."""
        if not self._history:
            return []
        device = self._history[-1].device  # a resumed record starts on the CPU
        return torch.stack([h.to(device) for h in self._history]).tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"type": self.type, "beta": self.beta, "history": self._history_values()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._history = [torch.tensor(float(v)) for v in state.get("history", [])]

    def __repr__(self) -> str:
        return (f"AdaptiveBeta(beta={self.beta:.4g}, initial_beta={self.initial_beta}, topk={self.topk}, "
                f"interval={self.interval}, min_beta={self.min_beta})")


class ExplicitBetaSchedule(BetaSchedule):
    """beta = max(min_beta, beta_at(iteration)); the state is only the current beta."""

    def __init__(self, start: float, min_beta: float = 1e-3):
        super().__init__(start, min_beta)
        self.start = float(start)

    def beta_at(self, iteration: int) -> float:
        raise NotImplementedError

    def update(self, iteration: int, pos_target_deltas: torch.Tensor | None = None, num_images: int = 1) -> float:
        self.beta = max(self.beta_at(iteration), self.min_beta)
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


def build_beta_schedule(cfg: Mapping, max_iters: int) -> BetaSchedule | None:
    """The schedule of a ``box_loss`` section, or None unless its loss is ``dynamic_smooth_l1``.

    adaptive starts from the section's beta (or 1/sigma^2); the explicit schedules go from ``schedule.start``
    to ``schedule.end`` over ``max_iters`` (constant stays at ``start``; step multiplies ``start`` by
    ``step_gamma`` at the ``milestones``, fractions of ``max_iters``).
    """
    if cfg.get("name") != "dynamic_smooth_l1":
        return None
    sched = cfg["schedule"]
    kind = sched.get("type", "adaptive")
    min_beta = float(sched.get("min_beta", 1e-3))
    if kind == "adaptive":
        return AdaptiveBeta(initial_beta=resolve_beta(cfg), topk=int(sched.get("topk", 10)),
                            interval=int(sched.get("interval", 100)), min_beta=min_beta)
    start, end = float(sched.get("start", 1.0)), float(sched.get("end", 0.1))
    if kind == "constant":
        return ConstantBeta(start, min_beta=min_beta)
    if kind == "step":
        milestones = [round(f * max_iters) for f in sched.get("milestones", (0.67, 0.89))]
        return StepBeta(start, milestones, gamma=float(sched.get("step_gamma", 0.1)), min_beta=min_beta)
    if kind in ("linear", "cosine", "exp"):
        return BETA_SCHEDULES[kind](start, end, max_iters, min_beta=min_beta)
    raise ValueError(f"unknown beta schedule type {kind!r}; valid types: {', '.join(BETA_SCHEDULES)}")
