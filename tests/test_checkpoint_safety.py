"""Checkpoints are data, not code, and every file a run reads is named in one line when it cannot be
used: a pickle that would run code is refused by resume, eval and dump_proposals (unless
--trust-checkpoint), a checkpoint of today's format still resumes bit-exactly, weights of another
model give the one "does not fit" line wherever they are loaded, and the run lock is never seen
half-written."""

import json
import os
import pickle
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_run_overrides

from detector.config import load_config
from detector.data.build import build_dataset
from detector.engine import trainer as trainer_mod
from detector.engine.checkpoint import UnsafeCheckpointError, load_checkpoint, restore_rng_state
from detector.engine.runs import LOCK_FILE, RunFolderError, RunLock
from detector.modeling.detector import build_detector

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import dump_proposals as dump_tool  # noqa: E402
import eval as eval_tool  # noqa: E402
import train as train_tool  # noqa: E402


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


def overrides(data_root: Path, run: Path, **extra) -> list[str]:
    return tiny_run_overrides(data_root, run, **extra)


class Evil:
    """Unpickling it runs a shell command that creates ``marker``: what a checkpoint must never be
    able to do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_evil(path: Path, marker: Path, raw: bool = False) -> Path:
    """A .pth whose unpickling runs code: torch.save's zip, or a plain pickle.dump."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if raw:
        path.write_bytes(pickle.dumps({"model": Evil(marker)}))
    else:
        torch.save({"model": Evil(marker)}, path)
    return path


def one_error_line(err: str) -> str:
    """The tool's error, one line: stderr's last line (train.py's traceback hint aside) starts with
    "error:" and no other line does (notices of the work done before may precede it); no
    traceback."""
    assert "Traceback" not in err, err
    lines = [
        line
        for line in err.strip().splitlines()
        if not line.startswith("(set DETECTOR_TRACEBACK=1")
    ]
    assert (
        lines[-1].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1
    ), lines
    return lines[-1]


# ------------------------------------------------------------------------------------- the run lock
def test_the_lock_is_linked_into_place_whole_and_leaves_no_temporary(tmp_path, monkeypatch):
    seen = []
    real_link = os.link

    def link(src, dst):  # the content is complete before the lock exists
        seen.append(json.loads(Path(src).read_text()))
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link)
    with RunLock(tmp_path / "run") as lock:
        assert seen == [json.loads(lock.path.read_text())] and seen[0]["pid"] == os.getpid()
        assert (
            seen[0]["host"] == socket.gethostname() and (lock.path.stat().st_mode & 0o777) == 0o644
        )
        assert sorted(p.name for p in lock.path.parent.iterdir()) == [LOCK_FILE]
        with pytest.raises(
            RunFolderError, match=f"in use by another training \\(pid {os.getpid()} on "
        ):
            RunLock(
                tmp_path / "run"
            ).acquire()  # exclusive: the second taker refuses and leaves nothing
    assert list((tmp_path / "run").iterdir()) == []


