"""PASCAL VOC loading on tiny VOCdevkit trees written here (real JPEGs, real XML): 1-based
conversion, difficult, 07+12 concatenation, bad XML, subsets, tools/make_subset.py."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.config import load_config
from detector.data.base import DatasetError
from detector.data.build import build_dataset
from detector.data.voc import VOC_CLASSES

REPO = Path(__file__).resolve().parent.parent


def xml_text(width, height, objects):
    parts = [
        f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
    ]
    for name, (x1, y1, x2, y2), difficult in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def write_voc_image(devkit: Path, year: str, name: str, width: int, height: int, objects) -> None:
    base = devkit / f"VOC{year}"
    (base / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (base / "Annotations").mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(name)).integers(
        0, 256, size=(height, width, 3), dtype=np.uint8
    )
    Image.fromarray(pixels).save(base / "JPEGImages" / f"{name}.jpg", format="JPEG")
    (base / "Annotations" / f"{name}.xml").write_text(xml_text(width, height, objects))


def write_voc(root: Path) -> Path:
    devkit = root / "VOCdevkit"
    write_voc_image(
        devkit,
        "2007",
        "000005",
        50,
        40,
        [("dog", (1, 1, 50, 40), False), ("cat", (11, 6, 20, 30), True)],
    )
    write_voc_image(devkit, "2007", "000007", 30, 60, [("person", (5, 5, 25, 55), False)])
    write_voc_image(devkit, "2007", "000009", 40, 40, [])
    write_voc_image(devkit, "2012", "2008_000002", 64, 48, [("car", (10, 10, 30, 20), False)])
    for year, names in (("2007", ["000005", "000007", "000009"]), ("2012", ["2008_000002"])):
        (devkit / f"VOC{year}" / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (devkit / f"VOC{year}" / "ImageSets" / "Main" / "trainval.txt").write_text(
            "\n".join(names) + "\n"
        )
    return devkit


def voc_cfg(root, split="2007/trainval", *overrides):
    return load_config(
        [],
        [
            "data.format=voc",
            f"data.root={root}",
            f"data.train_split={split}",
            f"data.val_split={split}",
            *overrides,
        ],
    )


def test_voc_targets_one_based_conversion_and_difficult(tmp_path):
    write_voc(tmp_path)
    ds = build_dataset(voc_cfg(tmp_path), "val", transforms=False)
    assert ds.classes == ["__background__", *VOC_CLASSES] and len(ds.classes) == 21
    assert len(ds) == 3
    image, target = ds[0]
    assert image.shape == (3, 40, 50) and image.dtype == torch.uint8
    assert target["image_id"] == 5
    # detectron2's convention: (xmin - 1, ymin - 1, xmax, ymax); a full-image box covers exactly the
    # image
    torch.testing.assert_close(
        target["boxes"], torch.tensor([[0.0, 0.0, 50.0, 40.0], [10.0, 5.0, 20.0, 30.0]])
    )
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("cat") + 1]
    assert target["iscrowd"].tolist() == [False, True]
    assert target["area"].tolist() == [2000.0, 250.0]
    assert ds.get_image_info(1) == {
        "image_id": 7,
        "file_name": "000007.jpg",
        "height": 60,
        "width": 30,
    }
    assert len(ds.get_target(2)["boxes"]) == 0


def test_root_may_be_the_devkit_itself(tmp_path):
    devkit = write_voc(tmp_path)
    assert len(build_dataset(voc_cfg(devkit), "val")) == 3


def test_07_plus_12_concatenates(tmp_path):
    write_voc(tmp_path)
    ds = build_dataset(voc_cfg(tmp_path, "2007/trainval+2012/trainval"), "val", transforms=False)
    assert [ds.get_image_info(i)["image_id"] for i in range(len(ds))] == [5, 7, 9, 2008000002]
    assert ds.get_target(3)["labels"].tolist() == [VOC_CLASSES.index("car") + 1]


def test_bad_split_syntax(tmp_path):
    write_voc(tmp_path)
    with pytest.raises(DatasetError, match="not <year>/<set>"):
        build_dataset(voc_cfg(tmp_path, "trainval"), "train")


def test_missing_image_set_names_the_list(tmp_path):
    write_voc(tmp_path)
    with pytest.raises(DatasetError, match=r"ImageSets/Main/test.txt: image set list not found"):
        build_dataset(voc_cfg(tmp_path, "2007/test"), "train")


def test_malformed_xml_names_the_file(tmp_path):
    devkit = write_voc(tmp_path)
    (devkit / "VOC2007" / "Annotations" / "000007.xml").write_text("<annotation><size>")
    with pytest.raises(DatasetError, match=r"000007.xml: malformed XML"):
        build_dataset(voc_cfg(tmp_path), "train")


def test_bad_coordinate_names_file_and_field(tmp_path):
    devkit = write_voc(tmp_path)
    path = devkit / "VOC2007" / "Annotations" / "000007.xml"
    path.write_text(path.read_text().replace("<xmax>25</xmax>", "<xmax>abc</xmax>"))
    with pytest.raises(DatasetError, match=r"000007.xml: object 0 <bndbox> field <xmax> is 'abc'"):
        build_dataset(voc_cfg(tmp_path), "train")


def test_unknown_class_names_the_file(tmp_path):
    devkit = write_voc(tmp_path)
    write_voc_image(devkit, "2007", "000007", 30, 60, [("unicorn", (5, 5, 25, 55), False)])
    with pytest.raises(DatasetError, match=r"000007.xml: object 0 has <name> 'unicorn'"):
        build_dataset(voc_cfg(tmp_path), "train")


@pytest.mark.parametrize("name", ["../../../outside", "/tmp/000005"])
def test_image_set_names_cannot_leave_the_devkit(tmp_path, name):
    """Image names from ImageSets must be VOC ids (digits and _), so none can point outside
    JPEGImages."""
    devkit = write_voc(tmp_path)
    (devkit / "VOC2007" / "ImageSets" / "Main" / "trainval.txt").write_text(f"000005\n{name}\n")
    with pytest.raises(DatasetError, match=f"VOC image name {name!r} is not numeric"):
        build_dataset(voc_cfg(tmp_path), "val")


def test_missing_jpeg_is_reported_at_construction(tmp_path):
    devkit = write_voc(tmp_path)
    (devkit / "VOC2007" / "JPEGImages" / "000009.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 of 3 image files are missing: .*000009.jpg"):
        build_dataset(voc_cfg(tmp_path), "val")


def test_voc_subsets_classes_keep_empty_and_names(tmp_path):
    write_voc(tmp_path)
    ds = build_dataset(
        voc_cfg(
            tmp_path,
            "2007/trainval+2012/trainval",
            "data.classes=[person, cat, car]",
            "data.keep_empty=false",
        ),
        "train",
        transforms=False,
    )
    assert ds.classes == ["__background__", "person", "cat", "car"]
    assert ds.label_to_cat_id == {1: 15, 2: 8, 3: 7}
    # 000005 keeps only the difficult cat (no non-crowd box) and 000009 is empty: both dropped for
    # training
    assert [ds.get_image_info(i)["image_id"] for i in range(len(ds))] == [7, 2008000002]
    id_file = tmp_path / "ids.txt"
    id_file.write_text("2008_000002\n000005\n")
    ds = build_dataset(
        voc_cfg(tmp_path, "2007/trainval+2012/trainval", f"data.image_ids_file={id_file}"), "train"
    )
    assert [ds.get_image_info(i)["file_name"] for i in range(len(ds))] == [
        "000005.jpg",
        "2008_000002.jpg",
    ]


def test_make_subset_writes_a_voc_id_list(tmp_path):
    write_voc(tmp_path)
    spec = importlib.util.spec_from_file_location("make_subset", REPO / "tools" / "make_subset.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "sub.txt"
    assert (
        tool.main(
            [
                "--format",
                "voc",
                "--root",
                str(tmp_path),
                "--split",
                "2007/trainval+2012/trainval",
                "--classes",
                "person",
                "car",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.read_text() == "000007\n2008_000002\n"
    ds = build_dataset(
        voc_cfg(tmp_path, "2007/trainval+2012/trainval", f"data.image_ids_file={out}"), "train"
    )
    assert len(ds) == 2


def test_voc07_subset_config_cuts_training_only(tmp_path):
    """configs/data/voc07_subset.yaml: data.max_images selects training images; the test split is
    scored whole."""
    write_voc(tmp_path)
    cfg = load_config(
        ["data/voc07_subset.yaml"],
        [f"data.root={tmp_path}", "data.val_split=2007/trainval", "data.max_images=1"],
    )
    assert cfg.data.max_images == 1 and cfg.eval.max_images is None
    train = build_dataset(cfg, "train")
    assert [train.get_image_info(i)["image_id"] for i in range(len(train))] == [5]
    assert len(build_dataset(cfg, "val")) == 3
    assert load_config(["data/voc07_subset.yaml"]).data.max_images == 1000
