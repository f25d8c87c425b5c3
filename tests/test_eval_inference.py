"""inference_on_dataset: eval mode, original sizes passed, CPU results with image ids, max_images,
DDP gathering."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import FakeDetector, make_loader

from detector.evaluation.inference import inference_on_dataset


def test_runs_in_eval_mode_without_grad_and_restores_training():
    model = FakeDetector().train()
    results = inference_on_dataset(model, make_loader([1, 2, 3]), "cpu")
    assert model.training  # restored
    assert all(not c["training"] and not c["grad"] for c in model.calls)
    assert model.calls[0]["orig_sizes"] == [(17, 21), (18, 22)]
    assert [r["image_id"] for r in results] == [1, 2, 3]
    # original pixels, xyxy
    assert torch.equal(results[2]["boxes"], torch.tensor([[0.0, 0.0, 23.0, 19.0]]))
    assert all(r["boxes"].device.type == "cpu" and r["labels"].tolist() == [1] for r in results)
    assert not results[0]["boxes"].requires_grad


def test_max_images_cuts_the_stream():
    model = FakeDetector()
    results = inference_on_dataset(model, make_loader([1, 2, 3, 4, 5, 6]), "cpu", max_images=3)
    assert [r["image_id"] for r in results] == [1, 2, 3]
    assert [c["num_images"] for c in model.calls] == [2, 1]


def test_autocast_dtype_gives_float32_results():
    results = inference_on_dataset(
        FakeDetector(), make_loader([4]), "cpu", amp_dtype=torch.bfloat16
    )
    assert (
        results[0]["boxes"].dtype == torch.float32 and results[0]["scores"].dtype == torch.float32
    )


def _ddp_worker(rank, world_size, init_file, out_dir):
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    shards = {0: [5, 1, 3], 1: [3, 2]}  # image 3 on both ranks, as a padding sampler repeats images
    results = inference_on_dataset(FakeDetector(), make_loader(shards[rank]), "cpu")
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_distributed_results_are_gathered_and_deduplicated(tmp_path):
    # CPU only: fork skips re-importing torch in the children
    mp.start_processes(
        _ddp_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert [r["image_id"] for r in rank0] == [1, 2, 3, 5] == [r["image_id"] for r in rank1]
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(rank0, rank1))
