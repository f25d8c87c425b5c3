"""The CUDA suite: the product on a GPU, end to end. Run it on a GPU machine with ``python -m pytest
-m cuda tests`` (about 5 minutes on one GPU); without CUDA every test here is skipped, with the
reason.

What it covers (issue 11): the device contract of the model's outputs; a few iterations of every
registered box loss with logging and histograms at every step; AMP in bf16 and in fp16 with the grad
scaler; channels_last; evaluation during training; SIGKILL then --resume; checkpoints moving between
GPU and CPU; tools/eval.py --ckpt, tools/dump_proposals.py and training on precomputed proposals;
two ablation runs packed on one GPU; torchrun with NCCL; the benchmark for one iteration; and the
dynamic β / label-assignment state on the GPU.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_model, tiny_run_overrides, two_images

from detector.config import load_config
from detector.engine import trainer as trainer_mod
from detector.engine.checkpoint import load_checkpoint
from detector.engine.logger import stats_to_scalars
from detector.engine.optim import build_optimizer
from detector.losses.regression import LOSSES

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="CUDA is not available (the CUDA suite "
        "runs on a GPU machine: python -m pytest -m cuda tests)",
    ),
]

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


def gpu(data_root: Path, run: Path, **extra) -> list[str]:
    return tiny_run_overrides(data_root, run, **{"train.device": "cuda", **extra})


def env() -> dict[str, str]:
    """The user's environment with the repository prepended to PYTHONPATH (never replaced)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def run_tool(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args], env=env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def records(run: Path, kind: str = "train") -> list[dict]:
    return [
        r
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r["type"] == kind
    ]


