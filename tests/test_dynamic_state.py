"""Dynamic R-CNN's changing state (issues 13 and 15): the statistics of both reference conventions
on hand-computed boxes, a forward pass that changes nothing, ``update_dynamic_state`` as the one
place the state moves, checkpoints on the CPU, and two gloo ranks that stay in step while one of
them runs extra forward passes."""

import copy
import math
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import make_roi_heads, tiny_model, two_images

from detector.config import load_config
from detector.losses.dynamic import AdaptiveBeta
from detector.losses.regression import build_box_loss
from detector.modeling.matcher import DynamicLabelAssigner, build_label_assigner, match_boxes
from detector.modeling.roi_heads import RoIHeads

DYNAMIC = [
    "model.roi_head.box_loss.name=dynamic_smooth_l1",
    "model.roi_head.box_loss.schedule.interval=2",
    "model.roi_head.dynamic_label_assignment.enabled=true",
    "model.roi_head.dynamic_label_assignment.interval=2",
    "model.roi_head.dynamic_label_assignment.topk=5",
]


# ------------------------------------------------------------------------ the DLA statistic by hand
def _iou_case():
    """3 images, 4 candidates, 2 GT slots: image 0 has 2 GT, image 1 one GT (and a padded
    candidate), image 2 none. IoU with (GT 0, GT 1) per candidate; max and matches from match_boxes
    at threshold 0.5."""
    # [3,4,2]
    iou = torch.tensor(
        [
            [[0.90, 0.10], [0.20, 0.70], [0.30, 0.35], [0.05, 0.45]],
            [[0.80, 0.00], [0.60, 0.00], [0.10, 0.00], [0.00, 0.00]],
            [[0.00, 0.00], [0.00, 0.00], [0.00, 0.00], [0.00, 0.00]],
        ]
    )
    gt_valid = torch.tensor([[True, True], [True, False], [False, False]])
    candidate_valid = torch.tensor(
        [[True] * 4, [True, True, True, False], [True, True, False, False]]
    )
    _, max_iou, fg, _ = match_boxes(iou, gt_valid, 0.5, 0.5)
    return iou, max_iou, fg, candidate_valid, gt_valid


@pytest.mark.parametrize(
    "topk,expected",
    [
        # per image the 2nd largest best-GT IoU; no GT: mmdet's all-zero overlaps
        (
            2,
            (0.70 + 0.60 + 0.0) / 3,
        ),
        (4, (0.35 + 0.10 + 0.0) / 3),  # k = min(4, n): image 1 has 3 candidates, image 2 two
    ],
)
def test_dla_mmdet_statistic_by_hand(topk, expected):
    assigner = DynamicLabelAssigner(topk=topk, statistic="mmdet")
    assert float(assigner.observe(*_iou_case())) == pytest.approx(expected)


@pytest.mark.parametrize(
    "topk,expected",
    [
        # k = 2 x 2 images with GT = 4 over [0.9, 0.7, 0.3, 0.05 | 0.8, 0.6, 0.1]: the 4th largest
        (2, 0.60),
        # k = 6: 0.1, not the 0.35 of the best GT, since a background candidate counts its IoU with
        # GT 0
        (3, 0.10),
        (9, 0.05),  # k capped at the 7 candidates of the images with GT
    ],
)
def test_dla_official_statistic_by_hand(topk, expected):
    assigner = DynamicLabelAssigner(topk=topk, statistic="official")
    assert float(assigner.observe(*_iou_case())) == pytest.approx(expected)


