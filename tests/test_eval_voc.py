"""PASCAL VOC AP: hand-computed 11-point and area values, difficult objects, and a devkit
re-implementation."""

import numpy as np
import pytest
import torch
from helpers import FakeDataset, perfect_detections, random_dataset, random_detections

from detector.evaluation import evaluate
from detector.evaluation.voc import voc_ap


def det(image_id, rows):
    """rows: [(x1, y1, x2, y2, label, score), ...] -> one per-image detection dict."""
    t = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)
    return {"image_id": image_id, "boxes": t[:, :4], "labels": t[:, 4].long(), "scores": t[:, 5]}


def reference_voc_eval(dataset, detections, label, ovthresh=0.5, use_07_metric=False):
    """py-faster-rcnn's lib/datasets/voc_eval.py (voc_eval + voc_ap), transcribed; only the +1 in
    the IoU is gone."""
    class_recs, npos = {}, 0
    for i in range(len(dataset)):
        target = dataset.get_target(i)
        mask = (target["labels"] == label).numpy()
        difficult = target["iscrowd"].numpy()[mask].astype(bool)
        class_recs[target["image_id"]] = {
            "bbox": target["boxes"].double().numpy()[mask],
            "difficult": difficult,
            "det": [False] * int(mask.sum()),
        }
        npos = npos + sum(~difficult)
    image_ids, confidence, BB = [], [], []
    for d in detections:
        keep = (d["labels"] == label).numpy()
        image_ids += [d["image_id"]] * int(keep.sum())
        confidence += d["scores"].double().numpy()[keep].tolist()
        BB += d["boxes"].double().numpy()[keep].tolist()
    confidence, BB = np.array(confidence), np.array(BB).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :]
        ovmax = -np.inf
        BBGT = R["bbox"]
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin, 0.0)
            ih = np.maximum(iymax - iymin, 0.0)
            inters = iw * ih
            uni = (
                (bb[2] - bb[0]) * (bb[3] - bb[1])
                + (BBGT[:, 2] - BBGT[:, 0]) * (BBGT[:, 3] - BBGT[:, 1])
                - inters
            )
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def voc(dataset, detections):
    return evaluate(dataset, detections, metric="voc")


def test_perfect_detections_give_ap_1():
    ds = random_dataset(seed=3, crowd_prob=0.3)
    metrics = voc(ds, perfect_detections(ds))
    assert metrics["mAP_voc"] == 1.0 and metrics["mAP_voc07"] == pytest.approx(1.0, abs=1e-12)
    assert set(metrics["per_class_voc"]) == {"class1", "class2", "class3"}


def test_false_positive_at_known_rank():
    """3 GT; ranked TP, FP, TP, TP -> recall [1/3, 1/3, 2/3, 1], precision [1, 1/2, 2/3, 3/4].

    area: envelope 1 on (0, 1/3], 3/4 on (1/3, 1] -> 1/3 + 2/3 * 3/4 = 5/6.
    11-point: p = 1 at recall 0, .1, .2, .3 and 3/4 at .4 ... 1.0 -> (4 + 7 * 3/4) / 11 = 37/44.
    """
    ds = FakeDataset(
        [(1, [(0, 0, 20, 20, 1, False), (30, 30, 50, 50, 1, False), (60, 0, 80, 20, 1, False)])]
    )
    dets = [
        det(
            1,
            [
                (0, 0, 20, 20, 1, 0.9),
                (0, 60, 20, 80, 1, 0.8),
                (30, 30, 50, 50, 1, 0.7),
                (60, 0, 80, 20, 1, 0.6),
            ],
        )
    ]
    metrics = voc(ds, dets)
    assert metrics["per_class_voc"]["cat"] == {
        "ap07": pytest.approx(37 / 44, abs=1e-12),
        "ap": pytest.approx(5 / 6, abs=1e-12),
        "num_gt": 3,
    }
    # no GT: undefined
    assert metrics["per_class_voc"]["dog"] == {"ap07": -1.0, "ap": -1.0, "num_gt": 0}
    assert metrics["mAP_voc"] == pytest.approx(5 / 6, abs=1e-12)  # mean over classes with GT only


