"""detector.boxes: the batched box functions against torchvision's per-image ops."""

import torch
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

from detector.boxes import (
    batched_box_iou,
    batched_nms_topk,
    box_xywh_to_xyxy,
    box_xyxy_to_xywh,
    clip_boxes_to_sizes,
    degenerate_box_mask,
    min_size_mask,
)


def random_boxes(n: int, m: int, size: float = 100.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = (
        torch.rand(n, m, 2, generator=g) * size * 1.2 - size * 0.1
    )  # some boxes stick out of the image
    wh = torch.rand(n, m, 2, generator=g) * size * 0.5 + 0.5
    return torch.cat([xy, xy + wh], dim=-1)  # [N,M,4]


def test_clip_matches_torchvision_per_image():
    boxes = random_boxes(3, 50)
    sizes = torch.tensor([[80.0, 100.0], [100.0, 60.0], [40.0, 40.0]])  # (h, w)
    clipped = clip_boxes_to_sizes(boxes, sizes)
    for i, (h, w) in enumerate(sizes.tolist()):
        assert torch.equal(clipped[i], clip_boxes_to_image(boxes[i], (int(h), int(w))))


def test_batched_iou_matches_torchvision():
    boxes, gt = random_boxes(2, 30, seed=1), random_boxes(2, 5, seed=2)
    iou = batched_box_iou(boxes, gt)  # [2,30,5]
    for i in range(2):
        torch.testing.assert_close(iou[i], box_iou(boxes[i], gt[i]))


def test_nms_topk_matches_per_image_nms_then_topk():
    boxes = random_boxes(3, 60, seed=3)
    g = torch.Generator().manual_seed(4)
    scores = torch.rand(3, 60, generator=g)
    classes = torch.randint(0, 3, (60,), generator=g)
    groups = torch.arange(3)[:, None] * 3 + classes  # [3,60]
    keep = scores > 0.2
    top_scores, top = batched_nms_topk(boxes, scores, groups, keep, 0.5, k=10)
    assert top_scores.shape == (3, 10)
    for i in range(3):
        idx = keep[i].nonzero().squeeze(1)
        kept = idx[batched_nms(boxes[i, idx], scores[i, idx], classes[idx], 0.5)][
            :10
        ]  # sorted by score
        n = len(kept)
        assert torch.equal(top[i, :n], kept)
        assert torch.isfinite(top_scores[i, :n]).all() and torch.isinf(top_scores[i, n:]).all()


def test_nms_topk_with_nothing_kept_gives_no_survivors():
    boxes = random_boxes(2, 8)
    scores = torch.rand(2, 8)
    top_scores, _ = batched_nms_topk(
        boxes,
        scores,
        torch.zeros(2, 8, dtype=torch.long),
        torch.zeros(2, 8, dtype=torch.bool),
        0.5,
        k=20,
    )
    assert top_scores.shape == (2, 8) and torch.isinf(top_scores).all()


def test_masks_and_format_round_trip():
    boxes = torch.tensor(
        [[0.0, 0.0, 10.0, 5.0], [3.0, 3.0, 3.0, 9.0], [0.0, 0.0, float("nan"), 1.0]]
    )
    assert degenerate_box_mask(boxes).tolist() == [False, True, True]
    assert min_size_mask(boxes[:2], 5.0).tolist() == [True, False]
    assert min_size_mask(boxes[:2], 5.5).tolist() == [False, False]
    assert torch.equal(box_xywh_to_xyxy(box_xyxy_to_xywh(boxes[:1])), boxes[:1])
