"""COCO-format loading on tiny trees written here (real JPEGs, real JSON): targets, bad input,
subsets, the real coco_tiny subset, tools/make_subset.py."""

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.config import load_config
from detector.data.base import DatasetError
from detector.data.build import build_dataset

REPO = Path(__file__).resolve().parent.parent

CATEGORIES = [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]


def write_jpeg(path: Path, height: int, width: int, mode: str = "RGB", seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, format="JPEG")


def ann(ann_id, image_id, category_id, bbox, **extra):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "iscrowd": 0,
        **extra,
    }


def default_annotations():
    # car (image 3 is grayscale)
    return [
        ann(1, 1, 1, [10, 20, 30, 40], area=900.0),  # person
        ann(2, 1, 3, [50, 5, 20, 10]),  # car, no area -> box area
        ann(3, 1, 18, [0, 0, 64, 48], iscrowd=1),  # dog crowd
        ann(4, 2, 18, [5, 5, 10, 10]),  # dog
        ann(5, 3, 3, [1, 1, 8, 8]),
    ]


def write_coco(root: Path, split: str = "train", annotations=None, images=None, modes=None) -> Path:
    # no annotations
    images = images or [
        {"id": 1, "file_name": "a.jpg", "height": 48, "width": 64},
        {"id": 2, "file_name": "b.jpg", "height": 64, "width": 40},
        {"id": 3, "file_name": "c.jpg", "height": 32, "width": 32},
        {"id": 4, "file_name": "d.jpg", "height": 40, "width": 40},
    ]
    for k, im in enumerate(images):
        write_jpeg(
            root / split / im["file_name"],
            im["height"],
            im["width"],
            (modes or {}).get(im["id"], "RGB"),
            k,
        )
    data = {
        "images": images,
        "annotations": default_annotations() if annotations is None else annotations,
        "categories": CATEGORIES,
    }
    ann_file = root / "annotations" / f"instances_{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(data))
    return ann_file


def image_ids(ds) -> list[int]:
    return [ds.get_image_info(i)["image_id"] for i in range(len(ds))]


def coco_cfg(root: Path, *overrides: str):
    return load_config(
        [],
        [
            "data.format=coco",
            f"data.root={root}",
            "data.train_split=train",
            "data.val_split=train",
            *overrides,
        ],
    )


def test_coco_targets_labels_and_conversion(tmp_path):
    write_coco(tmp_path, modes={3: "L"})
    ds = build_dataset(coco_cfg(tmp_path), "val", transforms=False)
    assert len(ds) == 4
    assert ds.classes == ["__background__", "person", "car", "dog"]  # sorted category ids 1, 3, 18
    assert ds.label_to_cat_id == {1: 1, 2: 3, 3: 18}
    image, target = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 64)
    assert target["image_id"] == 1
    # clipped to 64x48
    expected = torch.tensor(
        [[10.0, 20.0, 40.0, 48.0], [50.0, 5.0, 64.0, 15.0], [0.0, 0.0, 64.0, 48.0]]
    )
    torch.testing.assert_close(target["boxes"], expected)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["labels"].tolist() == [1, 2, 3]
    assert target["iscrowd"].tolist() == [False, False, True]
    assert target["area"].tolist() == [900.0, 200.0, 64.0 * 48.0]
    assert ds.get_image_info(1) == {"image_id": 2, "file_name": "b.jpg", "height": 64, "width": 40}
    assert ds[2][0].shape == (3, 32, 32)  # grayscale JPEG decoded to RGB
    assert len(ds.get_target(3)["boxes"]) == 0 and ds.get_target(3)["boxes"].shape == (0, 4)


def test_coco_cmyk_image_decodes_to_rgb(tmp_path):
    write_coco(tmp_path, modes={2: "CMYK"})
    ds = build_dataset(coco_cfg(tmp_path), "val", transforms=False)
    assert ds[1][0].shape == (3, 64, 40)


