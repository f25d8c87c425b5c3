"""The synthetic generator: deterministic bytes, the default preset unchanged, the hard preset's
statistics, exact visible boxes; the cache: reuse, one-line refusals that touch nothing, atomic and
concurrent generation; CLI."""

import hashlib
import importlib.util
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import PIL
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from detector.config import ConfigError, load_config
from detector.data import synthetic
from detector.data.base import DatasetError
from detector.data.build import build_dataset
from detector.data.synthetic import (
    DISTRACTORS,
    PARAMS_FILE,
    SHAPES,
    _draw_shape,
    ensure_synthetic,
    generate_synthetic,
    render_image,
)

REPO = Path(__file__).resolve().parent.parent
# every key: the defaults live in configs/base.yaml alone
SMALL = {
    **load_config().data.synthetic.to_dict(),
    "num_train": 6,
    "num_val": 3,
    "image_size": [96, 128],
    "num_classes": 6,
    "max_objects": 5,
}


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def synthetic_keys(cfgs=(), *overrides) -> dict:
    """The ``data.synthetic`` keys as build_dataset passes them to the generator."""
    return load_config(list(cfgs), list(overrides)).data.synthetic.to_dict()


def hard_keys(*overrides) -> dict:
    return synthetic_keys(["data/synthetic_hard.yaml"], *overrides)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = folder_bytes(generate_synthetic(tmp_path / "a", **{**SMALL, "seed": 3}))
    b = folder_bytes(generate_synthetic(tmp_path / "b", **{**SMALL, "seed": 3}))
    c = folder_bytes(generate_synthetic(tmp_path / "c", **{**SMALL, "seed": 4}))
    assert len(a) == 6 + 3 + 2 + 1 and a == b
    assert a["annotations/instances_train.json"] != c["annotations/instances_train.json"]
    assert a["train/000001.jpg"] != c["train/000001.jpg"]


# sha256 of the two annotation files and of the raw pixels (before JPEG) of every image, computed
# once with the generator as it was before the hard preset (/tmp/old_main, 2026-12-01, numpy 2.4.6,
# Pillow 13.0.0). Drawing and random streams are those libraries', so the pins hold for those
# versions.
PINNED_VERSIONS = ("2.4", "13.0")
PINS = [  # (overrides of the base.yaml defaults, annotations sha256, pixels sha256)
    (
        # the quickstart set's first 8 + 4 images
        [
            "data.synthetic.num_train=8",
            "data.synthetic.num_val=4",
        ],
        "e33c6853f8d142f1b2e29e2f22e701409679fca5fb13826a2cf04d058321fb98",
        "203b33294f4086d2fbe42ab085a44f03ccaca8da44928aa5012c50e287513e0f",
    ),
    (
        [
            "data.synthetic.num_train=6",
            "data.synthetic.num_val=3",
            "data.synthetic.image_size=[96,128]",
            "data.synthetic.num_classes=6",
            "data.synthetic.max_objects=5",
            "data.synthetic.seed=3",
        ],
        "81f9b4049765bb0b6f0f962750ab405c2e123c12e7b18890b6532c55fa234d0f",
        "f292652c6ddcdfe41ce65d21dc42c46c401b424a59e6fdde4a347382cc3ed5f0",
    ),
]


@pytest.mark.skipif(
    tuple(".".join(v.split(".")[:2]) for v in (np.__version__, PIL.__version__)) != PINNED_VERSIONS,
    reason=f"pins made with numpy/Pillow {PINNED_VERSIONS}",
)
@pytest.mark.parametrize("overrides, annotations_sha, pixels_sha", PINS)
def test_default_keys_reproduce_the_first_generator(
    tmp_path, overrides, annotations_sha, pixels_sha
):
    keys = synthetic_keys((), *overrides)
    root = ensure_synthetic(tmp_path / "s", **keys)
    annotations = b"".join(
        (root / "annotations" / f"instances_{s}.json").read_bytes() for s in ("train", "val")
    )
    assert hashlib.sha256(annotations).hexdigest() == annotations_sha
    pixels = hashlib.sha256()
    for split_index, count in enumerate((keys["num_train"], keys["num_val"])):
        for i in range(count):
            rng = np.random.default_rng([keys["seed"], split_index, i])
            image, _, _ = render_image(rng, keys)
            pixels.update(np.asarray(image).tobytes())
    assert pixels.hexdigest() == pixels_sha