def test_dla_threshold_is_the_mean_of_the_interval_floored():
    assigner = DynamicLabelAssigner(initial_thresh=0.5, topk=2, interval=3, min_thresh=0.4)
    steps = [
        assigner.step(it, torch.tensor(v))
        for it, v in enumerate((0.7, math.nan, 0.6, 0.1, 0.2, 0.3))
    ]
    # mean(0.7, 0.6); then mean 0.2 -> 0.4
    assert steps == pytest.approx([0.5, 0.5, 0.65, 0.65, 0.65, 0.4])
    restored = DynamicLabelAssigner(initial_thresh=0.5, topk=2, interval=3, min_thresh=0.4)
    assigner.step(6, torch.tensor(0.9))
    restored.load_state_dict(assigner.state_dict())
    assert restored.thresh == assigner.thresh == 0.4
    assert restored.step(7, torch.tensor(0.8)) == assigner.step(7, torch.tensor(0.8))
    assert (
        restored.step(8, torch.tensor(0.7))
        == assigner.step(8, torch.tensor(0.7))
        == pytest.approx(0.8)
    )


def test_dla_starts_where_its_convention_does():
    def roi(*overrides):
        return load_config(
            [], ["model.roi_head.dynamic_label_assignment.enabled=true", *overrides]
        ).model.roi_head

    assert build_label_assigner(load_config([]).model.roi_head) is None
    # mmdet: Faster R-CNN's assigner until the first update
    assert build_label_assigner(roi()).thresh == 0.5
    official = build_label_assigner(
        roi("model.roi_head.dynamic_label_assignment.statistic=official")
    )
    assert official.thresh == 0.4 and official.statistic == "official"  # WARMUP_IOU = min_thresh


# -------------------------------------------------------------- the beta statistic through the head
GT = [10.0, 10.0, 30.0, 30.0]  # 20 x 20, centre (20, 20)
# IoU 400/900: bg, concentric: tx = ty = 0 -> 0
PROPOSALS = [
    [12.0, 10.0, 32.0, 30.0],  # IoU 360/440: fg; tx = 10 * (20 - 22) / 20 = -1, ty = 0 -> 0.5
    [10.0, 13.0, 30.0, 33.0],  # IoU 340/460: fg; ty = -1.5 -> 0.75
    [40.0, 40.0, 60.0, 60.0],  # IoU 0: bg; against GT 0 tx = ty = -15 -> 15
    [5.0, 5.0, 35.0, 35.0],
]
# with the GT box added as a proposal (0): official over all five, mmdet over the three sampled
# positives


def _head(statistic: str, topk: int) -> RoIHeads:
    box_loss = build_box_loss({"name": "dynamic_smooth_l1", "beta": 1.0, "sigma": None})
    return make_roi_heads(
        4,
        num_classes=2,
        box_loss=box_loss,
        fc_dim=8,
        batch_size_per_image=8,
        positive_fraction=0.5,
        beta_schedule=AdaptiveBeta(topk=topk, interval=2, min_beta=1e-3, statistic=statistic),
        label_assigner=DynamicLabelAssigner(
            initial_thresh=0.5, topk=2, interval=2, statistic=statistic
        ),
    ).train()


def _head_forward(head: RoIHeads):
    features = {"0": torch.zeros(1, 4, 16, 16)}
    return head(
        features,
        torch.tensor([PROPOSALS]),
        torch.ones(1, 4, dtype=torch.bool),
        torch.tensor([[64.0, 64.0]]),
        (64, 64),
        torch.tensor([[GT]]),
        torch.tensor([[1]]),
        torch.ones(1, 1, dtype=torch.bool),
    )