def test_bad_boxes_are_clipped_or_dropped_and_counted_once(tmp_path, caplog):
    annotations = [
        ann(1, 1, 1, [10, 10, 0, 5]),  # zero width: degenerate
        ann(2, 1, 1, [10, 10, 5, -2]),  # negative height: degenerate
        ann(3, 2, 1, [100, 100, 5, 5]),  # fully outside (image 40x64)
        ann(4, 2, 3, [30, 50, 20, 30]),  # partly outside: clipped
        ann(5, 3, 3, [1, 1, 8, 8]),
    ]
    write_coco(tmp_path, annotations=annotations)
    with caplog.at_level(logging.INFO, logger="detector.data.base"):
        ds = build_dataset(coco_cfg(tmp_path), "val", transforms=False)
    messages = [r.getMessage() for r in caplog.records]
    assert any("dropped 2 degenerate" in m and "in 1 images: ids 1" in m for m in messages), (
        messages
    )
    assert any("dropped 1 fully outside" in m and "ids 2" in m for m in messages), messages
    assert any("clipped 1 boxes" in m for m in messages), messages
    assert len(ds.get_target(0)["boxes"]) == 0
    torch.testing.assert_close(ds.get_target(1)["boxes"], torch.tensor([[30.0, 50.0, 40.0, 64.0]]))


def test_unknown_category_names_the_annotation(tmp_path):
    write_coco(tmp_path, annotations=[ann(77, 1, 99, [1, 1, 5, 5])])
    with pytest.raises(
        DatasetError, match=r"instances_train.json: annotation 77 has category_id 99"
    ):
        build_dataset(coco_cfg(tmp_path), "train")


def test_malformed_json_names_the_file(tmp_path):
    ann_file = write_coco(tmp_path)
    ann_file.write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"instances_train.json: not valid JSON"):
        build_dataset(coco_cfg(tmp_path), "train")


def test_missing_field_names_file_and_annotation(tmp_path):
    write_coco(tmp_path, annotations=[{"id": 5, "image_id": 1, "category_id": 1}])
    with pytest.raises(
        DatasetError, match=r"instances_train.json: annotation 5 lacks field 'bbox'"
    ):
        build_dataset(coco_cfg(tmp_path), "train")


def test_missing_annotation_file_says_where(tmp_path):
    with pytest.raises(DatasetError, match=r"instances_train.json: annotation file not found"):
        build_dataset(coco_cfg(tmp_path), "train")


def test_missing_images_are_listed_at_construction(tmp_path):
    write_coco(tmp_path)
    (tmp_path / "train" / "b.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 of 4 image files are missing: .*b\.jpg"):
        build_dataset(coco_cfg(tmp_path), "val")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_image_raises_with_the_path(tmp_path, damage):
    write_coco(tmp_path)
    path = tmp_path / "train" / "a.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not an image" * 20)
    ds = build_dataset(coco_cfg(tmp_path), "val", transforms=False)
    with pytest.raises(DatasetError, match=r"a\.jpg: cannot decode image"):
        ds[0]


def test_wrong_size_in_json_raises(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "height": 48, "width": 64}]
    write_coco(tmp_path, annotations=[], images=images)
    write_jpeg(tmp_path / "train" / "a.jpg", 30, 64)
    with pytest.raises(DatasetError, match=r"a\.jpg: image is 64x30 .* says 64x48"):
        build_dataset(coco_cfg(tmp_path), "val", transforms=False)[0]