def test_annotations_are_valid_coco_with_limited_overlap(tmp_path):
    root = generate_synthetic(
        tmp_path / "s",
        **{**SMALL, "num_train": 40, "num_val": 2, "image_size": (160, 160), "max_objects": 6},
    )
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in data["categories"]] == list(SHAPES)
    assert len(data["images"]) == 40 and len(data["annotations"]) >= 40
    by_image = {}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 160 and y + h <= 160
        assert min(w, h) >= 20 and 0 < ann["area"] <= w * h and ann["iscrowd"] == 0
        by_image.setdefault(ann["image_id"], []).append([x, y, x + w, y + h])
    for boxes in by_image.values():
        iou = box_iou(
            torch.tensor(boxes, dtype=torch.float), torch.tensor(boxes, dtype=torch.float)
        )
        assert (iou.fill_diagonal_(0) <= SMALL["max_iou"] + 1e-6).all()
    assert len({a["category_id"] for a in data["annotations"]}) == 6


@pytest.mark.parametrize("shape", SHAPES + DISTRACTORS)
def test_every_shape_fills_its_box(shape):
    mask = _draw_shape(shape, 40, 30)
    # the object's box is this extent, so it is exact for every shape
    x0, y0, x1, y1 = mask.getbbox()
    assert 0 <= x0 and 0 <= y0 and x1 <= 40 and y1 <= 30
    assert x1 - x0 >= 36 and y1 - y0 >= 27  # a star's tips stop a little short of the drawing area


def hard_images(count, **scene_overrides):
    """(image, objects, drawn) of the hard preset at 256 px, with data.synthetic keys replaced by
    ``scene_overrides``."""
    keys = {**hard_keys(), **scene_overrides}
    return [render_image(np.random.default_rng([keys["seed"], 0, i]), keys) for i in range(count)]


def test_hard_preset_statistics_against_the_default():
    def stats(images):
        counts = [len(objects) for _, objects, _ in images]
        anns = [a for _, objects, _ in images for a in objects if not a["iscrowd"]]
        ratios = np.array([a["bbox"][2] / a["bbox"][3] for a in anns])
        small = np.mean([a["area"] < 32**2 for a in anns])
        tiny = np.mean([a["area"] < 16**2 for a in anns])
        return np.array(counts), ratios, small, tiny

    keys = synthetic_keys()
    default = [render_image(np.random.default_rng([0, 0, i]), keys) for i in range(30)]
    hard = hard_images(30)
    # 3.1 objects an image, 34% small, none tiny
    d_counts, d_ratios, d_small, d_tiny = stats(default)
    # 8.9 objects, 67% small, 38% tiny, w/h 0.21-5.5
    h_counts, h_ratios, h_small, h_tiny = stats(hard)
    assert d_counts.max() <= 6 and h_counts.mean() >= 2 * d_counts.mean() and h_counts.max() >= 12
    # more small objects (COCO small: area < 32^2 px)
    assert h_small >= 0.5 and h_small >= 1.5 * d_small
    assert d_tiny == 0 and h_tiny >= 0.25  # and many under 16^2
    assert (
        1 / 2 < d_ratios.min()
        and d_ratios.max() < 2
        and h_ratios.max() >= 5
        and h_ratios.min() <= 1 / 4.5
    )
    names = [d[0] for _, _, drawn in hard for d in drawn]
    assert set(DISTRACTORS) <= set(names) and set(names) - set(DISTRACTORS) == set(
        SHAPES[: keys["num_classes"]]
    )
    labelled = sum(len(objects) for _, objects, _ in hard)
    # distractors drawn, never annotated
    assert labelled <= sum(n in SHAPES for n in names) < len(names)
    assert any(a["iscrowd"] for _, objects, _ in hard for a in objects)


def test_hard_boxes_are_the_extents_of_the_visible_pixels():
    """Without noise, an object's visible pixels are those of its colour: box, area and iscrowd
    follow from them."""
    checked = occluded = 0
    for image, objects, drawn in hard_images(12, noise=0.0):
        pixels = np.asarray(image)  # [H,W,3]
        shapes = [d for d in drawn if d[0] in SHAPES]
        kept = iter(objects)
        for name, x, y, w, h, color in shapes:
            visible = np.zeros(pixels.shape[:2], dtype=bool)
            visible[y : y + h, x : x + w] = (pixels[y : y + h, x : x + w] == color).all(axis=-1)
            ys, xs = np.nonzero(visible)
            if len(xs) == 0:
                continue  # fully hidden: not annotated
            ann = next(kept)
            assert ann["category_id"] == SHAPES.index(name) + 1
            assert ann["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() + 1 - xs.min(),
                ys.max() + 1 - ys.min(),
            ]
            assert ann["area"] == len(xs)
            whole = int((np.asarray(_draw_shape(name, w, h)) > 0).sum())
            assert ann["iscrowd"] == int(len(xs) < 0.4 * whole)
            checked += 1
            occluded += len(xs) < whole
        # no annotation without a visible class shape: none for distractors
        assert next(kept, None) is None
    assert checked > 60 and occluded > 10