@pytest.mark.parametrize(
    "statistic,topk,expected",
    [
        ("mmdet", 2, 0.5),  # positives [0.5, 0.75, 0 (GT)], k = min(2 x 1, 3) = 2
        ("mmdet", 1, 0.0),  # the GT box itself
        # all five [0.5, 0.75, 15, 0, 0]: the GT and the concentric background proposal
        ("official", 2, 0.0),
        ("official", 3, 0.5),
        ("official", 5, 15.0),
    ],
)
def test_beta_statistic_by_hand(statistic, topk, expected):
    head = _head(statistic, topk)
    _, stats = _head_forward(head)
    assert float(stats["beta_statistic"]) == pytest.approx(expected, abs=1e-5)
    # the IoU statistic: 2nd largest of [0.818, 0.739, 0, 0.444, 1 (GT)], one image, one GT: both
    # conventions
    assert float(stats["iou_statistic"]) == pytest.approx(360 / 440)
    for it in range(2):
        assert float(stats["beta"]) == 1.0 and float(stats["iou_thresh"]) == 0.5
        head.update_dynamic_state(it, stats)
        _, stats = _head_forward(head)
    # mmdet keeps beta for a zero median; official takes it, floored at min_beta
    new_beta = {0.5: 0.5, 15.0: 1.0}.get(expected, 1.0 if statistic == "mmdet" else 1e-3)
    assert head.beta_schedule.beta == pytest.approx(new_beta) and float(
        stats["beta"]
    ) == pytest.approx(new_beta)
    assert head.label_assigner.thresh == pytest.approx(360 / 440)


# ---------------------------------------------------------------------------------- no hidden state
def _state(model):
    return copy.deepcopy(model.roi_heads.get_extra_state())


def _assert_same_state(a, b):
    assert a["iteration"] == b["iteration"]
    assert a["beta_schedule"]["beta"] == b["beta_schedule"]["beta"]
    assert a["label_assigner"]["thresh"] == b["label_assigner"]["thresh"]
    for part in ("beta_schedule", "label_assigner"):
        torch.testing.assert_close(a[part]["record"]["table"], b[part]["record"]["table"])


def test_extra_forward_passes_change_no_state():
    model = tiny_model(*DYNAMIC).train()
    images, targets = two_images()
    _, stats = model(images, targets)
    model.update_dynamic_state(0, stats)
    before = _state(model)
    _, stats = model(images, targets)
    _, extra = model(images, targets)  # a user's debugging forward, a hook...
    model.eval()
    with torch.no_grad():
        model(images)
    model.train()
    _assert_same_state(_state(model), before)
    assert float(extra["beta"]) == float(stats["beta"]) and float(extra["iou_thresh"]) == float(
        stats["iou_thresh"]
    )
    # the interval ends with the trainer's stats, not the extra forward's
    model.update_dynamic_state(1, stats)
    first = before["beta_schedule"]["record"]["table"][0, 0]
    assert model.roi_heads.label_assigner.thresh == pytest.approx(
        max(
            0.4,
            (
                float(before["label_assigner"]["record"]["table"][0, 0])
                + float(stats["iou_statistic"])
            )
            / 2,
        )
    )
    median = (float(first) + float(stats["beta_statistic"])) / 2
    assert model.roi_heads.beta_schedule.beta == pytest.approx(
        min(1.0, median) if median > 0 else 1.0
    )


def test_update_dynamic_state_once_per_iteration_in_order():
    model = tiny_model(*DYNAMIC).train()
    stats = {"beta_statistic": torch.tensor(0.3), "iou_statistic": torch.tensor(0.6)}
    model.update_dynamic_state(0, stats)
    with pytest.raises(ValueError, match="iteration 0 is already recorded"):
        model.update_dynamic_state(0, stats)
    with pytest.raises(ValueError, match="iou_statistic"):
        model.update_dynamic_state(1, {"beta_statistic": torch.tensor(0.3)})


def test_state_checkpoints_on_the_cpu_and_resumes_mid_interval():
    overrides = [
        *DYNAMIC,
        "model.roi_head.box_loss.schedule.interval=3",
        "model.roi_head.dynamic_label_assignment.interval=3",
    ]
    straight, resumed = tiny_model(*overrides), tiny_model(*overrides, seed=1)
    observed = [
        {"beta_statistic": torch.tensor(b), "iou_statistic": torch.tensor(t)}
        for b, t in ((0.3, 0.6), (0.1, 0.7), (0.2, 0.8), (0.5, 0.65))
    ]
    straight.update_dynamic_state(0, observed[0])
    saved = {k: v for k, v in straight.state_dict().items() if k.endswith("_extra_state")}
    extra = saved["roi_heads._extra_state"]
    assert extra["beta_schedule"]["record"]["table"].device.type == "cpu"
    assert extra["label_assigner"]["record"]["table"].device.type == "cpu"
    resumed.load_state_dict(saved, strict=False)
    for it in (1, 2, 3):
        for model in (straight, resumed):
            model.update_dynamic_state(it, observed[it])
    _assert_same_state(_state(resumed), _state(straight))
    assert straight.roi_heads.beta_schedule.beta == pytest.approx(0.2)  # median(0.3, 0.1, 0.2)
    assert straight.roi_heads.label_assigner.thresh == pytest.approx(0.7)  # mean(0.6, 0.7, 0.8)


