"""COCO metrics: GT/result conversion, hand-computed AP, agreement with a direct pycocotools run,
real coco_tiny."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from helpers import FakeDataset, perfect_detections, random_dataset, random_detections
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.config import COCO_METRIC_NAMES
from detector.evaluation import evaluate, format_metrics
from detector.evaluation.coco import build_coco_gt, coco_metrics, detections_to_coco_results

# COCOeval's precision is tp / (tp + fp + eps): 1 - 2e-16 for a single TP
ONE = pytest.approx(1.0, abs=1e-12)


def det(image_id, rows):
    """rows: [(x1, y1, x2, y2, label, score), ...] -> one per-image detection dict."""
    t = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)
    return {"image_id": image_id, "boxes": t[:, :4], "labels": t[:, 4].long(), "scores": t[:, 5]}


def test_gt_uses_original_category_ids_xywh_area_and_crowd():
    ds = FakeDataset([(7, [(10, 20, 40, 60, 2, False), (0, 0, 50, 50, 1, True)]), (9, [])])
    gt = build_coco_gt(ds)
    assert sorted(gt.imgs) == [7, 9] and gt.imgs[7]["height"] == 100 and gt.imgs[7]["width"] == 120
    assert {c["id"]: c["name"] for c in gt.dataset["categories"]} == {11: "cat", 21: "dog"}
    first, crowd = gt.dataset["annotations"]
    assert first == {
        "id": 1,
        "image_id": 7,
        "category_id": 21,
        "bbox": [10.0, 20.0, 30.0, 40.0],
        "area": 1200.0,
        "iscrowd": 0,
    }
    assert crowd["iscrowd"] == 1 and crowd["category_id"] == 11


def test_ground_truth_is_never_cached_on_the_dataset():
    """A dataset whose images change (here: another prefix of the same length) is scored against its
    new images."""
    ds = random_dataset(seed=5, num_images=6)
    before = dict(vars(ds))
    first, others = ds._images[:3], ds._images[3:]
    ds._images = first
    assert evaluate(ds, perfect_detections(ds), metric="coco")["AP50"] == ONE
    assert sorted(build_coco_gt(ds).imgs) == [1000, 1001, 1002]
    assert set(vars(ds)) == set(before)  # no attribute added: nothing hidden on the dataset
    ds._images = others  # same length, other images
    assert sorted(build_coco_gt(ds).imgs) == [1003, 1004, 1005]
    metrics = evaluate(ds, perfect_detections(ds), metric="both")
    assert metrics["AP50"] == ONE and metrics["mAP_voc"] == 1.0
    assert build_coco_gt(ds) is not build_coco_gt(ds)


def test_detections_to_coco_results_converts_ids_and_boxes():
    ds = FakeDataset([(7, [])])
    results = detections_to_coco_results(
        ds, [det(7, [(10, 20, 40, 60, 2, 0.75), (1.5, 2.5, 3.5, 4.5, 1, 0.5)])]
    )
    assert results == [
        {"image_id": 7, "category_id": 21, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.75},
        {"image_id": 7, "category_id": 11, "bbox": [1.5, 2.5, 2.0, 2.0], "score": 0.5},
    ]
    assert all(type(r["score"]) is float and type(r["image_id"]) is int for r in results)


def test_perfect_detections_give_ap_1():
    ds = random_dataset(seed=3)
    metrics = evaluate(ds, perfect_detections(ds), metric="coco")
    for key in ("AP", "AP50", "AP75", "AR10", "AR100"):
        assert metrics[key] == ONE
    assert metrics["AP_per_iou"] == [ONE] * 10
    assert metrics["per_class"] == {"class1": ONE, "class2": ONE, "class3": ONE}
    assert metrics["APl"] == -1.0  # no large object in 100x120 images: undefined, as COCOeval says
    json.dumps(metrics)  # metrics.json-ready


def test_false_positive_at_known_rank():
    """3 GT; ranked TP, FP, TP, TP: precision [1, 1/2, 2/3, 3/4] at recall [1/3, 1/3, 2/3, 1].

    COCO's 101-point interpolated precision is 1 for recall 0..0.33 (34 points) and 3/4 after (67
    points).
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
    metrics = evaluate(ds, dets)
    expected = (34 + 67 * 0.75) / 101
    assert metrics["AP"] == pytest.approx(expected, abs=1e-12)
    assert metrics["AP_per_iou"] == pytest.approx([expected] * 10, abs=1e-12)
    assert metrics["per_class"] == {"cat": pytest.approx(expected, abs=1e-12), "dog": -1.0}


def test_duplicate_detection_counts_as_false_positive():
    """GT A, B; ranked A, A again, B: TP, FP, TP -> precision 1 up to recall 1/2 (51 points), 2/3
    after (50)."""
    ds = FakeDataset([(1, [(0, 0, 20, 20, 1, False), (40, 40, 60, 60, 1, False)])])
    dets = [det(1, [(0, 0, 20, 20, 1, 0.9), (0, 0, 20, 20, 1, 0.8), (40, 40, 60, 60, 1, 0.7)])]
    assert evaluate(ds, dets)["AP"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)


def test_detection_on_crowd_region_is_not_a_false_positive():
    ds = FakeDataset([(1, [(0, 0, 20, 20, 1, False), (40, 0, 120, 100, 1, True)])])
    on_crowd = [det(1, [(50, 10, 70, 30, 1, 0.95), (0, 0, 20, 20, 1, 0.9)])]
    elsewhere = [det(1, [(0, 60, 20, 80, 1, 0.95), (0, 0, 20, 20, 1, 0.9)])]
    assert evaluate(ds, on_crowd)["AP"] == ONE
    # FP first: precision 1/2 at recall 1
    assert evaluate(ds, elsewhere)["AP"] == pytest.approx(0.5, abs=1e-12)


