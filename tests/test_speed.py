"""Speed features, checked on CPU (issue 12): bucketed padding (few shapes, bottom/right only, the
simulation is the real stream), cudnn.benchmark only where shapes are bucketed, torch.compile's
fallback, the SGD implementations, the non-finite check without a per-step host read, no host reads
in preprocessing, and honest data/step times. No speed is asserted here: tools/benchmark.py measures
speed."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import poison_third_training_forward, tiny_model, tiny_run_overrides, two_images
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.speed import padded_shapes
from detector.config import load_config
from detector.data.build import build_dataloader
from detector.data.transforms import batch_padded_size, bucket_sides, build_pad_buckets
from detector.engine import optim as optim_mod
from detector.engine import runtime
from detector.engine import trainer as trainer_mod
from detector.engine.checkpoint import load_checkpoint
from detector.modeling.detector import _pad_boxes

HOST_READS = (
    "aten._local_scalar_dense.default",
    "aten.nonzero.default",
    "aten._unique2.default",
    "aten.masked_select.default",
)


class HostReads(TorchDispatchMode):
    """Counts the ops that read device values on the host (each a host-device sync on a GPU)."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in HOST_READS:
            self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


# ------------------------------------------------------------------------------------------ buckets
def test_bucket_sides_and_the_padded_size_of_a_batch():
    assert bucket_sides(800, 1333, 32, 0) == ()
    assert bucket_sides(800, 1333, 32, 1) == (1344,)  # one square canvas
    assert bucket_sides(800, 1333, 32, 2) == (800, 1344)
    # 800 + (1344 - 800) / 2 = 1072 -> 1088
    assert bucket_sides(800, 1333, 32, 3) == (800, 1088, 1344)
    assert bucket_sides(288, 480, 32, 2) == (288, 480)
    buckets = (800, 1088, 1344)
    assert batch_padded_size([(800, 1067), (750, 1333)], 32) == (800, 1344)
    assert batch_padded_size([(800, 1067), (640, 853)], 32) == (800, 1088)
    assert batch_padded_size([(800, 1067), (640, 853)], 32, buckets) == (800, 1088)
    # up to the smallest bucket
    assert batch_padded_size([(672, 896), (640, 853)], 32, buckets) == (800, 1088)
    assert batch_padded_size([(1067, 800), (800, 1100)], 32, buckets) == (1088, 1344)
    # longer than every bucket: rounded only
    assert batch_padded_size([(1500, 900)], 32, buckets) == (1504, 1088)
    cfg = load_config(["gpu.yaml"])
    assert build_pad_buckets(cfg) == buckets and build_pad_buckets(cfg, 0) == ()


