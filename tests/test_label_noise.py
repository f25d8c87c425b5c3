"""Label noise is a fixed corrupted annotation set: drawn once per box from data.label_noise_seed
(not the run's seed, unless an ablation draws it per seed), the same on every build of the dataset,
per image whatever the subset, only on the training split; jitter stays within ±scale × w/h,
outliers move or resize beyond the box size and are drawn again when moved off the image;
label_noise 0 leaves the records as they are."""

import dataclasses

import numpy as np
import pytest

from detector.config import load_config
from detector.data.base import ImageRecord, corrupt_records, realised_noise
from detector.data.build import build_dataset


def make_records(num_images=60, per_image=40, size=1000):
    """Images of ``size`` px with 20 x 10 boxes well inside (no clipping), the last box of each
    image a crowd box."""
    rng = np.random.default_rng(0)
    records = []
    for image_id in range(num_images):
        xy = rng.uniform(200, 750, (per_image, 2))
        boxes = np.concatenate([xy, xy + [20, 10]], axis=1).astype(np.float32)
        records.append(
            ImageRecord(
                image_id=image_id,
                path=f"{image_id}.png",
                file_name=f"{image_id}.png",
                height=size,
                width=size,
                boxes=boxes,
                labels=np.ones(per_image, np.int64),
                iscrowd=np.arange(per_image) == per_image - 1,
                area=np.full(per_image, 200, np.float32),
            )
        )
    return records


def changed(clean, noisy):
    """[M] bool over every box of the records: was it corrupted."""
    return np.concatenate([(a.boxes != b.boxes).any(axis=1) for a, b in zip(clean, noisy)])


def test_the_realised_rate_counts_the_boxes_noise_may_corrupt():
    # a crowd box is never corrupted, so it is no part of the rate: every one of the 39 other boxes
    # of each image moves at label_noise 1.0, a realised rate of 1 (not 39/40)
    clean = make_records(num_images=5)
    moved, total = realised_noise(clean, corrupt_records(clean, 1.0, "jitter", 0.2, seed=0))
    assert moved == total == 5 * 39


def stacked(records):
    return np.concatenate([r.boxes for r in records]).astype(np.float64)


def test_jitter_moves_about_the_fraction_within_scale_and_never_crowd():
    clean = make_records()
    noisy = corrupt_records(clean, 0.3, "jitter", 0.2, seed=0)
    moved = changed(clean, noisy)
    assert 0.25 < moved.mean() < 0.35  # 2400 boxes, 0.3 * 39/40 of them non-crowd
    assert not any((a.boxes[-1] != b.boxes[-1]).any() for a, b in zip(clean, noisy))
    shift = np.abs(stacked(noisy) - stacked(clean))
    assert (shift[:, [0, 2]] <= 0.2 * 20 + 1e-4).all() and (
        shift[:, [1, 3]] <= 0.2 * 10 + 1e-4
    ).all()
    assert all(a.labels is b.labels and a.area is b.area for a, b in zip(clean, noisy))
    assert all(r.boxes.dtype == np.float32 for r in noisy)


def test_outliers_move_or_resize_beyond_the_box_size():
    clean = make_records()
    noisy = corrupt_records(clean, 0.5, "outlier", seed=0)
    moved = changed(clean, noisy)
    assert 0.45 < moved.mean() < 0.55
    a, b = stacked(clean)[moved], stacked(noisy)[moved]
    wh, new_wh = a[:, 2:] - a[:, :2], b[:, 2:] - b[:, :2]
    # centre shift in box sizes
    step = np.hypot(*(((b[:, :2] + b[:, 2:]) - (a[:, :2] + a[:, 2:])) / 2 / wh).T)
    ratio = new_wh / wh
    shifted = step >= 1 - 1e-3
    resized = ((ratio <= 0.5 + 1e-3) | (ratio >= 2 - 1e-3)).all(axis=1)
    assert (shifted | resized).all() and (step <= 3 + 1e-3).all()
    assert ((ratio >= 0.25 - 1e-3) & (ratio <= 4 + 1e-3)).all()
    assert (shifted & ~resized).any() and (resized & ~shifted).any() and (shifted & resized).any()