def test_duplicate_detection_counts_as_false_positive():
    """GT A, B; ranked A, A again, B -> TP, FP, TP: area 1/2 + 1/2 * 2/3 = 5/6; 11-point (6 + 5 *
    2/3) / 11."""
    ds = FakeDataset([(1, [(0, 0, 20, 20, 1, False), (40, 40, 60, 60, 1, False)])])
    dets = [det(1, [(0, 0, 20, 20, 1, 0.9), (1, 1, 21, 21, 1, 0.8), (40, 40, 60, 60, 1, 0.7)])]
    ap = voc(ds, dets)["per_class_voc"]["cat"]
    assert ap["ap"] == pytest.approx(5 / 6, abs=1e-12)
    assert ap["ap07"] == pytest.approx((6 + 5 * 2 / 3) / 11, abs=1e-12)


def test_difficult_object_is_ignored():
    """A detection on a difficult object is neither TP nor FP, and the difficult object is never a
    miss."""
    ds = FakeDataset([(1, [(0, 0, 20, 20, 1, False), (40, 40, 60, 60, 1, True)])])
    on_difficult = [det(1, [(40, 40, 60, 60, 1, 0.9), (0, 0, 20, 20, 1, 0.8)])]
    assert voc(ds, on_difficult)["per_class_voc"]["cat"] == {
        "ap07": pytest.approx(1.0, abs=1e-12),
        "ap": 1.0,
        "num_gt": 1,
    }
    only_easy = [det(1, [(0, 0, 20, 20, 1, 0.8)])]
    assert voc(ds, only_easy)["mAP_voc"] == 1.0
    not_difficult = FakeDataset([(1, [(0, 0, 20, 20, 1, False), (40, 40, 60, 60, 1, False)])])
    assert voc(not_difficult, only_easy)["mAP_voc"] == pytest.approx(0.5, abs=1e-12)


def test_iou_threshold_is_strict_and_without_plus_one():
    """IoU exactly 0.5 is not a match (devkit's ovmax > 0.5); continuous boxes, no +1 pixel."""
    ds = FakeDataset([(1, [(0, 0, 20, 10, 1, False)])])
    half = [det(1, [(0, 0, 10, 10, 1, 0.9)])]  # IoU = 100 / 200 = 0.5 exactly
    assert voc(ds, half)["mAP_voc"] == 0.0
    # IoU = 105 / 200; with the devkit's +1 it would be 0.4978
    above = [det(1, [(0, 0, 10.5, 10, 1, 0.9)])]
    assert voc(ds, above)["mAP_voc"] == 1.0


def test_voc_ap_of_a_known_curve():
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert voc_ap(recall, precision) == pytest.approx(5 / 6)
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert voc_ap(np.zeros(0), np.zeros(0)) == 0.0 and voc_ap(np.zeros(0), np.zeros(0), True) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_equals_devkit_reference_on_random_detections(seed):
    ds = random_dataset(seed=seed, num_images=15, crowd_prob=0.25)
    dets = random_detections(ds, seed=seed + 50)
    if seed % 2:  # tied scores: both sort stably, so ties keep the input order
        dets = [{**d, "scores": (d["scores"] * 4).round() / 4} for d in dets]
    metrics = voc(ds, dets)
    for label in range(1, len(ds.classes)):
        ours = metrics["per_class_voc"][ds.classes[label]]
        assert ours["ap"] == reference_voc_eval(ds, dets, label)
        assert ours["ap07"] == reference_voc_eval(ds, dets, label, use_07_metric=True)
    assert metrics["mAP_voc"] == pytest.approx(
        np.mean([c["ap"] for c in metrics["per_class_voc"].values()])
    )


def test_both_metric_families_together():
    ds = random_dataset(seed=9)
    dets = random_detections(ds, seed=9)
    both = evaluate(ds, dets, metric="both")
    assert both == {**evaluate(ds, dets, metric="coco"), **voc(ds, dets)}
