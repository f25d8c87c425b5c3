"""Beta schedules of Dynamic Smooth L1: hand-computed adaptive updates in both reference conventions
(mmdetection's and the official code's), explicit curves (the beta each iteration trains with),
state and the interval record. Two ranks in step: tests/test_dynamic_state.py."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from detector.config import ConfigError, load_config
from detector.errors import DetectorError
from detector.losses.dynamic import (
    AdaptiveBeta,
    IntervalRecord,
    ReplayedBeta,
    ScheduledBeta,
    build_beta_schedule,
    dynamic_records,
    read_beta_trajectory,
)
from detector.losses.regression import build_box_loss

NO_TARGETS = torch.zeros(0, 4)


def targets(txty) -> torch.Tensor:
    """[P,4] deltas with the given (tx, ty) and large tw, th (which the adaptive statistic must
    ignore)."""
    txty = torch.tensor(txty, dtype=torch.float32).view(-1, 2)
    return torch.cat((txty, torch.full_like(txty, 50.0)), dim=1)


def roi_head(*overrides):
    return load_config(
        [], ["model.roi_head.box_loss.name=dynamic_smooth_l1", *overrides]
    ).model.roi_head


FILE = "model.roi_head.box_loss.schedule.file"


def roi_box_loss(*overrides):
    return roi_head(*overrides).box_loss


def train(schedule, iterations) -> list[float]:
    """The beta each iteration trains with, advancing the schedule as the trainer does: read
    ``.beta`` in the forward, observe the iteration's targets, ``step`` after the optimizer step.
    ``iterations``: (targets, images)."""
    used = []
    for it, (deltas, num_images) in enumerate(iterations):
        used.append(schedule.beta)
        statistic = (
            schedule.observe(deltas, num_images) if isinstance(schedule, AdaptiveBeta) else None
        )
        schedule.step(it, statistic)
    return used


# 15 iterations, interval 3, topk 1. Iteration 0: mean(|tx|,|ty|) = [0.3, 1.0, 0.1], k = min(1 * 2
# images, 3) = 2 -> 0.3; iteration 1: no targets; iteration 2: k = min(2, 1) = 1 -> 0.4. Then an
# interval without targets, one of zeros, one above the initial beta and one below min_beta.
HAND = (
    [
        (targets([[0.2, -0.4], [1.0, 1.0], [-0.1, 0.1]]), 2),
        (NO_TARGETS, 2),
        (targets([[0.5, 0.3]]), 2),
    ]
    + [(NO_TARGETS, 2)] * 3
    + [(targets([[0.0, 0.0]] * 4), 1)] * 3
    + [(targets([[3.0, 5.0]]), 1)] * 3
    + [(targets([[1e-5, 1e-5]]), 1)] * 3
)


def test_adaptive_mmdet_hand_computed():
    sched = AdaptiveBeta(initial_beta=1.0, topk=1, interval=3, min_beta=1e-3, statistic="mmdet")
    used = train(sched, HAND)
    # np.median(0.3, 0.4) = 0.35 from iteration 3 (the interval that measured it trains with the old
    # beta); an empty interval and a zero median keep it (mmdetection's guard); 3.0 is capped at the
    # initial beta
    assert used == pytest.approx([1.0] * 3 + [0.35] * 9 + [1.0] * 3)
    assert sched.beta == 1e-3  # 1e-5 is floored at min_beta


def test_adaptive_official_hand_computed():
    sched = AdaptiveBeta(initial_beta=1.0, topk=1, interval=3, min_beta=1e-3, statistic="official")
    used = train(sched, HAND)
    # sorted([0.3, 0.4])[2 // 2] = 0.4 (the upper median); an empty interval keeps it; a zero median
    # is taken (the official code has no guard), floored at min_beta
    assert used == pytest.approx([1.0] * 3 + [0.4] * 6 + [1e-3] * 3 + [1.0] * 3)
    assert sched.beta == 1e-3


def test_each_update_keeps_its_median_and_its_share_of_zero_statistics():
    """The HAND intervals: [0.3, -, 0.4], nothing, [0, 0, 0], [4, 4, 4], [1e-5] x 3: what each
    update computed, for its own log record (an interval that observed nothing computed nothing)."""
    sched = AdaptiveBeta(initial_beta=1.0, topk=1, interval=3, statistic="mmdet")
    updates = []
    for it, (deltas, num_images) in enumerate(HAND):
        sched.step(it, sched.observe(deltas, num_images))
        if it % 3 == 2:
            updates.append(sched.last_update)
    approx = pytest.approx
    assert updates == [
        {"beta_median": approx(0.35), "beta_zero_share": 0.0},
        {},
        {"beta_median": 0.0, "beta_zero_share": 1.0},
        {"beta_median": approx(4.0), "beta_zero_share": 0.0},
        {"beta_median": approx(1e-5), "beta_zero_share": 0.0},
    ]


@pytest.mark.parametrize("statistic,expected", [("mmdet", 0.4), ("official", 0.5)])
def test_median_of_an_even_record(statistic, expected):
    sched = AdaptiveBeta(initial_beta=2.0, topk=2, interval=4, statistic=statistic)
    values = (0.5, 0.1, 0.9, 0.3, 0.7)  # rows with |tx| = |ty| = value
    # one image, 2..5 targets, k = min(2, P) = 2: the 2nd smallest of the first P -> [0.5, 0.5, 0.3,
    # 0.3]
    used = train(sched, [(targets([[v, -v] for v in values[: it + 2]]), 1) for it in range(4)])
    assert used == [2.0] * 4
    # mmdet: np.median, the mean of 0.3 and 0.5; official: sorted[2]
    assert sched.beta == pytest.approx(expected)


def test_observe_takes_the_kth_smallest_of_the_valid_targets():
    sched = AdaptiveBeta(topk=1)
    # 0.4 0.1 0.9 0.2 0.05
    deltas = targets([[0.4, -0.4], [0.1, 0.1], [0.9, -0.9], [0.0, 0.4], [0.05, 0.05]])
    valid = torch.tensor([True, True, True, True, False])
    assert float(sched.observe(deltas, 2)) == pytest.approx(0.1)  # k = 2 of all five
    # 0.05 is padding
    assert float(sched.observe(deltas, torch.tensor(2), valid=valid)) == pytest.approx(0.2)
    # k = min(10, 4 valid)
    assert float(sched.observe(deltas, 10, valid=valid)) == pytest.approx(0.9)
    assert math.isnan(float(sched.observe(NO_TARGETS, 2)))
    assert math.isnan(float(sched.observe(deltas, 2, valid=torch.zeros(5, dtype=torch.bool))))
    before = sched.state_dict()
    sched.observe(deltas, 2)
    # observing changes nothing
    assert sched.state_dict()["record"]["table"].equal(before["record"]["table"])


def test_explicit_schedules_give_each_iteration_its_beta():
    # what iteration trains with: the initial beta, or after step(i - 1)
    def beta_during(schedule, iteration):
        if iteration:
            schedule.step(iteration - 1)
        return schedule.beta

    start, end, total = 1.0, 0.1, 100
    assert beta_during(ScheduledBeta("constant", 0.4, end, total), 77) == 0.4
    linear, cosine, exp = (
        ScheduledBeta(kind, start, end, total) for kind in ("linear", "cosine", "exp")
    )
    assert [beta_during(linear, i) for i in (0, 50, 100, 300)] == pytest.approx(
        [1.0, 0.55, 0.1, 0.1]
    )
    assert [beta_during(cosine, i) for i in (0, 50, 100)] == pytest.approx([1.0, 0.55, 0.1])
    assert beta_during(cosine, 25) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert [beta_during(exp, i) for i in (0, 50, 100)] == pytest.approx([1.0, math.sqrt(0.1), 0.1])
    step = ScheduledBeta("step", start, end, total, milestones=[50, 80], gamma=0.1)
    assert [beta_during(step, i) for i in (0, 49, 50, 79, 80)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01]
    )
    # applies from the start
    assert ScheduledBeta("step", start, end, total, milestones=[0], gamma=0.5).beta == 0.5
    floored = ScheduledBeta(
        "step", start, end, total, milestones=[50, 80], gamma=0.1, min_beta=0.05
    )
    assert floored.step(89) == 0.05 and floored.beta == 0.05
    cosine = ScheduledBeta("cosine", start, end, total)
    assert train(cosine, [(None, 1)] * 3) == pytest.approx([cosine.value_at(i) for i in range(3)])
    with pytest.raises(ConfigError, match="type=exp is geometric; start .* must be > 0"):
        roi_box_loss(
            "model.roi_head.box_loss.schedule.type=exp", "model.roi_head.box_loss.schedule.end=0"
        )


def test_build_beta_schedule_from_config():
    assert build_beta_schedule(load_config([]).model.roi_head, 100) is None  # plain smooth_l1
    adaptive = build_beta_schedule(roi_head("model.roi_head.box_loss.sigma=2"), 100)
    assert (
        isinstance(adaptive, AdaptiveBeta)
        and adaptive.initial_beta == 0.25
        and adaptive.beta == 0.25
    )
    assert (adaptive.topk, adaptive.interval, adaptive.min_beta, adaptive.statistic) == (
        10,
        100,
        1e-3,
        "mmdet",
    )
    official = build_beta_schedule(
        roi_head("model.roi_head.box_loss.schedule.statistic=official"), 100
    )
    assert official.statistic == "official"
    with pytest.raises(ConfigError, match="statistic"):
        roi_box_loss("model.roi_head.box_loss.schedule.statistic=paper")
    step = build_beta_schedule(roi_head("model.roi_head.box_loss.schedule.type=step"), 1000)
    assert step.type == "step" and step.milestones == [670, 890] and step.gamma == 0.1
    for kind in ("constant", "linear", "cosine", "exp"):
        sched = build_beta_schedule(roi_head(f"model.roi_head.box_loss.schedule.type={kind}"), 1000)
        assert isinstance(sched, ScheduledBeta) and sched.type == kind and sched.beta == 1.0
        # the beta of iteration 1000
        assert sched.step(999) == pytest.approx(1.0 if kind == "constant" else 0.1)


def test_topk_scaled_to_the_sampled_roi_budget():
    """Dynamic R-CNN's k = 10 per image is for 512 sampled RoIs; reference_rois=512 keeps that
    operating point (the same quantile of the positives) at another budget: 10 * 128 / 512 = 2.5 per
    image, so 10 of 4 images."""
    sched = build_beta_schedule(
        roi_head(
            "model.roi_head.batch_size_per_image=128",
            "model.roi_head.box_loss.schedule.reference_rois=512",
        ),
        100,
    )
    assert sched.topk == 2.5
    deltas = targets([[0.1 * i, 0.1 * i] for i in range(1, 31)])  # statistics 0.1 .. 3.0
    # k = round(2.5 * 4) = 10 -> the 10th smallest
    assert float(sched.observe(deltas, 4)) == pytest.approx(1.0)
    # k = round(2.5) = 2 (round half to even)
    assert float(sched.observe(deltas, 1)) == pytest.approx(0.2)
    unscaled = build_beta_schedule(roi_head("model.roi_head.batch_size_per_image=128"), 100)
    # k = 30 of 30
    assert unscaled.topk == 10 and float(unscaled.observe(deltas, 4)) == pytest.approx(3.0)
    with pytest.raises(ConfigError, match="reference_rois"):
        roi_head("model.roi_head.box_loss.schedule.reference_rois=0")


def test_dynamic_smooth_l1_with_constant_schedule_is_smooth_l1():
    cfg = roi_head(
        "model.roi_head.box_loss.schedule.type=constant",
        "model.roi_head.box_loss.schedule.start=0.5",
    )
    loss, sched = build_box_loss(cfg.box_loss), build_beta_schedule(cfg, 100)
    pred, target = torch.randn(20, 4), torch.randn(20, 4)
    for it in range(3):
        value = loss(pred, target, avg_factor=20, beta=sched.beta)
        torch.testing.assert_close(
            value, F.smooth_l1_loss(pred, target, reduction="sum", beta=0.5) / 20
        )
        sched.step(it)


def test_adaptive_step_needs_a_statistic():
    with pytest.raises(ValueError, match="beta_statistic"):
        AdaptiveBeta().step(0)


def test_state_dict_round_trip():
    a, b = AdaptiveBeta(topk=1, interval=3), AdaptiveBeta(topk=1, interval=3)
    # updated after 2, 2 pending
    train(a, [(targets([[0.1 * (it + 1), 0.1 * (it + 1)]]), 1) for it in range(5)])
    state = a.state_dict()
    assert state["record"]["table"].device.type == "cpu"
    b.load_state_dict(state)
    assert b.beta == a.beta == pytest.approx(0.2) and b.state_dict()["record"]["table"].equal(
        state["record"]["table"]
    )
    last = a.observe(targets([[0.9, 0.9]]), 1)
    assert a.step(5, last) == b.step(5, last) == pytest.approx(0.5)  # median(0.4, 0.5, 0.9)
    cos, cos2 = ScheduledBeta("cosine", 1.0, 0.1, 10), ScheduledBeta("cosine", 1.0, 0.1, 10)
    cos.step(4)
    cos2.load_state_dict(cos.state_dict())
    assert cos2.beta == cos.beta
    with pytest.raises(ValueError, match="'cosine' schedule, this one is 'adaptive'"):
        AdaptiveBeta().load_state_dict(cos.state_dict())
    with pytest.raises(ValueError, match="intervals of 3 iterations, this one 4"):
        AdaptiveBeta(interval=4).load_state_dict(state)


def test_interval_record_skips_unobserved_iterations():
    record = IntervalRecord(3, "beta_statistic")
    assert [record.add(it, torch.tensor(v)) for it, v in enumerate((0.5, math.nan, 0.25))] == [
        [],
        [],
        [0.5, 0.25],
    ]
    assert not record.table.any()  # the interval's end cleared it
    assert [record.add(it, torch.tensor(math.nan)) for it in (3, 4, 5)] == [[], [], []]


# ------------------------------------------------------------------------------------ the replay
def test_replay_holds_each_logged_beta_back_to_the_previous_logged_step():
    # logged at steps 2, 4, 6: iterations 0-1 trained with 1.0, 2-3 with 0.5, 4-5 with 0.25
    replay = ReplayedBeta([2, 4, 6], [1.0, 0.5, 0.25], min_beta=0.3)
    assert replay.beta == 1.0
    assert [replay.value_at(i) for i in range(8)] == [1.0, 1.0, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3]
    assert train(replay, [(None, 1)] * 4) == [1.0, 1.0, 0.5, 0.5]
    again = ReplayedBeta([2, 4, 6], [1.0, 0.5, 0.25])
    again.load_state_dict(replay.state_dict())
    assert again.beta == replay.beta == 0.3


def test_replay_reads_a_run_or_a_report(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [
        {"type": "train", "iter": 2, "beta": 1.0, "loss": 3.0},
        {"type": "eval", "iter": 2, "AP": 0.1},
        {"type": "train", "iter": 4, "beta": 0.5},
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert read_beta_trajectory(str(run)) == ([2, 4], [1.0, 0.5])
    assert read_beta_trajectory(str(run / "metrics.jsonl")) == ([2, 4], [1.0, 0.5])
    # a report's beta.csv: the mean over the seeds at each step
    report = tmp_path / "beta.csv"
    report.write_text(
        "config,seed,run,iter,beta\nd,0,d-seed0,4,0.25\nd,1,d-seed1,4,0.75\nd,0,d-seed0,2,1\n"
    )
    assert read_beta_trajectory(str(report)) == ([2, 4], [1.0, 0.5])
    schedule = build_beta_schedule(
        roi_head("model.roi_head.box_loss.schedule.type=replay", f"{FILE}={report}"), 100
    )
    assert isinstance(schedule, ReplayedBeta) and schedule.value_at(3) == 0.5


@pytest.mark.parametrize(
    "log, steps, betas",
    [
        # updates every 2 of 5 iterations: the beta the last update set (1.25, iteration 4 trained
        # with it) is only in the last step's train record
        (
            [("train", 1, 100.0), ("dynamic", 2, 100.0), ("dynamic", 4, 1.8), ("train", 5, 1.25)],
            [1, 2, 4, 5],
            [100.0, 100.0, 1.8, 1.25],
        ),
        # a fixed schedule beside the label assigner: its updates hold the IoU threshold alone
        (
            [("dynamic", 2, None), ("train", 2, 0.9), ("train", 3, 0.5), ("dynamic", 4, None)],
            [2, 3],
            [0.9, 0.5],
        ),
        # a run logged before 2026-12-07, resumed since: its early beta stays
        (
            [("train", 100, 0.9), ("train", 200, 0.7), ("dynamic", 300, 0.5), ("train", 300, 0.5)],
            [100, 200, 300],
            [0.9, 0.7, 0.5],
        ),
    ],
    ids=["after-the-last-update", "fixed-schedule-with-dla", "resumed-across-the-change"],
)
def test_the_beta_trajectory_is_every_record_that_holds_beta(tmp_path, log, steps, betas):
    """The replay, beta.csv, beta.png and the final beta read every record holding beta, not the
    update records alone: those miss the beta of the iterations after the last update, a fixed
    schedule's beta, and a log begun before the update records."""
    records = []
    for kind, step, beta in log:
        record = {"type": kind, "iter": step, "iou_thresh": 0.5}
        records.append(record if beta is None else {**record, "beta": beta})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert read_beta_trajectory(str(tmp_path)) == (steps, betas)
    assert [r["beta"] for r in dynamic_records(records, "beta")] == betas
    # the sampling means stay over the updates
    assert dynamic_records(records) == [r for r in records if r["type"] == "dynamic"]