def test_bucketed_padding_is_bottom_right_only_and_keeps_sizes_and_boxes():
    images, targets = two_images()  # 128x160 and 112x144
    plain = tiny_model().eval()
    bucketed = tiny_model()
    bucketed.pad_buckets = (192, 256)
    bucketed.eval()
    batch, sizes = plain.preprocess(images)
    big, big_sizes = bucketed.preprocess(images)
    assert batch.shape[-2:] == (128, 160) and big.shape[-2:] == (192, 192)
    assert torch.equal(big[:, :, :128, :160], batch)  # the images sit at the top left, unchanged
    # padding is 0 after normalisation
    assert not big[:, :, 128:].any() and not big[:, :, :, 160:].any()
    assert torch.equal(sizes, big_sizes) and sizes.tolist() == [[128.0, 160.0], [112.0, 144.0]]
    with torch.no_grad():
        detections = bucketed(images)
    for det, (h, w) in zip(
        detections, sizes.tolist()
    ):  # boxes stay inside their image, not the canvas
        assert (
            (det["boxes"][:, 2] <= w).all()
            and (det["boxes"][:, 3] <= h).all()
            and (det["boxes"] >= 0).all()
        )
    bucketed.train()
    losses, _ = bucketed(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert targets[1]["boxes"].tolist() == [[10.0, 10.0, 60.0, 50.0], [70.0, 40.0, 130.0, 100.0]]


def test_pad_buckets_off_leaves_preprocessing_unchanged():
    """With data.input.pad_buckets=0 the batch is what it was before buckets existed (divisibility
    padding)."""
    images, _ = two_images()
    model = tiny_model()
    batch, _ = model.preprocess(images)
    expected = model.pixel_mean.expand(2, 3, 128, 160).clone()
    for i, img in enumerate(images):
        expected[i, :, : img.shape[1], : img.shape[2]] = (
            img.float() / 255 if img.dtype == torch.uint8 else img
        )
    assert model.pad_buckets == () and torch.equal(
        batch, (expected - model.pixel_mean) / model.pixel_std
    )


def test_channels_last_input_batch_is_the_same_values():
    images, _ = two_images()
    model = tiny_model()
    batch, _ = model.preprocess(images)
    model.use_channels_last()
    nhwc, _ = model.preprocess(images)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and torch.equal(nhwc, batch)
    assert model.backbone.body.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_preprocessing_and_target_padding_read_nothing_on_the_host():
    images, targets = two_images()
    model = tiny_model()
    with HostReads() as reads:
        model.preprocess(images)
        boxes, (labels,), valid = _pad_boxes(
            [t["boxes"] for t in targets],
            torch.device("cpu"),
            extra=[[t["labels"] for t in targets]],
        )
    assert not reads.counts, reads.counts
    assert boxes.shape == (2, 2, 4) and valid.tolist() == [[True, False], [True, True]]
    assert labels.tolist() == [[2, 0], [1, 3]] and boxes[0, 1].tolist() == [0.0] * 4
    empty, _, none_valid = _pad_boxes([torch.zeros(0, 4), torch.zeros(0, 4)], torch.device("cpu"))
    assert empty.shape == (2, 1, 4) and not none_valid.any()


def _coco_gpu_cfg(coco_tiny: Path, *overrides: str):
    return load_config(
        ["smoothl1.yaml", "data/coco_tiny.yaml", "gpu.yaml"], [f"data.root={coco_tiny}", *overrides]
    )


def test_a_gpu_yaml_run_on_coco_images_meets_at_most_8_padded_shapes(coco_tiny):
    cfg = _coco_gpu_cfg(coco_tiny)
    train = padded_shapes(
        cfg, "train", num_batches=1000, pad_buckets=(0, cfg.data.input.pad_buckets)
    )
    val = padded_shapes(cfg, "val", num_batches=1000, pad_buckets=(0, cfg.data.input.pad_buckets))
    (train_off, train_on), (val_off, val_on) = train["rows"], val["rows"]
    assert train["batches"] == 1000 and train_on["pad_buckets"] == 3
    run_shapes = set(train_on["shape_counts"]) | set(val_on["shape_counts"])
    assert len(run_shapes) <= 8, run_shapes
    # what buckets fix
    assert len(set(train_off["shape_counts"]) | set(val_off["shape_counts"])) > 24
    # the price: under 20% more backbone FLOPs
    assert 1.0 <= train_on["padded_over_unbucketed"] < 1.2
    assert sum(train_on["shape_counts"].values()) == 1000


def test_the_shape_simulation_is_the_real_loader_and_model(coco_tiny):
    """padded_shapes replays the transforms' decisions without decoding; the real loader + model
    agree."""
    cfg = _coco_gpu_cfg(coco_tiny, "data.loader.num_workers=0", "train.batch_size=2")
    simulated = padded_shapes(
        cfg, "train", num_batches=3, pad_buckets=(cfg.data.input.pad_buckets,)
    )
    buckets = build_pad_buckets(cfg)
    loader = iter(build_dataloader(cfg, "train"))
    real = Counter()
    for _ in range(3):
        images, _ = next(loader)
        h, w = batch_padded_size(
            [tuple(img.shape[1:]) for img in images], cfg.data.input.size_divisibility, buckets
        )
        real[f"{h}x{w}"] += 1
    assert dict(real) == simulated["rows"][0]["shape_counts"]


# ----------------------------------------------------------------------------------------- switches
def _failing_compile(fn, *args, **kwargs):
    def compiled(*a, **k):
        raise RuntimeError(
            "InductorError: CppCompileError: C++ compile error\nlong compiler output"
        )

    return compiled


def test_compile_falls_back_to_eager_with_one_line(monkeypatch, capsys):
    images, targets = two_images()
    eager = tiny_model().eval()
    model = tiny_model().eval()
    keys = list(model.state_dict())
    monkeypatch.setattr(torch, "compile", _failing_compile)
    assert runtime.compile_submodules(model, "all") == [
        "backbone",
        "rpn.head",
        "roi_heads.box_head",
    ]
    with torch.no_grad():
        out, expected = model(images), eager(images)
    err = capsys.readouterr().err
    assert err.count("could not be compiled") == 3 and "continuing uncompiled" in err
    assert (
        "train.compile=all: the backbone could not be compiled (RuntimeError: InductorError" in err
    )
    assert "long compiler output" not in err  # one line each
    for a, b in zip(out, expected):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    assert list(model.state_dict()) == keys  # checkpoints are unchanged by compiling
    with torch.no_grad():
        model(images)
    assert "could not be compiled" not in capsys.readouterr().err  # said once, then eager for good


@pytest.mark.parametrize(
    "message, said",
    [
        ("torch.compile is not supported on Python 3.14+", "(RuntimeError: torch.compile is not"),
        ("", "the backbone could not be compiled (RuntimeError); continuing"),
    ],
    ids=["with-text", "no-text"],
)
def test_compile_refused_outright_also_falls_back(monkeypatch, capsys, message, said):
    def refuse(fn, *args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(torch, "compile", refuse)
    model = tiny_model().eval()
    assert runtime.compile_submodules(model, "backbone") == ["backbone"]
    with torch.no_grad():
        model(two_images()[0])
    err = capsys.readouterr().err
    # an exception without text is named once, not "(RuntimeError: RuntimeError)"
    assert said in err and "RuntimeError: RuntimeError" not in err


def test_a_training_run_with_compile_falls_back_and_finishes(
    tmp_path, monkeypatch, capsys, tiny_data
):
    monkeypatch.setattr(torch, "compile", _failing_compile)
    run = tmp_path / "run"
    cfg = load_config(
        ["smoothl1.yaml"],
        tiny_run_overrides(
            tiny_data,
            run,
            **{"train.compile": "backbone", "train.num_vis_images": 0, "train.max_iters": 1},
        ),
    )
    trainer_mod.train(cfg, run)
    start = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert start["compiled"] == ["backbone"] and start["cudnn_benchmark"] is False
    assert "continuing uncompiled" in capsys.readouterr().err


def test_the_fused_or_foreach_sgd_update_is_the_plain_one():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 7)
    reference = torch.nn.Linear(5, 7)
    reference.load_state_dict(model.state_dict())
    cfg = load_config([], ["train.lr=0.1", "train.lr_reference_batch=null"])
    optimizer = optim_mod.build_optimizer(cfg, model)
    assert optimizer.impl == (
        "fused" if optim_mod.has_fused_sgd(torch.device("cpu")) else "foreach"
    )
    plain = torch.optim.SGD(
        [
            {"params": [reference.weight], "weight_decay": 1e-4},
            {"params": [reference.bias], "weight_decay": 0.0},
        ],
        lr=0.1,
        momentum=0.9,
        foreach=False,
    )
    for step in range(3):
        for p, q in zip(model.parameters(), reference.parameters()):
            p.grad = q.grad = torch.full_like(p, 0.5 + step)
        optimizer.step()
        plain.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------- host syncs
def test_the_nonfinite_check_reads_the_host_only_when_asked():
    watch = trainer_mod.LossWatch(distributed=False)
    losses = {"loss_cls": torch.tensor(0.5), "loss_box_reg": torch.tensor(0.25)}
    with HostReads() as counter:
        for iteration in range(5):
            watch.record(losses, iteration)
    assert counter.counts["aten._local_scalar_dense.default"] == 0
    with HostReads() as counter:
        watch.raise_if_bad(None, None)
    assert counter.counts["aten._local_scalar_dense.default"] == 1


def test_nonfinite_check_at_log_steps_names_the_first_bad_iteration_and_keeps_last_good(
    tmp_path, monkeypatch, tiny_data
):
    """NaN at iteration 2 (the third step); checkpoints after 2 and 4 steps, log every 4: the losses
    are read before each checkpoint write, so the run stops at the check after the 4th step and
    last.pth stays the one written after 2 steps."""
    poison_third_training_forward(monkeypatch, trainer_mod)
    run = tmp_path / "run"
    cfg = load_config(
        ["smoothl1.yaml"],
        tiny_run_overrides(
            tiny_data,
            run,
            **{
                "train.max_iters": 8,
                "train.log_period": 4,
                "train.checkpoint_period": 2,
                "train.num_vis_images": 0,
            },
        ),
    )
    with pytest.raises(trainer_mod.NonFiniteLossError) as info:
        trainer_mod.train(cfg, run)
    message = str(info.value)
    assert (
        "loss_box_reg is not finite at iteration 3 (" in message and "loss_box_reg=nan" in message
    )
    # the 4th step (iterations count from 1, as in the log)
    assert "found at the check after iteration 4" in message
    assert (run / "checkpoints" / "nonfinite_iter3.pth").is_file()
    last = load_checkpoint(run / "checkpoints" / "last.pth")
    assert last["iteration"] == 2

    def finite(state):
        return all(
            torch.isfinite(v).all()
            for v in state.values()
            if isinstance(v, torch.Tensor) and v.is_floating_point()
        )

    assert finite(last["model"])  # the last good checkpoint, written after a clean read
    diagnostic = load_checkpoint(run / "checkpoints" / "nonfinite_iter3.pth")
    # the run went on to the check
    assert diagnostic["iteration"] == 4 and not finite(diagnostic["model"])
    assert not [
        r
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r["type"] == "train"
    ]


def test_data_and_step_time_add_up_to_the_wall_time_per_step(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = trained_run
    cfg = load_config([str(run / "config.yaml")])
    records = [
        r
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r["type"] == "train"
    ]
    assert [r["iter"] for r in records] == [2, 4]
    for r in records:
        assert r["data_time"] > 0 and r["step_time"] > 0
        # images / (wall time per step) = images per step: the two times split the window's wall
        # time
        assert (r["data_time"] + r["step_time"]) * r["images_per_s"] == pytest.approx(
            cfg.train.batch_size, rel=1e-6
        )
    events = EventAccumulator(str(run)).Reload()
    assert {"data_time", "step_time", "images_per_s"} <= set(events.Tags()["scalars"])
