"""The synthetic generator: deterministic bytes, exact boxes within limits, reuse/regeneration, CLI."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from detector.config import load_config
from detector.data import SHAPES, DatasetError, build_dataset, generate_synthetic
from detector.data.synthetic import MAX_IOU, _draw_shape, ensure_synthetic

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(num_train=6, num_val=3, image_size=(96, 128), num_classes=6, max_objects=5)


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = folder_bytes(generate_synthetic(tmp_path / "a", seed=3, **SMALL))
    b = folder_bytes(generate_synthetic(tmp_path / "b", seed=3, **SMALL))
    c = folder_bytes(generate_synthetic(tmp_path / "c", seed=4, **SMALL))
    assert len(a) == 6 + 3 + 2 + 1 and a == b
    assert a["annotations/instances_train.json"] != c["annotations/instances_train.json"]
    assert a["train/000001.jpg"] != c["train/000001.jpg"]


def test_annotations_are_valid_coco_with_limited_overlap(tmp_path):
    root = generate_synthetic(tmp_path, seed=0, num_train=40, num_val=2, image_size=(160, 160), num_classes=6,
                              max_objects=6)
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in data["categories"]] == list(SHAPES)
    assert len(data["images"]) == 40 and len(data["annotations"]) >= 40
    by_image = {}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 160 and y + h <= 160
        assert min(w, h) >= 20 and 0 < ann["area"] <= w * h
        by_image.setdefault(ann["image_id"], []).append([x, y, x + w, y + h])
    from torchvision.ops import box_iou
    for boxes in by_image.values():
        iou = box_iou(torch.tensor(boxes, dtype=torch.float), torch.tensor(boxes, dtype=torch.float))
        assert (iou.fill_diagonal_(0) <= MAX_IOU + 1e-6).all()
    assert len({a["category_id"] for a in data["annotations"]}) == 6


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_fills_its_box(shape):
    mask = _draw_shape(shape, 40, 30)
    x0, y0, x1, y1 = mask.getbbox()  # the object's box is this extent, so it is exact for every shape
    assert 0 <= x0 and 0 <= y0 and x1 <= 40 and y1 <= 30
    assert x1 - x0 >= 36 and y1 - y0 >= 27  # a star's tips stop a little short of the drawing area


def test_build_dataset_generates_reuses_and_regenerates(tmp_path):
    root = tmp_path / "syn"
    overrides = [f"data.root={root}", "data.synthetic.num_train=4", "data.synthetic.num_val=2",
                 "data.synthetic.image_size=[64, 80]"]
    ds = build_dataset(load_config([], overrides), "train")
    assert len(ds) == 4 and ds.classes == ["__background__", *SHAPES[:4]]
    image, target = ds[(0, 11)]
    assert image.dtype == torch.uint8 and target["orig_size"] == (64, 80)
    stamp = (root / "train" / "000001.jpg").stat().st_mtime_ns
    assert len(build_dataset(load_config([], overrides), "val")) == 2
    assert (root / "train" / "000001.jpg").stat().st_mtime_ns == stamp  # reused
    ds = build_dataset(load_config([], overrides + ["data.synthetic.num_train=5"]), "train")
    assert len(ds) == 5 and json.loads((root / "synthetic.json").read_text())["num_train"] == 5


def test_foreign_folder_is_never_overwritten(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="holds other files"):
        ensure_synthetic(tmp_path, seed=0, **SMALL)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_make_synthetic_cli(tmp_path):
    spec = importlib.util.spec_from_file_location("make_synthetic", REPO / "tools" / "make_synthetic.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--root", str(tmp_path / "s"), "--num-train", "3", "--num-val", "2", "--image-size", "64", "64",
                      "--num-classes", "2"]) == 0
    params = json.loads((tmp_path / "s" / "synthetic.json").read_text())
    assert params["num_train"] == 3 and params["image_size"] == [64, 64] and params["num_classes"] == 2
    assert len(list((tmp_path / "s" / "val").glob("*.jpg"))) == 2