def test_outliers_stay_valid_at_the_image_border():
    # 20 x 10 boxes with corners in [0, 40) of a 60 x 60 image
    small = [
        dataclasses.replace(
            r, height=60, width=60, boxes=r.boxes - np.tile(r.boxes[:, :2] // 40 * 40, 2)
        )
        for r in make_records(20, 10)
    ]
    noisy = stacked(corrupt_records(small, 1.0, "outlier"))
    assert (noisy[:, 2:] - noisy[:, :2] >= 1).all() and (noisy >= 0).all() and (noisy <= 60).all()


def test_same_corruption_every_call_per_image_and_nested_fractions():
    clean = make_records(20, 10)
    for kind in ("jitter", "outlier"):
        full = corrupt_records(clean, 0.3, kind, 0.2, seed=3)
        again = corrupt_records(clean, 0.3, kind, 0.2, seed=3)
        assert all(np.array_equal(a.boxes, b.boxes) for a, b in zip(full, again))
        # other images, another order
        subset = corrupt_records(clean[::3][::-1], 0.3, kind, 0.2, seed=3)
        assert all(np.array_equal(a.boxes, b.boxes) for a, b in zip(full[::3][::-1], subset))
        other_seed = corrupt_records(clean, 0.3, kind, 0.2, seed=4)
        assert not all(np.array_equal(a.boxes, b.boxes) for a, b in zip(full, other_seed))
        more = changed(clean, corrupt_records(clean, 0.6, kind, 0.2, seed=3))
        assert (
            more >= changed(clean, full)
        ).all()  # the boxes chosen at 0.3 are among those chosen at 0.6


def test_no_noise_returns_the_records_themselves():
    clean = make_records(5, 4)
    assert all(a is b for a, b in zip(clean, corrupt_records(clean, 0.0, "outlier", seed=9)))


def small_cfg(root, *extra):
    return load_config(
        [],
        [
            f"data.root={root}",
            "data.synthetic.num_train=12",
            "data.synthetic.num_val=4",
            "data.synthetic.image_size=[64, 96]",
            "data.loader.num_workers=0",
            *extra,
        ],
    )


def record_bytes(record):
    return [
        (f.name, v.dtype.str, v.tobytes())
        if isinstance(v := getattr(record, f.name), np.ndarray)
        else v
        for f in dataclasses.fields(record)
    ]


def boxes_of(dataset):
    return [(r.image_id, r.boxes.tobytes()) for r in dataset.records]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("noise") / "synthetic"


def test_built_training_set_is_corrupted_once_the_same_for_every_run_seed(root):
    noise = ["data.label_noise=0.5", "data.label_noise_kind=outlier"]
    clean = build_dataset(small_cfg(root), "train", transforms=False)
    first = build_dataset(small_cfg(root, *noise, "seed=1"), "train", transforms=False)
    # another seed, or a resume
    second = build_dataset(small_cfg(root, *noise, "seed=2"), "train", transforms=False)
    assert boxes_of(first) == boxes_of(second) != boxes_of(clean)
    reseeded = build_dataset(
        small_cfg(root, *noise, "data.label_noise_seed=1"), "train", transforms=False
    )
    assert boxes_of(reseeded) != boxes_of(first)
    cut = build_dataset(small_cfg(root, *noise, "data.max_images=5"), "train", transforms=False)
    # a subset: each image corrupted as in the full set
    assert set(boxes_of(cut)) <= set(boxes_of(first))
    assert first.get_target(0)["boxes"].numpy().tobytes() == first.records[0].boxes.tobytes()


def test_val_split_and_zero_noise_stay_clean(root):
    clean_val = build_dataset(small_cfg(root), "val", transforms=False)
    noisy_val = build_dataset(small_cfg(root, "data.label_noise=1.0"), "val", transforms=False)
    assert boxes_of(noisy_val) == boxes_of(clean_val)
    clean = build_dataset(small_cfg(root), "train", transforms=False)
    zero = build_dataset(
        small_cfg(
            root, "data.label_noise=0.0", "data.label_noise_kind=outlier", "data.label_noise_seed=7"
        ),
        "train",
        transforms=False,
    )
    assert list(map(record_bytes, zero.records)) == list(map(record_bytes, clean.records))


def test_an_outlier_moved_off_the_image_is_drawn_again_not_reverted():
    """20 x 10 boxes with corners in [0, 40) of a 60 x 60 image: many first draws leave the image
    (a shift of 1 to 3 box sizes). Every chosen box still ends corrupted and inside the image."""
    small = [
        dataclasses.replace(
            r, height=60, width=60, boxes=r.boxes - np.tile(r.boxes[:, :2] // 40 * 40, 2)
        )
        for r in make_records(20, 10)
    ]
    noisy = corrupt_records(small, 1.0, "outlier", seed=0)
    moved = changed(small, noisy)
    crowd = np.concatenate([r.iscrowd for r in small])
    assert moved[~crowd].all() and not moved[crowd].any()
    boxes = stacked(noisy)
    assert (boxes[:, 2:] - boxes[:, :2] >= 1).all() and (boxes >= 0).all() and (boxes <= 60).all()
    # the first draws are the old ones: a box that stayed in the image is as it was drawn before
    again = corrupt_records(small, 1.0, "outlier", seed=0)
    assert all(np.array_equal(a.boxes, b.boxes) for a, b in zip(noisy, again))


def test_an_ablation_can_draw_the_noise_per_run_seed(root, tmp_path):
    from detector.ablation.plan import plan_runs
    from detector.ablation.record import label_noise

    noise = [f"data.root={root}", "data.synthetic.num_train=12", "data.synthetic.num_val=4"]
    noise += ["data.synthetic.image_size=[64, 96]", "data.label_noise=0.5"]
    noise += ["data.label_noise_kind=outlier"]
    per_seed = plan_runs(["smoothl1.yaml"], [], 2, noise, noise_per_seed=True)
    shared = plan_runs(["smoothl1.yaml"], [], 2, noise)
    built = {}
    for name, runs in (("per_seed", per_seed), ("shared", shared)):
        cfgs = [run.config(tmp_path / name) for run in runs]
        built[name] = [boxes_of(build_dataset(cfg, "train", transforms=False)) for cfg in cfgs]
        assert [cfg.data.label_noise_seed for cfg in cfgs] == (
            [0, 1] if name == "per_seed" else [0, 0]
        )
    assert built["per_seed"][0] != built["per_seed"][1] and built["shared"][0] == built["shared"][1]
    # the run's record holds the realised rate, rebuilt from its config.yaml and data
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    per_seed[1].config(tmp_path).save(run_dir / "config.yaml")
    clean = build_dataset(small_cfg(root), "train", transforms=False).records
    noisy = build_dataset(per_seed[1].config(tmp_path), "train", transforms=False).records
    record = label_noise(run_dir)
    assert record["corrupted"] == int(changed(clean, noisy).sum()) > 0
    assert record["realised"] == pytest.approx(changed(clean, noisy).mean())
    assert (record["nominal"], record["seed"], record["kind"]) == (0.5, 1, "outlier")