def test_empty_detections_score_zero_not_crash():
    ds = random_dataset(seed=4)
    empty = [det(ds.get_image_info(i)["image_id"], []) for i in range(len(ds))]
    metrics = evaluate(ds, empty, metric="coco")
    assert metrics["AP"] == 0.0 and metrics["AR100"] == 0.0 and metrics["APl"] == -1.0
    assert metrics["AP_per_iou"] == [0.0] * 10
    assert coco_metrics(build_coco_gt(ds), [])["AP"] == 0.0


def test_only_images_with_an_entry_are_scored():
    """max_images evaluation: the entries define the images; GT of images not run is not counted as
    missed."""
    ds = random_dataset(seed=5)
    dets = perfect_detections(ds)[:4]
    assert evaluate(ds, dets)["AP"] == ONE
    assert (
        evaluate(ds, dets, image_ids=[ds.get_image_info(i)["image_id"] for i in range(len(ds))])[
            "AP"
        ]
        < 1.0
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_direct_pycocotools_on_the_same_files(tmp_path, seed):
    ds = random_dataset(seed=seed, num_images=15, crowd_prob=0.2)
    dets = random_detections(ds, seed=seed + 100)
    metrics = evaluate(ds, dets, metric="coco")

    gt_file, res_file = tmp_path / "gt.json", tmp_path / "res.json"
    gt_file.write_text(json.dumps(build_coco_gt(ds).dataset))
    res_file.write_text(json.dumps(detections_to_coco_results(ds, dets)))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(res_file)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert [metrics[k] for k in COCO_METRIC_NAMES] == evaluator.stats.tolist()
    precision = evaluator.eval["precision"][:, :, :, 0, 2]  # [T, R, K] at area all, maxDets 100
    for t in range(10):
        assert metrics["AP_per_iou"][t] == np.mean(precision[t][precision[t] > -1])
    assert (
        metrics["AP_per_iou"][0] == metrics["AP50"] and metrics["AP_per_iou"][5] == metrics["AP75"]
    )
    assert metrics["AP90"] == metrics["AP_per_iou"][8]
    assert np.mean(metrics["AP_per_iou"]) == pytest.approx(metrics["AP"], abs=1e-12)
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k]
        expected = np.mean(p[p > -1]) if (p > -1).any() else -1.0
        assert metrics["per_class"][coco_gt.cats[cat_id]["name"]] == expected


def same_up_to_rounding(a: dict, b: dict) -> bool:
    """Equal keys and values, floats within 1e-12 (faster-coco-eval's C++ differs from pycocotools
    in the last bit)."""
    return a.keys() == b.keys() and all(
        same_up_to_rounding(a[k], b[k])
        if isinstance(a[k], dict)
        else a[k] == pytest.approx(b[k], rel=0, abs=1e-12)
        for k in a
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("tied_scores", [False, True])
def test_faster_coco_eval_gives_the_same_numbers(seed, tied_scores):
    pytest.importorskip("faster_coco_eval")
    ds = random_dataset(seed=seed, num_images=20, crowd_prob=0.2)
    dets = random_detections(ds, seed=seed + 7)
    if tied_scores:  # ties exercise the sort order of both implementations
        dets = [{**d, "scores": (d["scores"] * 4).round() / 4} for d in dets]
    assert same_up_to_rounding(evaluate(ds, dets, backend="faster_coco_eval"), evaluate(ds, dets))
    empty = [det(d["image_id"], []) for d in dets]
    assert evaluate(ds, empty, backend="faster_coco_eval") == evaluate(ds, empty)


def test_format_metrics_shows_every_section():
    ds = random_dataset(seed=1)
    text = format_metrics(evaluate(ds, random_detections(ds, seed=2), metric="both"))
    for needle in ("AR100", "AP90", "class3", "AP07", "mAP"):
        assert needle in text


def _coco_tiny_val(root):
    from detector.config import load_config
    from detector.data.build import build_dataset

    cfg = load_config(
        [],
        [
            "data.format=coco",
            f"data.root={root}",
            "data.train_split=train2017",
            "data.val_split=val2017",
        ],
    )
    return build_dataset(cfg, "val", transforms=False)


def test_coco_tiny_val_with_its_own_gt_as_detections_gives_ap_1(coco_tiny):
    ds = _coco_tiny_val(coco_tiny)
    raw = json.loads((coco_tiny / "annotations" / "instances_val2017.json").read_text())
    assert len(ds) == len(raw["images"])
    gt = build_coco_gt(ds)
    assert {c["id"] for c in gt.dataset["categories"]} == {c["id"] for c in raw["categories"]}
    metrics = evaluate(ds, perfect_detections(ds), metric="both")
    assert metrics["AP"] == ONE and metrics["AP50"] == ONE and metrics["AP75"] == ONE
    assert metrics["AP_per_iou"] == [ONE] * 10
    assert all(ap == ONE or ap == -1.0 for ap in metrics["per_class"].values())
    # 11 x (1/11) sums to 1 + 2e-16
    assert metrics["mAP_voc"] == ONE and metrics["mAP_voc07"] == ONE


def test_coco_tiny_faster_coco_eval_matches(coco_tiny):
    pytest.importorskip("faster_coco_eval")
    ds = _coco_tiny_val(coco_tiny)
    dets = random_detections(ds, seed=11)
    assert same_up_to_rounding(evaluate(ds, dets, backend="faster_coco_eval"), evaluate(ds, dets))