def test_hard_preset_is_deterministic_and_loads(tmp_path):
    overrides = ["data.synthetic.num_train=3", "data.synthetic.num_val=2"]
    a = folder_bytes(ensure_synthetic(tmp_path / "a", **hard_keys(*overrides)))
    b = folder_bytes(ensure_synthetic(tmp_path / "b", **hard_keys(*overrides)))
    assert a == b and len(a) == 3 + 2 + 2 + 1
    ds = build_dataset(
        load_config(["data/synthetic_hard.yaml"], [f"data.root={tmp_path / 'a'}", *overrides]),
        "val",
    )
    _, target = ds[0]
    assert len(target["boxes"]) >= 3 and target["iscrowd"].dtype == torch.bool


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.synthetic.boxes=modal", "choose from amodal, visible"),
        ("data.synthetic.aspect_ratio=[2.0, 1.0]", "0 < low <= high"),
        ("data.synthetic.min_visible=1.5", "must be in [0, 1]"),
    ],
)
def test_bad_generator_keys_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config([], [override])


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "data.synthetic.min_objects=7",
            r"data.synthetic.min_objects \(7\) must be <= data.synthetic.max_objects \(6\)",
        ),
        (
            "data.synthetic.image_size=[40,256]",
            r"data.synthetic.image_size=\[40, 256\] must be \[height, width\], each",
        ),
        ("data.synthetic.image_size=[256]", r"must be \[height, width\]"),
        ("data.synthetic.num_classes=7", r"must be in 1..6"),
    ],
)
def test_keys_that_do_not_fit_together_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config([], [override])


def test_build_dataset_generates_reuses_and_refuses_other_keys(tmp_path):
    root = tmp_path / "syn"
    overrides = [
        f"data.root={root}",
        "data.synthetic.num_train=4",
        "data.synthetic.num_val=2",
        "data.synthetic.image_size=[64, 80]",
    ]
    ds = build_dataset(load_config([], overrides), "train")
    assert len(ds) == 4 and ds.classes == ["__background__", *SHAPES[:4]]
    image, target = ds[(0, 11)]
    assert image.dtype == torch.uint8 and target["orig_size"] == (64, 80)
    stamp = (root / "train" / "000001.jpg").stat().st_mtime_ns
    assert len(build_dataset(load_config([], overrides), "val")) == 2
    assert (root / "train" / "000001.jpg").stat().st_mtime_ns == stamp  # reused
    before = folder_bytes(root)
    with pytest.raises(DatasetError) as info:
        build_dataset(
            load_config([], overrides + ["data.synthetic.num_train=5", "data.synthetic.noise=4.0"]),
            "train",
        )
    message = str(info.value)
    assert (
        "\n" not in message and message.startswith(f"{root}: ") and "delete the folder" in message
    )
    assert "noise 8.0 -> 4.0, num_train 4 -> 5)" in message and "data.root" in message
    # untouched, no temporary left
    assert folder_bytes(root) == before and sorted(os.listdir(tmp_path)) == ["syn"]


def test_a_stored_manifest_of_before_2026_12_is_reused(tmp_path):
    root = ensure_synthetic(tmp_path / "syn", **SMALL)
    params = json.loads((root / PARAMS_FILE).read_text())
    (root / PARAMS_FILE).write_text(
        json.dumps({"params": params, "complete": True, "files": ["train/000001.jpg"]})
    )
    stamp = (root / "val" / "000001.jpg").stat().st_mtime_ns
    ensure_synthetic(root, **SMALL)
    assert (root / "val" / "000001.jpg").stat().st_mtime_ns == stamp


