"""Samplers and loaders: the training stream is a pure function of the seed, start_iter resumes it
exactly (any number of workers), batches are aspect-ratio grouped, ranks get disjoint shares; val is
finite and ordered."""

from itertools import islice

import pytest
import torch

from benchmarks.speed import loader_throughput
from detector.config import load_config
from detector.data import build as data_build
from detector.data.build import build_dataloader, build_dataset, collate
from detector.data.samplers import GroupedInfiniteBatchSampler, inference_indices

GROUPS = [0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1]  # 11 images, two aspect-ratio groups


def batches(sampler, n):
    return list(islice(iter(sampler), n))


def test_stream_is_a_pure_function_of_the_seed():
    a = batches(GroupedInfiniteBatchSampler(GROUPS, batch_size=3, seed=7), 20)
    b = batches(GroupedInfiniteBatchSampler(GROUPS, batch_size=3, seed=7), 20)
    c = batches(GroupedInfiniteBatchSampler(GROUPS, batch_size=3, seed=8), 20)
    assert a == b and a != c
    assert all(len(batch) == 3 for batch in a)
    # one aspect-ratio group per batch
    assert all(len({GROUPS[i] for i, _ in batch}) == 1 for batch in a)
    seeds = [s for batch in a for _, s in batch]
    assert len(set(seeds)) == len(seeds)  # every sample of the stream has its own seed


def test_each_epoch_visits_every_image_once():
    sampler = GroupedInfiniteBatchSampler([0] * 10, batch_size=5, seed=1)
    first, second = batches(sampler, 2), batches(sampler, 4)[2:]
    assert sorted(i for b in first for i, _ in b) == list(range(10))
    assert sorted(i for b in second for i, _ in b) == list(range(10))
    assert first != second  # reshuffled


@pytest.mark.parametrize("k", [1, 5, 13])
def test_start_iter_resumes_the_same_stream(k):
    full = batches(GroupedInfiniteBatchSampler(GROUPS, batch_size=2, seed=3), k + 10)
    resumed = batches(GroupedInfiniteBatchSampler(GROUPS, batch_size=2, seed=3, start_iter=k), 10)
    assert resumed == full[k:]


