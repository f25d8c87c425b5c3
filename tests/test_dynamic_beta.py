"""Beta schedules of Dynamic Smooth L1: hand-computed adaptive updates, explicit curves, state, DDP averaging."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from detector.config import load_config
from detector.losses import (AdaptiveBeta, ConstantBeta, CosineBeta, ExpBeta, LinearBeta, StepBeta, build_beta_schedule,
                             build_box_loss)

NO_POSITIVES = torch.zeros(0, 4)


def targets(txty) -> torch.Tensor:
    """[P,4] deltas with the given (tx, ty) and large tw, th (which the adaptive statistic must ignore)."""
    txty = torch.tensor(txty, dtype=torch.float32).view(-1, 2)
    return torch.cat((txty, torch.full_like(txty, 50.0)), dim=1)


def roi_box_loss(*overrides):
    return load_config([], ["model.roi_head.box_loss.name=dynamic_smooth_l1", *overrides]).model.roi_head.box_loss


def test_adaptive_hand_computed():
    sched = AdaptiveBeta(initial_beta=1.0, topk=1, interval=3, min_beta=1e-3)
    # iteration 0: mean(|tx|,|ty|) = [0.3, 1.0, 0.1]; k = min(1 * 2 images, 3) = 2 -> 0.3
    assert sched.update(0, targets([[0.2, -0.4], [1.0, 1.0], [-0.1, 0.1]]), num_images=2) == 1.0
    assert sched.update(1, NO_POSITIVES, num_images=2) == 1.0  # nothing recorded
    # iteration 2: one positive, k = min(2, 1) = 1 -> 0.4; update: median(0.3, 0.4) = 0.35
    assert sched.update(2, targets([[0.5, 0.3]]), num_images=2) == pytest.approx(0.35)
    for it in range(3, 6):  # a whole interval without positives keeps beta
        assert sched.update(it, NO_POSITIVES, num_images=2) == pytest.approx(0.35)
    for it in range(6, 9):  # a ~0 median keeps beta
        assert sched.update(it, targets([[0.0, 0.0]] * 4), num_images=1) == pytest.approx(0.35)
    for it in range(9, 12):  # beta never exceeds the initial beta
        beta = sched.update(it, targets([[3.0, 5.0]]), num_images=1)
    assert beta == 1.0
    for it in range(12, 15):  # nor drops below min_beta
        beta = sched.update(it, targets([[1e-5, 1e-5]]), num_images=1)
    assert beta == 1e-3


def test_adaptive_median_of_even_history_and_topk():
    sched = AdaptiveBeta(initial_beta=2.0, topk=2, interval=4)
    values = (0.5, 0.1, 0.9, 0.3, 0.7)  # rows with |tx| = |ty| = value
    for it in range(4):  # one image, P = 2..5 positives, k = min(2, P) = 2: the 2nd smallest of the first P
        beta = sched.update(it, targets([[v, -v] for v in values[: it + 2]]), num_images=1)
    assert beta == pytest.approx(0.4)  # median of [0.5, 0.5, 0.3, 0.3]: the mean of the middle two


def test_explicit_schedules():
    start, end, total = 1.0, 0.1, 100
    assert ConstantBeta(0.4).update(77) == 0.4
    linear, cosine, exp = LinearBeta(start, end, total), CosineBeta(start, end, total), ExpBeta(start, end, total)
    assert [linear.update(i) for i in (0, 50, 100, 300)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    assert [cosine.update(i) for i in (0, 50, 100)] == pytest.approx([1.0, 0.55, 0.1])
    assert cosine.update(25) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert [exp.update(i) for i in (0, 50, 100)] == pytest.approx([1.0, math.sqrt(0.1), 0.1])
    step = StepBeta(start, milestones=[50, 80], gamma=0.1)
    assert [step.update(i) for i in (0, 49, 50, 79, 80)] == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])
    floored = StepBeta(start, milestones=[50, 80], gamma=0.1, min_beta=0.05)
    assert floored.update(90) == 0.05 and floored.beta == 0.05
    with pytest.raises(ValueError, match="start and end must be > 0"):
        ExpBeta(1.0, 0.0, 10)


def test_build_beta_schedule_from_config():
    assert build_beta_schedule(load_config([]).model.roi_head.box_loss, 100) is None  # plain smooth_l1
    assert build_beta_schedule(load_config([]).model.rpn.box_loss, 100) is None  # no schedule section
    adaptive = build_beta_schedule(roi_box_loss("model.roi_head.box_loss.sigma=2"), 100)
    assert isinstance(adaptive, AdaptiveBeta) and adaptive.initial_beta == 0.25 and adaptive.beta == 0.25
    assert (adaptive.topk, adaptive.interval, adaptive.min_beta) == (10, 100, 1e-3)
    step = build_beta_schedule(roi_box_loss("model.roi_head.box_loss.schedule.type=step"), 1000)
    assert isinstance(step, StepBeta) and step.milestones == [670, 890] and step.gamma == 0.1
    for kind, cls in (("constant", ConstantBeta), ("linear", LinearBeta), ("cosine", CosineBeta), ("exp", ExpBeta)):
        sched = build_beta_schedule(roi_box_loss(f"model.roi_head.box_loss.schedule.type={kind}"), 1000)
        assert isinstance(sched, cls) and sched.beta == 1.0
        assert sched.update(1000, NO_POSITIVES, 1) == pytest.approx(1.0 if kind == "constant" else 0.1)


def test_dynamic_smooth_l1_with_constant_schedule_is_smooth_l1():
    cfg = roi_box_loss("model.roi_head.box_loss.schedule.type=constant", "model.roi_head.box_loss.schedule.start=0.5")
    loss, sched = build_box_loss(cfg), build_beta_schedule(cfg, 100)
    pred, target = torch.randn(20, 4), torch.randn(20, 4)
    for it in range(3):
        beta = sched.update(it, target, num_images=2)
        value = loss(pred, target, avg_factor=20, beta=beta)
        torch.testing.assert_close(value, F.smooth_l1_loss(pred, target, reduction="sum", beta=0.5) / 20)


def test_state_dict_round_trip():
    a, b = AdaptiveBeta(topk=1, interval=3), AdaptiveBeta(topk=1, interval=3)
    for it in range(5):  # one update at iteration 2, two values pending
        a.update(it, targets([[0.1 * (it + 1), 0.1 * (it + 1)]]), num_images=1)
    b.load_state_dict(a.state_dict())
    assert b.beta == a.beta and b.state_dict() == a.state_dict()
    last = targets([[0.9, 0.9]])
    assert a.update(5, last, 1) == b.update(5, last, 1) == pytest.approx(0.5)  # median(0.4, 0.5, 0.9)
    cos, cos2 = CosineBeta(1.0, 0.1, 10), CosineBeta(1.0, 0.1, 10)
    cos.update(4)
    cos2.load_state_dict(cos.state_dict())
    assert cos2.beta == cos.beta
    with pytest.raises(ValueError, match="'cosine' schedule, this one is 'adaptive'"):
        AdaptiveBeta().load_state_dict(cos.state_dict())


def _ddp_worker(rank: int, world_size: int, init_file: str, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        sched = AdaptiveBeta(topk=1, interval=2)
        # iteration 0: rank 0 sees 0.2, rank 1 sees 0.6 -> 0.4; iteration 1: only rank 1 has positives (0.5)
        per_rank = {0: [targets([[0.2, 0.2]]), NO_POSITIVES], 1: [targets([[0.6, 0.6]]), targets([[0.5, 0.5]])]}
        for it in range(2):
            beta = sched.update(it, per_rank[rank][it], num_images=1)
        results[rank] = beta
    finally:
        dist.destroy_process_group()


def test_adaptive_beta_is_averaged_over_ranks(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    assert results[0] == results[1] == pytest.approx(0.45)  # median(0.4, 0.5)