@pytest.mark.parametrize(
    "text,suffix,error",
    [
        (None, ".csv", "cannot be read"),
        (
            "config,iter,beta\na,2,1\nb,2,1\n",
            ".csv",
            "holds the beta of configs a, b; a replay takes one",
        ),
        ("config,iter,beta\na,two,1\n", ".csv", "not a log of beta"),
        ("config,iter,beta\na,2,1\na,4\n", ".csv", "line 3 does not have the header's 3 fields"),
        # a byte-order mark does not hide the config column
        ("\ufeffconfig,iter,beta\na,2,1\nb,2,1\n", ".csv", "holds the beta of configs a, b"),
        ('{"type": "train", "iter": 2, "loss": 1}\n', ".jsonl", "no beta logged"),
        ('{"type": "train", "iter": 2, "beta": NaN}\n', ".jsonl", "no beta logged"),
        (
            '{"type": "train", "iter": 2, "beta": 1}\nnot json\n',
            ".jsonl",
            "not valid JSON at line 2",
        ),
        (
            "3\n" + "[" * 100_000 + "]" * 100_000,
            ".jsonl",
            "JSON nested too deeply to read at line 2",
        ),
        ("3\n", ".jsonl", "not a log of beta"),
    ],
    ids=[
        "missing",
        "two configs",
        "bad iter",
        "short row",
        "byte-order mark",
        "no beta",
        "nan",
        "torn",
        "deep",
        "not records",
    ],
)
def test_replay_of_a_bad_log_is_one_line_naming_the_file(tmp_path, text, suffix, error):
    path = tmp_path / f"log{suffix}"
    if text is not None:
        path.write_text(text)
    with pytest.raises(DetectorError, match=f"{path}: {error}") as info:
        read_beta_trajectory(str(path))
    assert "model.roi_head.box_loss.schedule.file" in str(info.value)
    assert "\n" not in str(info.value)


def test_replay_needs_a_file():
    with pytest.raises(
        ConfigError, match="type=replay needs model.roi_head.box_loss.schedule.file"
    ):
        roi_head("model.roi_head.box_loss.schedule.type=replay")
