"""``build_dataset`` and ``build_dataloader``, the only readers of the config in ``detector.data``.
Loaders yield ``(images: list[uint8 [3,H,W]], targets: list[dict])``; see docs/architecture.md,
section "Data"."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..boxes import degenerate_box_mask
from ..config import check_choice
from ..errors import read_json
from .base import DatasetError, DetectionDataset, Parsed, corrupt_records, sanitize_records
from .coco import load_coco_json, parse_coco
from .samplers import GroupedInfiniteBatchSampler, inference_indices
from .subsets import subset_records
from .synthetic import ensure_synthetic
from .transforms import build_transforms
from .voc import parse_voc


def _parse_coco(data: Any, split: str) -> Parsed:
    source = str(Path(data.root) / "annotations" / f"instances_{split}.json")
    return parse_coco(load_coco_json(source), Path(data.root) / split, source)


def _parse_synthetic(data: Any, split: str) -> Parsed:
    # the keys are the generator's parameters; the set is written in COCO format
    ensure_synthetic(data.root, **data.synthetic.to_dict())
    return _parse_coco(data, split)


def _parse_voc(data: Any, split: str) -> Parsed:
    return parse_voc(data.root, split, f"VOC {split} under {data.root}")


# data.format -> parser(cfg.data, split name) -> Parsed(records, classes (index 0 background),
# label -> category id, the source that errors name). A new format is its parser and one line here.
FORMATS: dict[str, Callable[[Any, str], Parsed]] = {
    "synthetic": _parse_synthetic,
    "coco": _parse_coco,
    "voc": _parse_voc,
}

# split -> {subset_records argument: the data.* key that sets it}; what is absent keeps every image.
# data.classes applies to both splits; the size subsets and keep_empty to training only, so a
# training subset is still scored on the whole val split (it has its own val_* keys and keeps images
# without boxes: a detection there is a false positive)
SUBSET_KEYS = {
    "train": {
        "keep_classes": "classes",
        "keep_empty": "keep_empty",
        "image_ids_file": "image_ids_file",
        "fraction": "fraction",
        "max_images": "max_images",
    },
    "val": {
        "keep_classes": "classes",
        "image_ids_file": "val_image_ids_file",
        "fraction": "val_fraction",
    },
}


def build_dataset(cfg, split: str, transforms: bool = True) -> DetectionDataset:
    """The ``split`` ("train" or "val") dataset of ``cfg.data``, parsed by ``FORMATS[data.format]``,
    subset and cleaned, with its transforms (or raw targets when ``transforms=False``). The training
    split then gets the fixed label noise of ``data.label_noise*``."""
    assert split in SUBSET_KEYS, split
    data = cfg.data
    split_name = data.train_split if split == "train" else data.val_split
    check_choice("data.format", data.format, FORMATS)
    parsed = sanitize_records(Parsed(*FORMATS[data.format](data, split_name)))
    subset = {argument: data[key] for argument, key in SUBSET_KEYS[split].items()}
    parsed = subset_records(
        parsed,
        ids_source=f"data.{SUBSET_KEYS[split]['image_ids_file']}",
        seed=data.subset_seed,
        **subset,
    )
    records, source = parsed.records, parsed.source
    if not records:
        keys = ", ".join(f"data.{key}" for key in SUBSET_KEYS[split].values())
        raise DatasetError(
            f"{source}: no {split} images left after the subset settings ({keys}); relax them"
        )
    # a cheap check before any image is read
    missing = [r.path for r in records if not os.path.isfile(r.path)]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise DatasetError(
            f"{source}: {len(missing)} of {len(records)} image files are missing: {shown}; "
            f"check data.root and the split name, or download the images (data/README.md)"
        )
    # a fixed corrupted set: the same for every seed and epoch
    if split == "train" and data.label_noise > 0:
        records = corrupt_records(
            records,
            data.label_noise,
            data.label_noise_kind,
            data.label_noise_scale,
            data.label_noise_seed,
        )
    proposals = None
    if cfg.model.proposals == "precomputed":
        proposals = load_proposals(
            cfg.model.proposal_file, [r.image_id for r in records], f"{source} ({split})"
        )
    return DetectionDataset(
        records=records,
        classes=parsed.classes,
        label_to_cat_id=parsed.label_to_cat_id,
        transforms=build_transforms(cfg, split) if transforms else None,
        name=f"{Path(source).name if source.endswith('.json') else source} ({split})",
        proposals=proposals,
    )


def load_proposals(path: str, image_ids: list[int], split: str) -> dict[int, torch.Tensor]:
    """Precomputed proposals of ``tools/dump_proposals.py``: ``{"<image_id>":
    [[x1,y1,x2,y2(,score)], ...]}`` in original image pixels -> image id -> float32 [P,4]; every
    image of the split must have an entry."""
    raw = read_json(
        path, DatasetError, "set model.proposal_file to a file of tools/dump_proposals.py"
    )
    if not isinstance(raw, dict):
        raise DatasetError(
            f'model.proposal_file {path}: expected {{"<image_id>": [[x1,y1,x2,y2,score], ...]}}'
        )
    missing = [i for i in image_ids if str(i) not in raw]
    if missing:
        raise DatasetError(
            f"model.proposal_file {path}: no proposals for {len(missing)} images of {split} "
            f"(first ids: {missing[:5]}); dump them for this split with tools/dump_proposals.py"
        )
    out = {}
    for image_id in image_ids:
        entries = raw[str(image_id)]
        try:
            # [P,4] or [P,5]
            boxes = torch.as_tensor(entries, dtype=torch.float32).reshape(len(entries), -1)
        except (TypeError, ValueError, RuntimeError):
            boxes = torch.zeros(0, 3)
        if len(entries) and boxes.shape[1] not in (4, 5):
            raise DatasetError(
                f"model.proposal_file {path}: image {image_id}: expected [x1,y1,x2,y2(,score)] "
                f"entries, got {str(entries[0])[:60]}"
            )
        boxes = boxes[:, :4].reshape(-1, 4)
        out[image_id] = boxes[~degenerate_box_mask(boxes)]
    return out


def proposals_of(
    targets: list[dict], device: torch.device | None = None
) -> list[torch.Tensor] | None:
    """The targets' precomputed proposals as the model's ``proposals`` argument (on ``device`` if
    given), or None."""
    if not targets or "proposals" not in targets[0]:
        return None
    return [t["proposals"].to(device) if device is not None else t["proposals"] for t in targets]


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """[(image, target), ...] -> (images, targets); no padding here (the model pads on the
    device)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def make_dataloader(
    dataset: DetectionDataset,
    *,
    train: bool,
    batch_size: int,
    num_workers: int,
    seed: int = 0,
    start_iter: int = 0,
    rank: int = 0,
    world_size: int = 1,
    group_by_aspect_ratio: bool = True,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A loader over ``dataset``: infinite seeded grouped batches when ``train``, else this rank's
    ordered slice."""
    if train:
        # one group (0) unless grouping by aspect ratio: 1 for portrait images
        groups = [int(group_by_aspect_ratio and r.width < r.height) for r in dataset.records]
        batch_sampler = GroupedInfiniteBatchSampler(
            groups,
            batch_size=batch_size,
            seed=seed,
            start_iter=start_iter,
            rank=rank,
            world_size=world_size,
        )
    else:
        batch_sampler = torch.utils.data.BatchSampler(
            inference_indices(len(dataset), rank, world_size),
            batch_size=batch_size,
            drop_last=False,
        )
    # The loader's own generator: a resumed run must not sample differently because the global RNG
    # moved.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + start_iter + rank)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory and torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        generator=generator,
    )


def build_dataloader(
    cfg,
    split: str,
    start_iter: int = 0,
    distributed: bool = False,
    dataset: DetectionDataset | None = None,
) -> torch.utils.data.DataLoader:
    """The training loader (infinite, from batch ``start_iter`` of the ``cfg.seed`` stream) or the
    val loader (the first ``eval.max_images`` images, as a new dataset; under ``distributed`` a
    disjoint slice per rank). ``dataset``: the split's :func:`build_dataset`, when the caller
    already built it (it is not changed)."""
    dataset = build_dataset(cfg, split) if dataset is None else dataset
    max_images = cfg.eval.max_images
    if split == "val" and max_images is not None:
        dataset = dataset.subset(
            range(min(max_images, len(dataset))), name=f"{dataset.name} first {max_images}"
        )
    rank, world_size = 0, 1
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "build_dataloader(distributed=True) needs torch.distributed initialised "
                "(launch with torchrun and call init_process_group first)"
            )
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return make_dataloader(
        dataset,
        train=split == "train",
        batch_size=cfg.train.batch_size,
        num_workers=cfg.data.loader.num_workers,
        seed=cfg.seed,
        start_iter=start_iter,
        rank=rank,
        world_size=world_size,
        group_by_aspect_ratio=cfg.data.loader.aspect_ratio_grouping,
        pin_memory=cfg.data.loader.pin_memory,
    )
