"""Bad detections (per-image dicts or a COCO results file) are rejected with the first offending
entry named."""

import json
import math

import pytest
import torch
from helpers import FakeDataset

from detector.evaluation import evaluate, evaluate_coco_results
from detector.evaluation.coco import load_coco_results


@pytest.fixture
def ds():
    return FakeDataset([(7, [(10, 20, 40, 60, 2, False)]), (9, [(0, 0, 30, 30, 1, False)])])


def good_result(**changes):
    return {
        "image_id": 7,
        "category_id": 21,
        "bbox": [10.0, 20.0, 30.0, 40.0],
        "score": 0.9,
        **changes,
    }


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            {"image_id": 8},
            r"entry 1 \(image_id 8\): field 'image_id' 8 is not an image of the dataset",
        ),
        (
            {"category_id": 2},
            r"entry 1 \(image_id 7\): field 'category_id' 2 is not a category .* one of \[11, 21\]",
        ),
        (
            {"score": float("nan")},
            r"entry 1 \(image_id 7\): field 'score' nan; expected a finite number",
        ),
        ({"score": "high"}, r"entry 1 \(image_id 7\): field 'score' 'high'"),
        (
            {"bbox": [1.0, 2.0, math.inf, 4.0]},
            r"entry 1 \(image_id 7\): field 'bbox' .* non-finite",
        ),
        (
            {"bbox": [1.0, 2.0, 3.0]},
            r"entry 1 \(image_id 7\): field 'bbox' .* expected a list \[x, y, w, h\] of 4",
        ),
        (
            {"bbox": [10.0, 20.0, 0.0, 5.0]},
            r"entry 1 \(image_id 7\): field 'bbox' .* width 0.0 .* w > 0 and h > 0",
        ),
        ({"bbox": [10.0, 20.0, 5.0, -1.0]}, r"entry 1 \(image_id 7\): .* height -1.0"),
    ],
)
def test_bad_results_file_names_the_first_offending_entry(tmp_path, ds, bad, message):
    path = tmp_path / "detections.json"
    path.write_text(json.dumps([good_result(), good_result(**bad), good_result(**bad)]))
    with pytest.raises(ValueError, match=message) as info:
        load_coco_results(path, ds)
    assert str(path) in str(info.value)


def test_results_file_that_is_not_a_list_or_misses_keys(tmp_path, ds):
    path = tmp_path / "detections.json"
    path.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="expected a JSON list of COCO results"):
        load_coco_results(path, ds)
    path.write_text(json.dumps([{"image_id": 7, "bbox": [0, 0, 1, 1], "score": 1.0}]))
    with pytest.raises(ValueError, match="entry 0: expected a dict with keys"):
        load_coco_results(path, ds)
    path.write_text("[{")
    with pytest.raises(
        ValueError, match="detections.json: not valid JSON .*; expected a COCO detections JSON list"
    ):
        load_coco_results(path, ds)


def test_good_results_file_loads_and_scores(tmp_path, ds):
    path = tmp_path / "detections.json"
    results = [
        good_result(),
        {"image_id": 9, "category_id": 11, "bbox": [0, 0, 30, 30], "score": 1},
    ]
    path.write_text(json.dumps(results))
    loaded = load_coco_results(path, ds)
    metrics = evaluate_coco_results(ds, loaded, metric="both")
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-12) and metrics["mAP_voc"] == 1.0
    # pycocotools' loadRes adds keys to the dicts it gets: ours must stay untouched
    assert loaded == results


def per_image(image_id=7, boxes=((10.0, 20.0, 40.0, 60.0),), labels=(2,), scores=(0.9,)):
    return {
        "image_id": image_id,
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor(labels),
        "scores": torch.tensor(scores),
    }


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            per_image(image_id=8),
            r"detections\[1\] \(image_id 8\): field 'image_id' 8 is not an image",
        ),
        (
            per_image(image_id=9, labels=(0,)),
            r"detections\[1\] \(image_id 9\): detection 0 has field 'labels' 0",
        ),
        (
            per_image(image_id=9, labels=(3,)),
            r"detection 0 has field 'labels' 3; expected a foreground label in 1..2",
        ),
        (
            per_image(image_id=9, scores=(float("nan"),)),
            r"\(image_id 9\): detection 0 has field 'scores' nan",
        ),
        (
            per_image(image_id=9, boxes=((0.0, 0.0, float("inf"), 1.0),)),
            r"detection 0 has field 'boxes' .* non-finite",
        ),
        (
            per_image(image_id=9, boxes=((5.0, 0.0, 5.0, 1.0),)),
            r"detection 0 .* width or height <= 0",
        ),
        (
            per_image(image_id=9, boxes=((0.0, 0.0, 5.0),)),
            r"\(image_id 9\): field 'boxes' has shape \[1, 3\]",
        ),
        (per_image(image_id=9, scores=(0.5, 0.4)), r"'scores' \[2\] must both have shape \[1\]"),
        (per_image(image_id=7), r"detections\[1\] \(image_id 7\): image_id repeated"),
        (
            {"image_id": 9, "boxes": torch.zeros(0, 4)},
            r"detections\[1\]: expected a dict with keys",
        ),
    ],
)
def test_bad_per_image_detections_name_the_first_offending_entry(ds, bad, message):
    with pytest.raises(ValueError, match=message):
        evaluate(ds, [per_image(), bad])


def test_empty_per_image_entry_is_fine(ds):
    empty = {
        "image_id": 9,
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "scores": torch.zeros(0),
    }
    assert evaluate(ds, [per_image(), empty], metric="voc")["per_class_voc"]["dog"]["ap"] == 1.0


def test_unknown_image_ids_argument(ds):
    with pytest.raises(ValueError, match="image_ids: 5 is not an image of the dataset"):
        evaluate(ds, [per_image()], image_ids=[7, 5])
