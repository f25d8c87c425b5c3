"""Training engine: every config trains a few iterations, the run folder is complete, resume after
SIGKILL reaches the same weights, NaN losses stop cleanly, corrupt checkpoints fall back, bad
configs fail early, and a 2-process gloo DDP run works."""

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import poison_third_training_forward
from helpers import tiny_run_overrides as tiny

from detector.config import CONFIG_DIR, load_config
from detector.engine import trainer as trainer_mod
from detector.engine.checkpoint import (
    CheckpointError,
    find_resume_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from detector.engine.logger import run_hparams
from detector.engine.optim import build_lr_scheduler

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "tools" / "train.py"


LEAF_CONFIGS = sorted(
    str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.glob("*.yaml") if p.name != "gpu.yaml"
)


@pytest.mark.parametrize("name", LEAF_CONFIGS)
def test_every_config_trains_a_few_iterations(name, tiny_data, tmp_path):
    extra = {
        "model.roi_head.box_loss.schedule.interval": 1,
        "model.roi_head.dynamic_label_assignment.interval": 1,
    }
    cfg = load_config([name], tiny(tiny_data, tmp_path / "run", **extra))
    metrics = trainer_mod.train(cfg, tmp_path / "run")
    assert 0.0 <= metrics["AP"] <= 1.0 or metrics["AP"] == -1.0
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    train_records = [r for r in records if r["type"] == "train"]
    assert [r["iter"] for r in train_records] == [1, 2]
    assert all(r["loss_box_reg"] is not None and r["loss_box_reg"] >= 0 for r in train_records)
    if "dynamic_smooth_l1" in cfg.model.roi_head.box_loss.name:
        assert "beta" in train_records[-1]


def _train_main(argv):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import importlib

        module = importlib.import_module("train")
        return module.main(argv)
    finally:
        sys.path.pop(0)


def test_run_folder_holds_everything(trained_run):
    run, out = trained_run
    assert "AP50" in out and "run folder" in out
    assert (run / "config.yaml").is_file() and load_config(
        [str(run / "config.yaml")]
    ).train.max_iters == 4
    kinds = [json.loads(line)["type"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    # 4 iterations logged every 2, evaluated at 2 and at the end
    assert kinds.count("eval") == 2 and kinds.count("train") == 2
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "last.pth").is_file() and (
        run / "checkpoints" / "best.pth"
    ).is_file()
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    detections = json.loads((run / "eval" / "detections.json").read_text())
    assert all({"image_id", "category_id", "bbox", "score"} <= set(d) for d in detections)
    assert {"AP", "AP50", "AP75", "AP90", "AP_per_iou", "per_class"} <= set(metrics)
    state = load_checkpoint(run / "checkpoints" / "last.pth")
    assert state["iteration"] == 4 and {
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "rng",
        "config",
    } <= set(state)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(
        str(run), size_guidance={"scalars": 0, "histograms": 0, "images": 0}
    ).Reload()
    tags = events.Tags()
    for tag in (
        "loss_box_reg",
        "weighted/loss_box_reg",
        "lr",
        "grad_norm",
        "images_per_s",
        "eval/AP",
        "target_abs/tx/mean",
        "pred_err/tw/p90",
        "num_pos_per_image",
    ):
        assert tag in tags["scalars"], tag
    assert any(t.startswith("hist/target_abs") for t in tags["histograms"])
    assert tags["images"]
    # HParams record what applies: Smooth L1's beta, no beta schedule (the loss follows none)
    hparams = b"".join(events.PluginTagToContent("hparams").values())
    assert b"box_loss" in hparams and b"beta" in hparams and b"beta_schedule" not in hparams
    errors = torch.load(run / "final_errors.pt")
    assert errors["hist/pred_err"].shape[1] == 4


def test_evaluation_leaves_training_as_it_is(tiny_data, tmp_path):
    """Evaluated after every iteration or never, the same Dynamic R-CNN run (beta and IoU threshold
    updated every iteration) logs the same numbers at every step, ends with the same weights and
    the same final metrics: why a finished run is reused under another train.eval_period."""
    timing = {"images_per_s", "data_time", "step_time"}

    def run(eval_period):
        extra = {
            "train.max_iters": 4,
            "train.eval_period": eval_period,
            "model.roi_head.box_loss.schedule.interval": 1,
            "model.roi_head.dynamic_label_assignment.enabled": True,
            "model.roi_head.dynamic_label_assignment.interval": 1,
        }
        folder = tmp_path / f"eval{eval_period}"
        cfg = load_config(["dynamic_smoothl1.yaml"], tiny(tiny_data, folder, **extra))
        final = trainer_mod.train(cfg, folder)
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        logged = [
            {k: v for k, v in r.items() if k not in timing} for r in records if r["type"] != "eval"
        ]
        evaluations = [r["iter"] for r in records if r["type"] == "eval"]
        weights = load_checkpoint(folder / "checkpoints" / "last.pth")["model"]
        return logged, evaluations, weights, final

    logged, evaluations, weights, final = run(1)
    assert evaluations == [1, 2, 3, 4] and len(logged) >= 8
    logged_0, evaluations_0, weights_0, final_0 = run(0)
    assert evaluations_0 == [4] and logged_0 == logged

    def same(a, b) -> bool:  # tensors and the Dynamic state's nested dicts
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b

    assert same(weights_0, weights)
    assert final_0["AP"] == final["AP"] and final_0["AP_per_iou"] == final["AP_per_iou"]


def test_dynamic_state_is_logged_at_every_update_and_a_replay_of_it_is_exact(tiny_data, tmp_path):
    """Dynamic R-CNN's beta updates every 2 iterations and its IoU threshold every 3, over 7; logged
    every 3, each update writes a short "dynamic" record of what updated, so the replay of the run
    trains each iteration with the beta the run had (its every-step log is the reference), the last
    one too, which trains with the beta of an update after the last update record."""
    from detector.engine.logger import DYNAMIC_KEYS
    from detector.losses.dynamic import ReplayedBeta, read_beta_trajectory

    def run(log_period):
        extra = {
            "train.max_iters": 7,
            "train.log_period": log_period,
            "train.eval_period": 0,
            "model.roi_head.box_loss.schedule.interval": 2,
            "model.roi_head.box_loss.schedule.topk": 4,
            "model.roi_head.box_loss.beta": 100,
            "model.roi_head.add_gt_as_proposals": False,
            "model.roi_head.dynamic_label_assignment.enabled": True,
            "model.roi_head.dynamic_label_assignment.interval": 3,
        }
        folder = tmp_path / f"log{log_period}"
        trainer_mod.train(
            load_config(["dynamic_smoothl1.yaml"], tiny(tiny_data, folder, **extra)), folder
        )
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return folder, [r for r in map(json.loads, lines) if r["type"] in ("train", "dynamic")]

    every, reference = run(1)
    folder, logged = run(3)
    assert [(r["type"], r["iter"]) for r in logged] == [
        ("dynamic", 2),
        ("train", 3),
        ("dynamic", 3),
        ("dynamic", 4),
        ("train", 6),
        ("dynamic", 6),
        ("train", 7),
    ]
    beta, iou, sampling = (set(DYNAMIC_KEYS[k]) for k in ("beta", "iou", "sampling"))
    assert [set(r) - {"type", "iter"} for r in logged if r["type"] == "dynamic"] == [
        beta | sampling,
        iou | sampling,
        beta | sampling,
        beta | iou | sampling,
    ]
    # each beta update's record holds what it computed from its interval (iterations s - 2, s - 1,
    # whose statistics the every-step log holds at steps s - 1 and s)
    stat = {r["iter"]: r["beta_statistic"] for r in reference if r["type"] == "train"}
    for r in logged:
        if r["type"] == "dynamic" and "beta" in r:
            interval = [stat[r["iter"] - 1], stat[r["iter"]]]
            assert r["beta_median"] == pytest.approx(statistics.median(interval))
            assert r["beta_zero_share"] == sum(v < 1e-15 for v in interval) / 2
    # step s logs the beta iteration s - 1 trained with
    trained_with = [r["beta"] for r in reference if r["type"] == "train"]
    assert len(set(trained_with)) > 1, "the beta never moved: the test shows nothing"
    assert trained_with[-1] != trained_with[-2], "iteration 7 needs the last update's beta"
    for log in (folder, every):
        replay = ReplayedBeta(*read_beta_trajectory(str(log)), min_beta=0)
        assert [replay.value_at(i) for i in range(7)] == trained_with


def test_hparams_record_only_what_applies():
    dynamic = run_hparams(load_config(["dynamic_smoothl1.yaml"]))
    assert dynamic["beta_schedule"] == "adaptive" and dynamic["beta"] == 1.0
    caffe = run_hparams(load_config(["smoothl1.yaml"], ["model.roi_head.box_loss.sigma=3"]))
    assert "beta_schedule" not in caffe and caffe["beta"] == pytest.approx(1 / 9)
    giou = run_hparams(load_config(["giou.yaml"]))
    assert "beta" not in giou and "beta_schedule" not in giou and giou["box_loss"] == "giou"


def test_bad_config_fails_before_anything_runs(tmp_path, capsys):
    assert (
        _train_main(
            [
                "--cfg",
                "smoothl1.yaml",
                "model.roi_head.box_los.name=l1",
                f"output_dir={tmp_path / 'run'}",
            ]
        )
        == 2
    )
    assert "did you mean box_loss?" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert _train_main(["--cfg", "no_such.yaml"]) == 2


def _final_weights(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pth")["model"]


def test_resume_after_sigkill_reaches_the_same_weights(tiny_data, tmp_path):
    # killed after the first checkpoint (iteration 2 of 4): the resume must replay iterations 3-4
    # with the data order, the RNG state and Dynamic R-CNN's state of an uninterrupted run (the
    # update after iteration 3 averages statistics from before and after the kill)
    extra = {
        "train.max_iters": 4,
        "train.checkpoint_period": 2,
        "model.roi_head.box_loss.schedule.interval": 3,
        "model.roi_head.dynamic_label_assignment.interval": 3,
        "train.num_vis_images": 0,
        "data.loader.num_workers": 1,
    }
    straight = tmp_path / "straight"
    assert _train_main(["--cfg", "dynamic_rcnn.yaml", *tiny(tiny_data, straight, **extra)]) == 0

    killed = tmp_path / "killed"
    cmd = [
        sys.executable,
        str(TRAIN),
        "--cfg",
        "dynamic_rcnn.yaml",
        *tiny(tiny_data, killed, **extra),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # generous: on a loaded 2-core machine the child needs minutes to reach its first checkpoint
    deadline = time.time() + 600
    while (
        time.time() < deadline
        and not (killed / "checkpoints" / "last.pth").exists()
        and proc.poll() is None
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = load_checkpoint(killed / "checkpoints" / "last.pth")["iteration"]
    assert 0 < saved < 4, "the run must be killed part-way for this test to mean anything"

    assert (
        _train_main(["--cfg", "dynamic_rcnn.yaml", "--resume", *tiny(tiny_data, killed, **extra)])
        == 0
    )
    a, b = _final_weights(straight), _final_weights(killed)
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key


def test_nonfinite_loss_stops_with_a_diagnostic_checkpoint(tiny_data, tmp_path, monkeypatch):
    poison_third_training_forward(monkeypatch, trainer_mod)
    run = tmp_path / "run"
    cfg = load_config(["smoothl1.yaml"], tiny(tiny_data, run, **{"train.max_iters": 5}))
    with pytest.raises(
        trainer_mod.NonFiniteLossError, match="loss_box_reg is not finite at iteration 3"
    ):
        trainer_mod.train(cfg, run)
    assert (run / "checkpoints" / "nonfinite_iter3.pth").is_file()
    # the last good one, untouched
    assert load_checkpoint(run / "checkpoints" / "last.pth")["iteration"] == 2


def test_corrupt_checkpoint_falls_back_to_the_previous(tmp_path):
    ckpt = tmp_path / "checkpoints"
    save_checkpoint(
        {"model": {"w": torch.ones(1)}, "iteration": 1}, ckpt / "last.pth", keep_previous=True
    )
    save_checkpoint(
        {"model": {"w": torch.ones(1)}, "iteration": 2}, ckpt / "last.pth", keep_previous=True
    )
    data = (ckpt / "last.pth").read_bytes()
    (ckpt / "last.pth").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="last.pth: cannot be read"):
        load_checkpoint(ckpt / "last.pth")
    with pytest.warns(UserWarning, match="falling back"):
        state = find_resume_checkpoint(ckpt)
    assert state["iteration"] == 1
    # the corrupt file is set aside, so the next save keeps the good fallback as last.prev.pth
    assert (ckpt / "last.corrupt.pth").is_file() and not (ckpt / "last.pth").exists()
    save_checkpoint(
        {"model": {"w": torch.ones(1)}, "iteration": 2}, ckpt / "last.pth", keep_previous=True
    )
    assert load_checkpoint(ckpt / "last.prev.pth")["iteration"] == 1
    (ckpt / "last.pth").write_bytes(b"garbage")
    (ckpt / "last.prev.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint"), pytest.warns(UserWarning):
        find_resume_checkpoint(ckpt)
    assert find_resume_checkpoint(tmp_path / "empty") is None
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")


def test_lr_schedule_warmup_then_decay():
    def factor(schedule, iteration):
        keys = ["train.max_iters=100", "train.milestones=[0.5, 80]", "train.gamma=0.1"]
        keys += [
            "train.warmup_iters=10",
            "train.warmup_factor=0.001",
            f"train.lr_schedule={schedule}",
        ]
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        return build_lr_scheduler(load_config([], keys), optimizer).lr_lambdas[0](iteration)

    assert factor("multistep", 0) == pytest.approx(0.001)
    assert factor("multistep", 5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert factor("multistep", 10) == 1.0
    assert factor("multistep", 50) == pytest.approx(0.1)
    # a milestone > 1 is an iteration
    assert factor("multistep", 79) == pytest.approx(0.1)
    assert factor("multistep", 80) == pytest.approx(0.01)
    assert factor("cosine", 50) == pytest.approx(0.5)
    assert factor("cosine", 100) == pytest.approx(0.0)


def test_ddp_two_processes_gloo(tiny_data, tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(TRAIN),
        "--cfg",
        "dynamic_smoothl1.yaml",
        *tiny(
            tiny_data,
            run,
            **{"train.max_iters": 3, "train.batch_size": 1, "train.num_vis_images": 0},
        ),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["type"] == "start")
    assert start["world_size"] == 2
    assert [r["iter"] for r in records if r["type"] == "train"] == [1, 2, 3]
    state = load_checkpoint(run / "checkpoints" / "last.pth")
    assert isinstance(state["rng"], list) and len(state["rng"]) == 2
    assert result.stdout.count("run folder:") == 1  # the final table is printed by rank 0 only


def test_precomputed_proposals_train_and_evaluate(tiny_data, tmp_path):
    """Classic Fast R-CNN: proposals from a JSON file (original pixels) move with the
    resized/flipped image."""
    from detector.data.build import build_dataset

    cfg = load_config([], tiny(tiny_data, tmp_path / "probe"))
    proposals = {}
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        ds = build_dataset(cfg, split, transforms=False)
        for i in range(len(ds)):
            boxes = ds.get_target(i)["boxes"]
            noisy = boxes.repeat(8, 1) + torch.randn(len(boxes) * 8, 4, generator=gen) * 4
            w, h = ds.get_image_info(i)["width"], ds.get_image_info(i)["height"]
            noisy = torch.minimum(noisy.clamp(min=0), torch.tensor([w, h, w, h]))
            keep = (noisy[:, 2] > noisy[:, 0] + 1) & (noisy[:, 3] > noisy[:, 1] + 1)
            proposals[str(ds.get_image_info(i)["image_id"])] = [
                b + [0.9] for b in noisy[keep].tolist()
            ]
    path = tmp_path / "proposals.json"
    path.write_text(json.dumps(proposals))
    run = tmp_path / "run"
    extra = {"model.proposals": "precomputed", "model.proposal_file": str(path)}
    cfg = load_config(["smoothl1.yaml"], tiny(tiny_data, run, **extra))
    metrics = trainer_mod.train(cfg, run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["type"] == "train"][-1]
    assert last["loss_rpn_cls"] == 0 and last["num_fg"] > 0
    assert "AP" in metrics

    del proposals[next(iter(proposals))]
    path.write_text(json.dumps(proposals))
    from detector.data.base import DatasetError

    with pytest.raises(DatasetError, match="no proposals for 1 images"):
        trainer_mod.train(cfg, tmp_path / "run2")


def test_bad_input_is_one_line_error_not_a_traceback(tmp_path, capsys):
    """A missing dataset folder, a best_metric the evaluator does not compute: one clear line, exit
    code 1/2."""
    code = _train_main(
        [
            "--cfg",
            "smoothl1.yaml",
            "data.format=coco",
            f"data.root={tmp_path / 'nowhere'}",
            f"output_dir={tmp_path / 'run'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "nowhere" in err and "Traceback" not in err
    code = _train_main(
        ["--cfg", "smoothl1.yaml", "train.best_metric=mAP_voc", f"output_dir={tmp_path / 'run'}"]
    )
    assert code == 2 and "best_metric" in capsys.readouterr().err


def test_a_replayed_beta_trains_as_the_run_it_replays(tiny_data, tmp_path):
    """Dynamic's beta replayed from its own log (every step logged) with the same seed logs the same
    losses at every step: the replay control differs from adaptive only by the feedback."""
    keys = {
        "model.roi_head.box_loss.name": "dynamic_smooth_l1",
        "model.roi_head.box_loss.schedule.interval": 1,
        "model.roi_head.box_loss.schedule.topk": 1,
        "model.roi_head.box_loss.schedule.statistic": "official",
        "train.max_iters": 4,
    }
    logs = []
    replay = {
        "model.roi_head.box_loss.schedule.type": "replay",
        "model.roi_head.box_loss.schedule.file": str(tmp_path / "adaptive"),
    }
    for name, extra in (("adaptive", {}), ("replay", replay)):
        run = tmp_path / name
        cfg = load_config([], tiny(tiny_data, run, **keys, **extra))
        trainer_mod.train(cfg, run)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        logs.append(
            [(r["iter"], r["beta"], r["total_loss"]) for r in records if r["type"] == "train"]
        )
    assert [it for it, _, _ in logs[0]] == [1, 2, 3, 4]
    # the adaptive beta moved, and the replay followed it
    assert len({beta for _, beta, _ in logs[0]}) >= 2
    assert logs[1] == logs[0]