# ------------------------------------------------------------------------------ the device contract
@pytest.mark.parametrize(
    "overrides",
    [
        [],
        [
            "model.roi_head.box_loss.name=dynamic_smooth_l1",
            "model.roi_head.dynamic_label_assignment.enabled=true",
        ],
    ],
    ids=str,
)
def test_every_returned_tensor_is_on_the_inputs_device(overrides):
    model = tiny_model(*overrides).cuda().train()
    images, targets = two_images()
    images = [img.cuda() for img in images]
    targets = [
        {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets
    ]
    losses, stats = model(images, targets)
    off = {k: str(v.device) for k, v in {**losses, **stats}.items() if v.device.type != "cuda"}
    assert not off
    scalars, hists = stats_to_scalars(stats)
    assert "beta" in scalars or not overrides
    sum(losses.values()).backward()


# ------------------------------------------------------------------------------ training on the GPU
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_box_loss_trains_and_logs_on_the_gpu(loss, data_root, tmp_path):
    run = tmp_path / "run"
    extra = {
        "model.roi_head.box_loss.name": loss,
        "train.max_iters": 3,
        "train.hist_period": 1,
        "model.roi_head.box_loss.schedule.interval": 1,
    }
    metrics = trainer_mod.train(load_config(["smoothl1.yaml"], gpu(data_root, run, **extra)), run)
    assert [r["iter"] for r in records(run)] == [1, 2, 3]
    assert all(r["loss_box_reg"] is not None and r["peak_memory_gib"] > 0 for r in records(run))
    assert 0.0 <= metrics["AP"] <= 1.0 or metrics["AP"] == -1.0


@pytest.mark.parametrize(
    "extra",
    [
        {"train.amp": True},
        {"train.amp": True, "fp16": True},
        {"train.channels_last": True, "train.amp": True},
        {"train.eval_period": 2, "train.max_iters": 4},
    ],
    ids=str,
)
def test_amp_channels_last_and_evaluation_during_training(extra, data_root, tmp_path, monkeypatch):
    run, extra = tmp_path / "run", dict(extra)
    if extra.pop("fp16", False):  # a GPU without bf16 trains in fp16 with a grad scaler
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
        extra["fp16"] = True
    overrides = gpu(data_root, run, **{k: v for k, v in extra.items() if k != "fp16"})
    trainer_mod.train(load_config(["smoothl1.yaml"], overrides), run)
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    if extra.get("fp16"):
        assert first["amp"] == "torch.float16"
        # the scaler ran
        assert load_checkpoint(run / "checkpoints" / "last.pth")["scaler"]["scale"] > 0
    if "train.eval_period" in extra:
        assert [r["iter"] for r in records(run, "eval")] == [2, 4]


def test_sigkill_then_resume_on_the_gpu(data_root, tmp_path):
    run = tmp_path / "killed"
    args = [
        str(TOOLS / "train.py"),
        "--cfg",
        "dynamic_rcnn.yaml",
        *gpu(
            data_root,
            run,
            **{"train.max_iters": 30, "train.checkpoint_period": 2, "train.num_vis_images": 0},
        ),
    ]
    proc = subprocess.Popen(
        [sys.executable, *args], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 180
    while (
        time.time() < deadline
        and proc.poll() is None
        and not (run / "checkpoints" / "last.pth").exists()
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = load_checkpoint(run / "checkpoints" / "last.pth")["iteration"]
    assert 0 < saved < 30, "the run must be killed part-way for this test to mean anything"
    run_tool(*args, "--resume")
    assert [r["iter"] for r in records(run)] == list(range(1, 31))
    assert load_checkpoint(run / "checkpoints" / "last.pth")["iteration"] == 30


@pytest.mark.parametrize("first,second", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_checkpoint_resumes_on_the_other_device(first, second, data_root, tmp_path):
    run = tmp_path / "run"
    cfg = load_config(
        ["dynamic_rcnn.yaml"],
        gpu(
            data_root,
            run,
            **{
                "train.device": first,
                "train.max_iters": 2,
                "model.roi_head.box_loss.schedule.interval": 1,
                "model.roi_head.dynamic_label_assignment.interval": 1,
            },
        ),
    )
    trainer_mod.train(cfg, run)
    resumed = load_config(
        ["dynamic_rcnn.yaml"],
        gpu(
            data_root,
            run,
            **{
                "train.device": second,
                "train.max_iters": 4,
                "train.resume": True,
                "model.roi_head.box_loss.schedule.interval": 1,
                "model.roi_head.dynamic_label_assignment.interval": 1,
            },
        ),
    )
    trainer_mod.train(resumed, run, extend=True)  # a longer cosine schedule: --extend
    assert [r["iter"] for r in records(run)] == [1, 2, 3, 4]
    assert load_checkpoint(run / "checkpoints" / "last.pth")["iteration"] == 4


def test_dynamic_beta_and_label_assignment_state_on_the_gpu(data_root, tmp_path):
    run = tmp_path / "run"
    # the official statistics (device-side k-th values); with k = 1 x 2 images the beta statistic is
    # a GT box's 0, which the official rule takes (floored at min_beta), so beta moves within the 6
    # iterations of an untrained model
    cfg = load_config(
        ["dynamic_rcnn.yaml"],
        gpu(
            data_root,
            run,
            **{
                "train.max_iters": 6,
                "model.roi_head.box_loss.schedule.interval": 2,
                "model.roi_head.box_loss.schedule.topk": 1,
                "model.roi_head.box_loss.schedule.statistic": "official",
                "model.roi_head.dynamic_label_assignment.interval": 2,
                "model.roi_head.dynamic_label_assignment.topk": 5,
                "model.roi_head.dynamic_label_assignment.statistic": "official",
            },
        ),
    )
    trainer_mod.train(cfg, run)
    betas = [r["beta"] for r in records(run)]
    thresholds = [r["iou_thresh"] for r in records(run)]
    assert all(b is not None and b > 0 for b in betas) and len(set(betas)) > 1, betas
    assert all(0.0 < t <= 1.0 for t in thresholds) and len(set(thresholds)) > 1, thresholds
    # interval 2: iterations 1-2 train with the initial values, 3-4 and 5-6 with each interval's
    # update
    assert betas[0] == betas[1] == 1.0 and betas[2] == betas[3] and betas[4] == betas[5], betas
    assert (
        thresholds[0] == thresholds[1] == pytest.approx(0.4) and thresholds[2] == thresholds[3]
    ), thresholds
    # observed on the GPU, logged
    assert all(isinstance(r["iou_statistic"], float) for r in records(run))
    state = load_checkpoint(run / "checkpoints" / "last.pth")["model"]
    extra = state["roi_heads._extra_state"]
    assert extra["beta_schedule"] is not None and extra["label_assigner"] is not None
    # saved on the CPU, so it loads on either device
    for part in (
        "beta_schedule",
        "label_assigner",
    ):
        assert extra[part]["record"]["table"].device.type == "cpu"


# ----------------------------------------------------------------------------- the tools on the GPU
def test_eval_dump_proposals_and_precomputed_training(data_root, tmp_path):
    run = tmp_path / "run"
    run_tool(
        str(TOOLS / "train.py"),
        "--cfg",
        "smoothl1.yaml",
        *gpu(data_root, run, **{"train.max_iters": 4}),
    )
    ckpt = run / "checkpoints" / "last.pth"
    out = tmp_path / "eval"
    run_tool(
        str(TOOLS / "eval.py"),
        "--cfg",
        "smoothl1.yaml",
        "--ckpt",
        str(ckpt),
        "--out",
        str(out),
        *gpu(data_root, run),
    )
    assert "AP" in json.loads((out / "metrics.json").read_text())
    for split in ("train", "val"):
        run_tool(
            str(TOOLS / "dump_proposals.py"),
            "--cfg",
            "smoothl1.yaml",
            "--ckpt",
            str(ckpt),
            "--split",
            split,
            "--out",
            str(tmp_path / f"p_{split}.json"),
            *gpu(data_root, run),
        )
    # one file serves both splits
    proposals = {
        **json.loads((tmp_path / "p_train.json").read_text()),
        **json.loads((tmp_path / "p_val.json").read_text()),
    }
    assert proposals and all(len(box) == 5 for boxes in proposals.values() for box in boxes)
    (tmp_path / "proposals.json").write_text(json.dumps(proposals))
    run2 = tmp_path / "precomputed"
    cfg = load_config(
        ["smoothl1.yaml"],
        gpu(
            data_root,
            run2,
            **{
                "model.proposals": "precomputed",
                "model.proposal_file": str(tmp_path / "proposals.json"),
            },
        ),
    )
    trainer_mod.train(cfg, run2)
    assert records(run2)[-1]["loss_rpn_cls"] == 0


def test_two_ablation_runs_packed_on_one_gpu(data_root, tmp_path):
    """Two runs at once on the first GPU of the user's list; both finish. The report needs scipy,
    which a GPU machine may lack: then the ablation says so in one line (--report-only writes the
    report later)."""
    from detector.ablation.launch import visible_gpus

    out = tmp_path / "ablation"
    overrides = [o for o in gpu(data_root, tmp_path / "unused") if not o.startswith("output_dir=")]
    result = subprocess.run(
        [
            sys.executable,
            str(TOOLS / "ablate.py"),
            "--cfgs",
            "smoothl1.yaml",
            "--seeds",
            "2",
            "--jobs",
            "2",
            "--out",
            str(out),
            *overrides,
        ],
        env=env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert f"2 at a time: GPU {visible_gpus(os.environ)[0]} x2" in result.stdout, (
        result.stdout + result.stderr
    )
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 2 and all((r / "eval" / "metrics.json").is_file() for r in runs), (
        result.stderr[-4000:]
    )
    assert all(records(r, "start")[0]["device"] == "cuda:0" for r in runs)
    starts = [
        time.mktime(time.strptime((r / "train.log").read_text()[2:21], "%Y-%m-%d %H:%M:%S"))
        for r in runs
    ]
    # they overlapped
    assert max(starts) < min((r / "eval" / "metrics.json").stat().st_mtime for r in runs)
    if importlib.util.find_spec("scipy") is not None:
        assert result.returncode == 0 and (out / "summary.md").is_file(), result.stderr[-4000:]
    else:
        assert result.returncode == 1 and "pip install scipy" in result.stderr


def test_torchrun_with_nccl(data_root, tmp_path):
    run = tmp_path / "ddp"
    run_tool(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        str(TOOLS / "train.py"),
        "--cfg",
        "smoothl1.yaml",
        *gpu(data_root, run, **{"train.max_iters": 3}),
    )
    start = records(run, "start")[0]
    assert (
        start["world_size"] == 1 and start["device"] == "cuda:0" and start["dist_backend"] == "nccl"
    )


def test_benchmark_runs_one_iteration(tmp_path):
    out = tmp_path / "bench.json"
    run_tool(
        str(TOOLS / "benchmark.py"),
        "--device",
        "cuda",
        "--batch-sizes",
        "2",
        "--amp",
        "on",
        "--size",
        "256",
        "320",
        "--backbone",
        "resnet18",
        "--warmup",
        "1",
        "--iters",
        "1",
        "--json",
        str(out),
    )
    assert json.loads(out.read_text())


# --------------------------------------------------------------------------------- speed (issue 12)
def sync_sites(fn) -> list[str]:
    """Where ``fn`` makes synchronising CUDA calls (the host waits for the device), as ``file:line``
    of the Python caller: CUDA's sync debug mode warns on each one (``.item()``, ``nonzero``, a copy
    from pageable memory, ...)."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]


def count_syncs(fn) -> int:
    return len(sync_sites(fn))


def cuda_batch():
    images, targets = two_images()
    return (
        [img.cuda() for img in images],
        [
            {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in t.items()}
            for t in targets
        ],
    )


def test_preprocessing_and_target_padding_do_not_sync():
    from detector.modeling.detector import _pad_boxes

    model = tiny_model().cuda().use_channels_last()
    model.pad_buckets = (160, 192)
    images, targets = cuda_batch()

    def prepare():
        batch, sizes = model.preprocess(images)
        _pad_boxes(
            [t["boxes"] for t in targets], batch.device, extra=[[t["labels"] for t in targets]]
        )
        assert batch.shape[-2:] == (160, 160) and batch.is_contiguous(
            memory_format=torch.channels_last
        )

    # the first call allocates pinned host memory once (seen on an H200 as one sync); steps after it
    # don't
    prepare()
    assert sync_sites(prepare) == []


def test_the_nonfinite_check_syncs_only_when_read():
    watch = trainer_mod.LossWatch(distributed=False)
    losses = {
        "loss_cls": torch.tensor(0.5, device="cuda"),
        "loss_box_reg": torch.tensor(0.2, device="cuda"),
    }
    assert count_syncs(lambda: [watch.record(losses, i) for i in range(4)]) == 0
    assert count_syncs(lambda: watch.raise_if_bad(None, None)) == 1


def test_host_syncs_of_one_training_step(capsys):
    """The syncs of one training step, with the non-finite check recording only (read at log steps);
    the total and where each happens are printed (docs/performance.md: NMS and the positives'
    compaction hold them)."""
    model = tiny_model().cuda().train()
    optimizer = build_optimizer(load_config([], ["train.device=cuda"]), model)
    watch = trainer_mod.LossWatch(distributed=False)
    images, targets = cuda_batch()

    def step():
        losses, _ = model(images, targets)
        watch.record(losses, 0)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()

    step()  # warm-up (anchor cache, allocator)
    sites = sync_sites(step)
    assert optimizer.impl == "fused"
    with capsys.disabled():
        print(f"\nhost syncs per training step of the tiny model: {len(sites)}: {sites}")
    assert 0 < len(sites) < 40


def test_bucketed_runs_autotune_and_unbucketed_do_not(data_root, tmp_path):
    for buckets, expected in ((2, True), (0, False)):
        run = tmp_path / f"b{buckets}"
        trainer_mod.train(
            load_config(
                ["smoothl1.yaml"],
                gpu(
                    data_root,
                    run,
                    **{"data.input.pad_buckets": buckets, "train.channels_last": True},
                ),
            ),
            run,
        )
        start = records(run, "start")[0]
        assert start["cudnn_benchmark"] is expected and start["optimizer"] == "fused"
        assert start["pad_buckets"] == ([128, 160] if buckets else [])


def test_compile_of_the_backbone_on_the_gpu(capsys):
    from detector.engine.runtime import compile_submodules

    eager = tiny_model().cuda().eval()
    model = tiny_model().cuda().eval()
    assert compile_submodules(model, "backbone") == ["backbone"]
    images, _ = cuda_batch()
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = (
        False  # exact float32 on both sides
    )
    try:
        with torch.no_grad():
            batch, _ = eager.preprocess(images)
            features, expected = model.backbone(batch), eager.backbone(batch)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    assert "could not be compiled" not in capsys.readouterr().err
    for key in expected:
        torch.testing.assert_close(features[key], expected[key], rtol=1e-3, atol=1e-3)


def test_benchmark_real_mode_one_iteration(data_root, tmp_path):
    out = tmp_path / "real.json"
    overrides = [o for o in gpu(data_root, tmp_path / "unused") if not o.startswith("output_dir=")]
    run_tool(
        str(TOOLS / "benchmark.py"),
        "--real",
        "--device",
        "cuda",
        "--cfg",
        "smoothl1.yaml",
        *overrides,
        "--real-iters",
        "2",
        "--iters",
        "1",
        "--warmup",
        "1",
        "--json",
        str(out),
    )
    report = json.loads(out.read_text())["real"]
    assert report["real"]["images_per_s"] > 0 and report["synthetic"]["train_images_per_s"] > 0
    assert report["real"]["peak_memory_gib"] > 0 and report["real"]["optimizer"] == "fused"