# a file of that name but not a manifest
@pytest.mark.parametrize("content", ["precious.txt", PARAMS_FILE])
def test_a_folder_with_other_files_is_refused_and_untouched(tmp_path, content):
    (tmp_path / content).write_text("keep me")
    with pytest.raises(DatasetError, match="holds other files and no synthetic dataset") as info:
        ensure_synthetic(tmp_path, **SMALL)
    assert "\n" not in str(info.value) and os.listdir(tmp_path) == [content]
    assert (tmp_path / content).read_text() == "keep me"


def test_an_empty_folder_is_generated_into(tmp_path):
    (tmp_path / "syn").mkdir()
    root = ensure_synthetic(tmp_path / "syn", **SMALL)
    assert folder_bytes(root) == folder_bytes(generate_synthetic(tmp_path / "fresh", **SMALL))


def test_an_interrupted_generation_leaves_no_folder(tmp_path, monkeypatch):
    save, saved = Image.Image.save, []

    def save_then_stop(self, *args, **kwargs):
        if len(saved) == 3:
            raise KeyboardInterrupt
        saved.append(args[0])
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path / "syn", **SMALL)
    assert len(saved) == 3 and os.listdir(tmp_path) == []  # neither root nor the temporary folder


def lose_the_race_to(monkeypatch, root, keys):
    """Make generate_synthetic behave as if another process renamed its set of ``keys`` onto root
    meanwhile."""

    def generate_and_lose(tmp, **ours):
        generate_synthetic(root, **keys)
        return generate_synthetic(tmp, **ours)

    monkeypatch.setattr(synthetic, "generate_synthetic", generate_and_lose)


def test_a_lost_race_uses_the_winners_set_after_checking_it(tmp_path, monkeypatch):
    lose_the_race_to(monkeypatch, tmp_path / "a", SMALL)
    ensure_synthetic(tmp_path / "a", **SMALL)
    assert os.listdir(tmp_path) == ["a"]  # our temporary folder is gone
    lose_the_race_to(monkeypatch, tmp_path / "b", {**SMALL, "seed": 1})
    with pytest.raises(DatasetError, match="seed 1 -> 0"):
        ensure_synthetic(tmp_path / "b", **SMALL)
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_a_killed_generations_folder_is_named_not_deleted(tmp_path, caplog):
    leftover = tmp_path / ".syn.tmp-999999999-0123abcd"  # above any pid_max: no such process
    leftover.mkdir()
    ensure_synthetic(tmp_path / "syn", **SMALL)
    assert f"{leftover}: left by a killed generation" in caplog.text and leftover.is_dir()


def _ensure_after(barrier, root):
    barrier.wait()  # all start at once: each generates, one rename wins
    ensure_synthetic(root, **SMALL)


def test_concurrent_generations_of_one_root(tmp_path):
    """Ablation jobs (and DDP ranks) build the same data.root at once: all succeed, one complete set
    remains."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(3)
    workers = [
        context.Process(target=_ensure_after, args=(barrier, tmp_path / "syn")) for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0] and os.listdir(tmp_path) == ["syn"]
    assert folder_bytes(tmp_path / "syn") == folder_bytes(
        generate_synthetic(tmp_path / "fresh", **SMALL)
    )


def load_tool():
    spec = importlib.util.spec_from_file_location(
        "make_synthetic", REPO / "tools" / "make_synthetic.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_make_synthetic_cli(tmp_path, capsys):
    tool = load_tool()
    assert (
        tool.main(
            [
                "--root",
                str(tmp_path / "s"),
                "--num-train",
                "3",
                "--num-val",
                "2",
                "--image-size",
                "64",
                "64",
                "--num-classes",
                "2",
            ]
        )
        == 0
    )
    params = json.loads((tmp_path / "s" / PARAMS_FILE).read_text())
    assert (
        params["num_train"] == 3 and params["image_size"] == [64, 64] and params["num_classes"] == 2
    )
    assert len(list((tmp_path / "s" / "val").glob("*.jpg"))) == 2
    assert (
        tool.main(
            [
                "--cfg",
                "data/synthetic_hard.yaml",
                "--root",
                str(tmp_path / "h"),
                "--num-train",
                "2",
                "data.synthetic.num_val=1",
            ]
        )
        == 0
    )
    params = json.loads((tmp_path / "h" / PARAMS_FILE).read_text())
    assert [params[k] for k in ("boxes", "background", "num_train", "num_val")] == [
        "visible",
        "texture",
        2,
        1,
    ]
    capsys.readouterr()
    # other keys
    assert tool.main(["--cfg", "data/synthetic_hard.yaml", "--root", str(tmp_path / "h")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "num_train 2 -> 256, num_val 1 -> 128" in err