@pytest.mark.parametrize(
    "content", ["", '{"pid": 12', "[1, 2]"], ids=["empty", "half-written", "not-a-lock"]
)
def test_a_lock_that_cannot_be_read_is_one_line_naming_it_and_the_fix(tmp_path, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text(content)
    with pytest.raises(RunFolderError) as info:
        RunLock(run).acquire()
    message = str(info.value)
    assert (
        message.startswith(f"{run / LOCK_FILE} exists but cannot be read (") and "\n" not in message
    )
    assert message.endswith(f"; if no training uses {run}, delete it") and "pid None" not in message
    assert (run / LOCK_FILE).read_text() == content and sorted(run.iterdir()) == [run / LOCK_FILE]


def test_training_into_a_folder_with_an_unreadable_lock_prints_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    # a lock as a writer of the old code left it, mid-write
    (run / LOCK_FILE).write_text('{"pid": 12')
    code = train_tool.main(["--cfg", "smoothl1.yaml", *tiny_run_overrides(tmp_path / "data", run)])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and line.startswith(f"error: {run / LOCK_FILE} exists but cannot be read (")
    assert not (run / "config.yaml").exists()


# ----------------------------------------------------------------------------- checkpoints are data
def test_a_run_whose_last_checkpoint_runs_code_refuses_to_resume_in_one_line(data_root, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "MARKER"
    args = overrides(data_root, run)
    write_evil(run / "checkpoints" / "last.pth", marker)
    # the run folder of this very config
    load_config(["smoothl1.yaml"], args).save(run / "config.yaml")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "train.py"),
            "--cfg",
            "smoothl1.yaml",
            *args,
            "--resume",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    line = one_error_line(proc.stderr)
    assert proc.returncode != 0 and not marker.exists()
    assert line.startswith(
        f"error: {run / 'checkpoints' / 'last.pth'}: holds posix.system, which is code, not "
        f"checkpoint data"
    ) and line.endswith("load it with --trust-checkpoint")
    assert (run / "checkpoints" / "last.pth").is_file() and not (
        run / "checkpoints" / "last.corrupt.pth"
    ).exists()


@pytest.mark.parametrize("raw", [False, True], ids=["torch.save", "pickle.dump"])
def test_eval_of_a_checkpoint_that_runs_code_is_one_line(data_root, tmp_path, raw, capsys):
    marker = tmp_path / "MARKER"
    evil = write_evil(tmp_path / "evil.pth", marker, raw=raw)
    code = eval_tool.main(
        ["--cfg", "smoothl1.yaml", "--ckpt", str(evil), *overrides(data_root, tmp_path / "run")]
    )
    line = one_error_line(capsys.readouterr().err)
    assert code != 0 and not marker.exists() and line.startswith(f"error: {evil}: ")
    assert (
        ("holds posix.system" in line and "--trust-checkpoint" in line)
        if not raw
        else "cannot be read" in line
    )


def test_dump_proposals_of_a_checkpoint_that_runs_code_is_one_line(data_root, tmp_path, capsys):
    marker, out = tmp_path / "MARKER", tmp_path / "p.json"
    evil = write_evil(tmp_path / "evil.pth", marker)
    code = dump_tool.main(
        [
            "--cfg",
            "smoothl1.yaml",
            "--ckpt",
            str(evil),
            "--out",
            str(out),
            *overrides(data_root, tmp_path / "run"),
        ]
    )
    line = one_error_line(capsys.readouterr().err)
    assert code != 0 and not marker.exists() and not out.exists()
    assert line.startswith(f"error: {evil}: holds posix.system") and "--trust-checkpoint" in line


def test_only_the_explicit_opt_in_unpickles_a_file_that_is_more_than_data(tmp_path):
    marker = tmp_path / "MARKER"
    evil = write_evil(tmp_path / "evil.pth", marker)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(evil)
    assert not marker.exists()
    load_checkpoint(evil, trust=True)  # --trust-checkpoint: the user vouched for the file
    assert marker.exists()


@pytest.mark.parametrize("tool", [train_tool, eval_tool, dump_tool], ids=lambda tool: tool.__name__)
def test_every_tool_that_loads_a_checkpoint_documents_the_opt_in(tool, capsys):
    with pytest.raises(SystemExit):
        tool.main(["--help"])
    # the usage line and the option with its help
    assert capsys.readouterr().out.count("--trust-checkpoint") >= 2


def today_format_checkpoint(state: dict, path: Path) -> Path:
    """``state`` written as main's Checkpointer.save wrote it before checkpoints were read as data
    only: numpy's RNG state as its ndarray tuple, python's as random.getstate()'s tuple, everything
    in one torch.save."""
    rng = state["rng"]
    version, internal, gauss = rng["python"]
    name, key, pos, has_gauss, cached = rng["numpy"]
    legacy = {
        "model": state["model"],
        "optimizer": state["optimizer"],
        "scheduler": state["scheduler"],
        "scaler": state["scaler"],
        "config": state["config"],
        "iteration": state["iteration"],
        "best": state["best"],
        "rng": {
            "python": (int(version), tuple(int(x) for x in internal), gauss),
            "numpy": (
                str(name),
                np.asarray(key, dtype=np.uint32),
                int(pos),
                int(has_gauss),
                float(cached),
            ),
            "torch": rng["torch"],
        },
    }
    assert (
        isinstance(legacy["rng"]["numpy"][1], np.ndarray) and type(legacy["rng"]["python"]) is tuple
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(legacy, path)
    return path


def test_a_checkpoint_of_todays_format_resumes_bit_exactly(data_root, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    extra = {"train.max_iters": 3, "train.num_vis_images": 0}
    trainer_mod.train(
        load_config(["dynamic_rcnn.yaml"], overrides(data_root, straight, **extra)), straight
    )
    # checkpoint_period=1 keeps iteration 2
    at_2 = load_checkpoint(straight / "checkpoints" / "last.prev.pth")
    assert at_2["iteration"] == 2
    resumed.mkdir()
    shutil.copy(straight / "config.yaml", resumed / "config.yaml")
    legacy = today_format_checkpoint(at_2, resumed / "checkpoints" / "last.pth")
    # torch >= 2.5 can list them
    if hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
        # needs the numpy allowlist
        assert any(
            g.endswith("multiarray._reconstruct")
            for g in torch.serialization.get_unsafe_globals_in_checkpoint(legacy)
        )

    loaded = load_checkpoint(legacy)  # the RNG states come back as they were
    restore_rng_state(loaded["rng"])
    numpy_state, python_state = np.random.get_state(), random.getstate()
    assert python_state == tuple(at_2["rng"]["python"]) and numpy_state[0] == "MT19937"
    assert np.array_equal(numpy_state[1], at_2["rng"]["numpy"][1])
    assert numpy_state[2:] == tuple(at_2["rng"]["numpy"][2:])

    trainer_mod.train(
        load_config(
            ["dynamic_rcnn.yaml"], overrides(data_root, resumed, **extra, **{"train.resume": True})
        ),
        resumed,
    )
    a, b = (load_checkpoint(run / "checkpoints" / "last.pth") for run in (straight, resumed))
    assert a["iteration"] == b["iteration"] == 3 and a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["model"][key]), key
    # the RoI head's dynamic state (beta schedule and label assigner, through get_extra_state) too
    assert identical(a["model"]["roi_heads._extra_state"], b["model"]["roi_heads._extra_state"])


def identical(a, b) -> bool:
    """Nested dicts of tensors and python values, equal bit for bit."""
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
        )
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else type(a) is type(b) and a == b


# ----------------------------------------------------------------------------------- "does not fit"
def test_resume_from_another_backbones_checkpoint_is_the_one_does_not_fit_line(
    data_root, tmp_path, capsys
):
    run = tmp_path / "run"
    args = overrides(data_root, run)
    cfg = load_config(["smoothl1.yaml"], args)
    (run / "checkpoints").mkdir(parents=True)
    cfg.save(run / "config.yaml")
    other = load_config(["smoothl1.yaml"], args + ["model.backbone.name=resnet34"])
    classes = len(build_dataset(cfg, "train", transforms=False).classes) - 1
    torch.save(
        {
            "model": build_detector(other, num_classes=classes).state_dict(),
            "config": other.to_dict(),
            "iteration": 1,
        },
        run / "checkpoints" / "last.pth",
    )
    code = train_tool.main(["--cfg", "smoothl1.yaml", *args, "--resume"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 1
    assert line == (
        f"error: {run / 'checkpoints' / 'last.pth'} does not fit the model built from the config: "
        "model.backbone.name is resnet34 in the checkpoint but resnet18 in the config; it is not "
        f"a checkpoint of this run: move it out of {run / 'checkpoints'} (the resume then takes "
        "last.prev.pth, or starts from scratch), or replace the run with --overwrite"
    )