# --------------------------------------------------------------------------- two ranks stay in step
def _rank_data(rank: int):
    """two_images with other boxes on rank 1, so that its statistics differ, and 40 jittered
    proposals per box."""
    images, targets = two_images()
    if rank:
        targets = [{**t, "boxes": t["boxes"] * 0.8 + 5} for t in targets]
    generator = torch.Generator().manual_seed(rank)
    proposals = []
    for target in targets:
        boxes = target["boxes"].repeat(40, 1)
        size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        proposals.append(boxes + size * 0.3 * (torch.rand(boxes.shape, generator=generator) - 0.5))
    return images, targets, proposals


def _ddp_worker(rank: int, init_file: str, results):
    from datetime import timedelta

    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=60),
    )
    calls = []
    all_reduce = dist.all_reduce

    def counted(*args, **kwargs):
        calls.append(1)
        return all_reduce(*args, **kwargs)

    dist.all_reduce = counted  # this spawned process's own torch.distributed
    try:
        torch.set_num_threads(1)
        model = tiny_model(
            *DYNAMIC, "model.proposals=precomputed", "model.proposal_file=unused.json"
        ).train()
        images, targets, proposals = _rank_data(rank)
        observed, states = [], []
        for it in range(4):
            _, stats = model(images, targets, proposals=proposals)
            observed.append((float(stats["beta_statistic"]), float(stats["iou_statistic"])))
            # only this rank runs extra forward passes: no collective may wait for them
            if rank == 0:
                model(images, targets, proposals=proposals)
                model.eval()
                with torch.no_grad():
                    model(images, proposals=proposals)
                model.train()
            model.update_dynamic_state(it, stats)
            states.append(
                (model.roi_heads.beta_schedule.beta, model.roi_heads.label_assigner.thresh)
            )
        results[rank] = (observed, states, len(calls))
    finally:
        dist.all_reduce = all_reduce
        dist.destroy_process_group()


def test_two_ranks_stay_in_step_while_one_runs_extra_forwards(tmp_path):
    results = mp.Manager().dict()
    context = mp.start_processes(
        _ddp_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=False
    )
    deadline = time.time() + 240
    while not context.join(timeout=1):
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two ranks hung")
    (obs0, states0, calls0), (obs1, states1, calls1) = results[0], results[1]
    assert states0 == states1  # the same beta and threshold on both ranks after every iteration
    # one all_reduce per interval for beta and one for the threshold, none per step
    assert calls0 == calls1 == 4
    beta, thresh = 1.0, 0.5
    # interval 2: each iteration's statistic averaged over the ranks, then median / mean
    for end in (1, 3):
        betas = [(obs0[i][0] + obs1[i][0]) / 2 for i in (end - 1, end)]
        ious = [(obs0[i][1] + obs1[i][1]) / 2 for i in (end - 1, end)]
        median = sum(betas) / 2
        beta = max(min(1.0, median), 1e-3) if median >= 1e-15 else beta
        thresh = max(0.4, sum(ious) / 2)
        assert states0[end] == pytest.approx((beta, thresh), rel=1e-6)
    assert obs0 != obs1  # the ranks did see different data
    assert states0[-1][0] < 1.0 and states0[-1][1] > 0.5  # and beta and the threshold moved