def write_png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG of ``pixels`` (uint16 [H,W] gray or [H,W,3] RGB), written by hand: PIL cannot
    write 16-bit RGB."""
    import struct
    import zlib

    height, width = pixels.shape[:2]
    color = 2 if pixels.ndim == 3 else 0
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, color, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("kind", ["gray-png-pil", "rgb-png", "gray-tiff-pil"])
def test_16_bit_images_are_scaled_to_8_bit(tmp_path, kind):
    """A 16-bit image decodes to the uint8 RGB of the same picture (v / 257 rounded), whichever
    decoder reads it."""
    from detector.data.base import read_image

    rng = np.random.default_rng(0)
    shape = (12, 10) if kind.startswith("gray") else (12, 10, 3)
    picture8 = rng.integers(0, 256, size=shape, dtype=np.uint8)
    picture8.flat[:2] = [0, 255]
    path = tmp_path / ("a.tif" if kind.endswith("tiff-pil") else "a.png")
    if kind == "rgb-png":
        write_png16(path, picture8.astype(np.uint16) * 257)
    else:
        Image.fromarray(picture8.astype(np.uint16) * 257).save(path)  # PIL mode I;16
        assert Image.open(path).mode == "I;16"
    expected = torch.from_numpy(
        np.asarray(Image.fromarray(picture8).convert("RGB")).copy()
    ).permute(2, 0, 1)
    image = read_image(path)
    assert image.dtype == torch.uint8 and image.shape == (3, 12, 10)
    torch.testing.assert_close(image, expected, rtol=0, atol=0)
    # values between the multiples of 257 round to the nearest 8-bit level (>> 8 would be within 1
    # too)
    values = rng.integers(0, 65536, size=shape, dtype=np.uint16)
    values.flat[:2] = [65535, 128]
    if kind == "rgb-png":
        write_png16(path, values)
    else:
        Image.fromarray(values).save(path)
    image = read_image(path).int()
    want = torch.from_numpy(np.rint(values / 257.0).astype(np.int32))
    want = want.expand(3, *shape) if want.ndim == 2 else want.permute(2, 0, 1)
    assert (image - want).abs().max() <= 1 and image.max() == 255


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "1"])
def test_png_modes_decode_to_their_rgb(tmp_path, mode):
    from detector.data.base import read_image

    pixels = np.random.default_rng(1).integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    picture = Image.fromarray(pixels).convert(mode)
    picture.save(tmp_path / "a.png")
    expected = torch.from_numpy(np.asarray(picture.convert("RGB")).copy()).permute(2, 0, 1)
    torch.testing.assert_close(read_image(tmp_path / "a.png"), expected, rtol=0, atol=0)


def test_32_bit_images_are_refused_by_name(tmp_path):
    from detector.data.base import read_image

    # PIL mode I
    Image.fromarray(np.full((6, 5), 70000, dtype=np.int32)).save(tmp_path / "deep.tif")
    with pytest.raises(DatasetError, match=r"deep\.tif: .*mode I.*8-bit"):
        read_image(tmp_path / "deep.tif")


@pytest.mark.parametrize(
    "file_name", ["../outside.jpg", "sub/../../outside.jpg", "/tmp/outside.jpg"]
)
def test_file_names_outside_the_image_folder_are_refused(tmp_path, file_name):
    images = [
        {"id": 1, "file_name": "a.jpg", "height": 48, "width": 64},
        {"id": 7, "file_name": file_name, "height": 48, "width": 64},
    ]
    write_coco(tmp_path, annotations=[], images=images[:1])
    ann_file = tmp_path / "annotations" / "instances_train.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": [], "categories": CATEGORIES}))
    write_jpeg(tmp_path / "outside.jpg", 48, 64)
    with pytest.raises(
        DatasetError,
        match=r"instances_train\.json: image 7 has file_name '.*outside\.jpg', which is "
        r"outside the image folder",
    ):
        build_dataset(coco_cfg(tmp_path), "val", transforms=False)


def test_file_names_that_stay_inside_and_symlinked_folders_are_fine(tmp_path):
    images = [{"id": 1, "file_name": "sub/../a.jpg", "height": 48, "width": 64}]
    write_coco(
        tmp_path,
        annotations=[],
        images=[{"id": 1, "file_name": "a.jpg", "height": 48, "width": 64}],
    )
    (tmp_path / "annotations" / "instances_train.json").write_text(
        json.dumps({"images": images, "annotations": [], "categories": CATEGORIES})
    )
    (tmp_path / "train" / "sub").mkdir()
    assert build_dataset(coco_cfg(tmp_path), "val", transforms=False)[0][0].shape == (3, 48, 64)


@pytest.mark.parametrize(
    "where, entry, field, value",
    [
        ("annotation", 0, "bbox", [10, "20", 30, 40]),
        ("annotation", 0, "bbox", [10, True, 30, 40]),
        ("annotation", 0, "bbox", [10, 20, 30]),
        ("annotation", 0, "area", "900"),
        ("annotation", 0, "iscrowd", "0"),
        ("image", 0, "height", "48"),
        ("image", 0, "width", None),
        ("image", 1, "id", "2"),
        ("category", 0, "id", "3"),
    ],
)
def test_text_in_a_numeric_field_names_file_entry_and_field(tmp_path, where, entry, field, value):
    ann_file = write_coco(tmp_path)
    data = json.loads(ann_file.read_text())
    item = data[{"annotation": "annotations", "image": "images", "category": "categories"}[where]][
        entry
    ]
    item[field] = value
    ann_file.write_text(json.dumps(data))
    name = item["id"] if field != "id" else "?"
    with pytest.raises(DatasetError) as err:
        build_dataset(coco_cfg(tmp_path), "val", transforms=False)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(ann_file)), message
    assert f"{where} " in message and f"field {field!r}" in message and "number" in message, message
    if field != "id":
        assert f"{where} {name} " in message, message


def test_a_duplicate_image_id_names_both_entries(tmp_path):
    images = [
        {"id": 1, "file_name": "a.jpg", "height": 48, "width": 64},
        {"id": 2, "file_name": "b.jpg", "height": 64, "width": 40},
        {"id": 1, "file_name": "c.jpg", "height": 32, "width": 32},
    ]
    write_coco(tmp_path, annotations=[], images=images[:2])
    (tmp_path / "annotations" / "instances_train.json").write_text(
        json.dumps({"images": images, "annotations": [], "categories": CATEGORIES})
    )
    with pytest.raises(
        DatasetError,
        match=r"instances_train\.json: image id 1 is used twice in 'images': entry 0 "
        r"\(file_name 'a\.jpg'\) and entry 2 \(file_name 'c\.jpg'\)",
    ):
        build_dataset(coco_cfg(tmp_path), "val", transforms=False)


def test_training_images_without_boxes_are_dropped_by_default_and_val_keeps_them(tmp_path):
    """keep_empty defaults to false (detectron2's FILTER_EMPTY_ANNOTATIONS); the val split keeps
    every image."""
    write_coco(tmp_path)
    assert len(build_dataset(coco_cfg(tmp_path), "train")) == 3  # image 4 has no box
    assert len(build_dataset(coco_cfg(tmp_path), "val")) == 4
    assert len(build_dataset(coco_cfg(tmp_path, "data.keep_empty=true"), "train")) == 4
    assert len(build_dataset(coco_cfg(tmp_path, "data.keep_empty=true"), "val")) == 4


def test_size_subsets_cut_the_training_split_only(tmp_path):
    """data.max_images / fraction / image_ids_file select training images; val is scored whole."""
    write_coco(tmp_path)
    id_file = tmp_path / "ids.txt"
    id_file.write_text("2\n")
    for subset in ("data.max_images=1", "data.fraction=0.3", f"data.image_ids_file={id_file}"):
        cfg = coco_cfg(tmp_path, subset, "data.keep_empty=true")
        assert len(build_dataset(cfg, "train")) == 1, subset
        assert image_ids(build_dataset(cfg, "val")) == [1, 2, 3, 4], subset


def test_val_subset_keys_cut_the_val_split_only(tmp_path):
    write_coco(tmp_path)
    id_file = tmp_path / "val_ids.txt"
    id_file.write_text("4\n1\n")
    cfg = coco_cfg(tmp_path, f"data.val_image_ids_file={id_file}", "data.keep_empty=true")
    assert image_ids(build_dataset(cfg, "val")) == [1, 4] and image_ids(
        build_dataset(cfg, "train")
    ) == [1, 2, 3, 4]
    cfg = coco_cfg(tmp_path, "data.val_fraction=0.5", "data.subset_seed=3")
    half = image_ids(build_dataset(cfg, "val"))
    assert len(half) == 2 and half == sorted(half) and len(build_dataset(cfg, "train")) == 3
    id_file.write_text("998\n")
    with pytest.raises(DatasetError, match=r"none of the 1 ids in data.val_image_ids_file"):
        build_dataset(coco_cfg(tmp_path, f"data.val_image_ids_file={id_file}"), "val")


def test_classes_apply_to_both_splits(tmp_path):
    """The model's classes are the kept ones, so val is scored on exactly those (relabelled
    alike)."""
    write_coco(tmp_path)
    cfg = coco_cfg(tmp_path, "data.classes=[dog]")
    train, val = (
        build_dataset(cfg, "train", transforms=False),
        build_dataset(cfg, "val", transforms=False),
    )
    assert train.classes == val.classes == ["__background__", "dog"] and val.label_to_cat_id == {
        1: 18
    }
    # training drops images without a (non-crowd) dog; val keeps all
    assert len(train) == 1 and len(val) == 4
    assert [val.get_target(i)["labels"].tolist() for i in range(4)] == [[1], [1], [], []]


def test_empty_training_subset_names_the_training_keys(tmp_path):
    write_coco(tmp_path, annotations=[])
    with pytest.raises(
        DatasetError,
        match=r"no train images left after the subset settings \(data.classes, "
        r"data.keep_empty, data.image_ids_file, data.fraction, data.max_images\)",
    ):
        build_dataset(coco_cfg(tmp_path), "train")


def test_class_subset_relabels_in_the_given_order(tmp_path):
    write_coco(tmp_path)
    ds = build_dataset(
        coco_cfg(tmp_path, "data.classes=[dog, car]", "data.keep_empty=false"),
        "train",
        transforms=False,
    )
    assert ds.classes == ["__background__", "dog", "car"]
    assert ds.label_to_cat_id == {1: 18, 2: 3}
    assert [ds.get_image_info(i)["image_id"] for i in range(len(ds))] == [1, 2, 3]
    assert ds.get_target(0)["labels"].tolist() == [2, 1]  # car, dog(crowd)
    assert ds.get_target(1)["labels"].tolist() == [1]


def test_unknown_class_name_suggests_a_close_one(tmp_path):
    write_coco(tmp_path)
    with pytest.raises(DatasetError, match=r"'dgo'.*did you mean 'dog'"):
        build_dataset(coco_cfg(tmp_path, "data.classes=[dgo]"), "train")


def test_max_images_fraction_and_id_file(tmp_path):
    write_coco(tmp_path)
    assert image_ids(build_dataset(coco_cfg(tmp_path, "data.max_images=2"), "train")) == [1, 2]
    half = image_ids(
        build_dataset(coco_cfg(tmp_path, "data.fraction=0.5", "data.subset_seed=3"), "train")
    )
    assert len(half) == 2 and half == sorted(half)
    assert half == image_ids(
        build_dataset(coco_cfg(tmp_path, "data.fraction=0.5", "data.subset_seed=3"), "train")
    )
    draws = {
        tuple(
            image_ids(
                build_dataset(
                    coco_cfg(tmp_path, "data.fraction=0.5", f"data.subset_seed={s}"), "train"
                )
            )
        )
        for s in range(8)
    }
    assert len(draws) > 1
    id_file = tmp_path / "ids.txt"
    id_file.write_text("3\n# a comment\n1\n999\n")
    assert image_ids(
        build_dataset(coco_cfg(tmp_path, f"data.image_ids_file={id_file}"), "train")
    ) == [1, 3]
    id_file.write_text("998\n")
    with pytest.raises(DatasetError, match="none of the 1 ids"):
        build_dataset(coco_cfg(tmp_path, f"data.image_ids_file={id_file}"), "train")


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_subset_writes_a_coco_file_that_loads(tmp_path):
    ann_file = write_coco(tmp_path)
    out = tmp_path / "annotations" / "instances_sub.json"
    rc = load_tool("make_subset").main(
        [
            "--format",
            "coco",
            "--ann",
            str(ann_file),
            "--classes",
            "dog",
            "--max-images",
            "5",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert [im["id"] for im in data["images"]] == [2]  # image 1 has only a crowd dog
    assert [a["id"] for a in data["annotations"]] == [4]
    assert data["categories"] == [{"id": 18, "name": "dog"}]
    (tmp_path / "sub").symlink_to(tmp_path / "train")
    ds = build_dataset(coco_cfg(tmp_path, "data.train_split=sub"), "train", transforms=False)
    assert (
        ds.classes == ["__background__", "dog"] and ds.label_to_cat_id == {1: 18} and len(ds) == 1
    )


def test_real_coco_tiny_loads_completely(coco_tiny):
    for split in ("train2017", "val2017"):
        raw = json.loads((coco_tiny / "annotations" / f"instances_{split}.json").read_text())
        cfg = coco_cfg(coco_tiny, f"data.val_split={split}")
        ds = build_dataset(cfg, "val", transforms=False)
        assert len(ds) == len(raw["images"])
        assert len(ds.classes) - 1 == len(raw["categories"])
        num_boxes = 0
        for i in range(len(ds)):
            image, target = ds[i]
            info = ds.get_image_info(i)
            assert image.dtype == torch.uint8 and image.shape == (3, info["height"], info["width"])
            boxes = target["boxes"][~target["iscrowd"]]
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= info["width"]).all()
            assert (boxes[:, 3] <= info["height"]).all() and (boxes[:, 2:] > boxes[:, :2]).all()
            assert ((target["labels"] >= 1) & (target["labels"] <= len(ds.classes) - 1)).all()
            num_boxes += len(target["boxes"])
        valid = [a for a in raw["annotations"] if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        assert num_boxes == len(valid)
