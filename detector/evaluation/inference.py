"""Run a detector over an evaluation loader and collect per-image detections (``{"image_id", "boxes"
[D,4] xyxy ORIGINAL pixels, "labels" [D] 1..K, "scores" [D]}``, CPU tensors, one per image run)."""

from __future__ import annotations

import sys
from typing import Iterable

import torch
import torch.distributed as dist
from tqdm import tqdm

from detector.data.build import proposals_of


def inference_on_dataset(
    model: torch.nn.Module,
    loader: Iterable,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
    max_images: int | None = None,
) -> list[dict]:
    """Detections of ``model`` (eval mode, restored after; ``torch.autocast`` with ``amp_dtype``) on
    ``loader``, at most ``max_images`` on this process. Under torch.distributed every rank returns
    all ranks' lists, deduplicated and sorted by image id; otherwise the loader's order is kept."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    results: list[dict] = []
    show = sys.stderr.isatty() and (not _distributed() or dist.get_rank() == 0)
    progress = tqdm(total=max_images, desc="inference", unit="img", disable=not show)
    try:
        with torch.inference_mode():
            for images, targets in loader:
                if max_images is not None:
                    keep = max_images - len(results)
                    images, targets = images[:keep], targets[:keep]
                images = [image.to(device, non_blocking=True) for image in images]
                orig_sizes = [tuple(int(s) for s in t["orig_size"]) for t in targets]
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    outputs = model(
                        images, orig_sizes=orig_sizes, proposals=proposals_of(targets, device)
                    )
                for target, output in zip(targets, outputs):
                    results.append(
                        {
                            "image_id": int(target["image_id"]),
                            "boxes": output["boxes"].float().cpu(),  # [D,4] xyxy, original pixels
                            "labels": output["labels"].cpu(),  # [D] 1..K
                            "scores": output["scores"].float().cpu(),  # [D]
                        }
                    )
                progress.update(len(targets))
                if max_images is not None and len(results) >= max_images:
                    break
    finally:
        progress.close()
        model.train(was_training)
    if _distributed():
        gathered: list[list[dict] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, results)
        merged = {}
        for rank_results in gathered:
            for det in rank_results:
                merged.setdefault(det["image_id"], det)
        results = [merged[image_id] for image_id in sorted(merged)]
    return results


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