def test_ranks_get_disjoint_shares_of_each_epoch():
    n, world = 12, 3
    samplers = [
        GroupedInfiniteBatchSampler([0] * n, batch_size=1, seed=5, rank=r, world_size=world)
        for r in range(world)
    ]
    # batch_size 1
    shares = [[batch[0] for batch in islice(sampler, n // world)] for sampler in samplers]
    indices = [{i for i, _ in share} for share in shares]
    assert set().union(*indices) == set(range(n)) and sum(map(len, indices)) == n
    with pytest.raises(ValueError, match="rank 3"):
        GroupedInfiniteBatchSampler([0] * n, batch_size=1, seed=5, rank=3, world_size=3)


def test_inference_slices_are_contiguous_disjoint_and_complete():
    slices = [inference_indices(10, r, 3) for r in range(3)]
    assert slices == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert inference_indices(2, 2, 3) == []


def test_collate_keeps_lists():
    images, targets = collate([(torch.zeros(3, 2, 2), {"a": 1}), (torch.ones(3, 4, 4), {"a": 2})])
    assert isinstance(images, list) and [t["a"] for t in targets] == [1, 2]


def small_cfg(root, *extra):
    return load_config(
        [],
        [
            f"data.root={root}",
            "data.synthetic.num_train=10",
            "data.synthetic.num_val=5",
            "data.synthetic.image_size=[64, 96]",
            "data.input.min_size_train=[48, 64]",
            "data.input.min_size_test=64",
            "train.batch_size=2",
            "data.loader.num_workers=0",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return small_cfg(tmp_path_factory.mktemp("syn") / "synthetic")


def first_batches(loader, n):
    out = []
    for images, targets in islice(iter(loader), n):
        out.append(
            (
                [img.clone() for img in images],
                [(t["image_id"], t["boxes"].clone()) for t in targets],
            )
        )
    return out


def same(a, b):
    return len(a) == len(b) and all(
        len(x[0]) == len(y[0])
        and all(torch.equal(i, j) for i, j in zip(x[0], y[0]))
        and [t[0] for t in x[1]] == [t[0] for t in y[1]]
        and all(torch.equal(s[1], t[1]) for s, t in zip(x[1], y[1]))
        for x, y in zip(a, b)
    )


def test_train_loader_resume_and_workers_give_identical_batches(cfg):
    full = first_batches(build_dataloader(cfg, "train"), 8)
    images, targets = full[0]
    assert (
        len(images) == 2 and images[0].dtype == torch.uint8 and min(images[0].shape[1:]) in (48, 64)
    )
    assert set(targets[0][1].shape[1:]) == {4}
    assert same(first_batches(build_dataloader(cfg, "train", start_iter=5), 3), full[5:8])
    workers = small_cfg(cfg.data.root, "data.loader.num_workers=2")
    assert same(first_batches(build_dataloader(workers, "train", start_iter=2), 6), full[2:8])


def test_val_loader_is_finite_ordered_and_limited(cfg):
    loader = build_dataloader(cfg, "val")
    ids = [t["image_id"] for _, targets in loader for t in targets]
    assert ids == [1, 2, 3, 4, 5] and all(
        t["orig_size"] == (64, 96) for _, ts in loader for t in ts
    )
    loader = build_dataloader(small_cfg(cfg.data.root, "eval.max_images=3"), "val")
    assert len(loader.dataset) == 3 and [len(images) for images, _ in loader] == [2, 1]


def test_val_loader_cut_builds_a_new_dataset_and_leaves_the_original_untouched(cfg, monkeypatch):
    original = build_dataset(cfg, "val")
    records = list(original.records)
    monkeypatch.setattr(data_build, "build_dataset", lambda cfg, split: original)
    loader = build_dataloader(small_cfg(cfg.data.root, "eval.max_images=2"), "val")
    assert loader.dataset is not original and len(loader.dataset) == 2
    assert original.records == records and len(original) == 5
    assert loader.dataset.records == records[:2] and loader.dataset.classes == original.classes
    assert build_dataloader(cfg, "val").dataset is original  # no eval.max_images: nothing to cut


def test_subset_is_a_new_dataset_with_its_own_records_and_proposals(cfg):
    original = build_dataset(cfg, "val", transforms=False)
    original.proposals = {
        r.image_id: torch.full((1, 4), float(r.image_id)) for r in original.records
    }
    part = original.subset([3, 1], name="two")
    assert [part.get_image_info(i)["image_id"] for i in range(2)] == [4, 2] and part.name == "two"
    assert set(part.proposals) == {4, 2} and part.get_target(0)["proposals"].tolist() == [[4.0] * 4]
    assert len(original) == 5 and len(original.proposals) == 5
    assert (
        part.label_to_cat_id == original.label_to_cat_id and part.transforms is original.transforms
    )


def test_every_synthetic_image_has_objects_so_keep_empty_changes_nothing(cfg):
    """The quickstart data: dropping training images without boxes (the default) keeps all of
    them."""
    dataset = build_dataset(cfg, "train", transforms=False)
    assert not cfg.data.keep_empty and len(dataset) == cfg.data.synthetic.num_train
    assert all(len(r.boxes) > 0 for r in dataset.records)


def test_distributed_needs_an_initialised_process_group(cfg):
    with pytest.raises(RuntimeError, match="init_process_group"):
        build_dataloader(cfg, "val", distributed=True)


def test_loader_throughput_reports(cfg):
    report = loader_throughput(cfg, "train", num_workers=0, num_batches=3)
    assert report["images"] == 6 and report["images_per_s"] > 0 and report["num_workers"] == 0
