"""Run folders never lose or mix data: refusal, --overwrite, the lock, resume checks, crash-safe
ends, Ctrl-C, checkpoint fallback and leftovers, replayed metrics, and the one-line messages for
disk and path problems."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import poison_third_training_forward, tiny_run_overrides

from detector.config import load_config
from detector.data.synthetic import ensure_synthetic
from detector.engine import checkpoint as checkpoint_mod
from detector.engine import trainer as trainer_mod
from detector.engine.checkpoint import CheckpointError, Progress, load_checkpoint, save_checkpoint
from detector.engine.logger import format_value
from detector.engine.runs import RunFolderError, RunLock, check_run_folder
from detector.engine.runtime import GracefulStop

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import train as train_tool  # noqa: E402  (tools/train.py: its main() is what the user runs)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


def cfg_for(data_root: Path, run: Path, **extra):
    return load_config(["smoothl1.yaml"], tiny_run_overrides(data_root, run, **extra))


def cli(data_root: Path, run: Path, *flags: str, **extra) -> list[str]:
    return ["--cfg", "smoothl1.yaml", *tiny_run_overrides(data_root, run, **extra), *flags]


def train_records(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["iter"] for r in map(json.loads, lines) if r["type"] == "train"]


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    trainer_mod.train(cfg_for(data_root, run), run)
    return run


# -------------------------------------------------------------------------- re-runs and --overwrite
def test_rerun_into_a_finished_run_refuses_and_touches_nothing(data_root, finished_run, capsys):
    before = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    assert train_tool.main(cli(data_root, finished_run)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "already holds a finished run" in err[0] and str(finished_run) in err[0]
    )
    assert "--resume" in err[0] and "output_dir=" in err[0] and "--overwrite" in err[0]
    after = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    assert after == before


def test_overwrite_replaces_the_run_but_keeps_the_users_files(data_root, tmp_path):
    run = tmp_path / "run"
    trainer_mod.train(cfg_for(data_root, run), run)
    (run / "notes.txt").write_text("mine")
    # beside the run's own files, in its folders
    (run / "eval" / "plot.png").write_bytes(b"mine too")
    (run / "checkpoints" / "README").write_text("kept")
    first_events = set(run.glob("events.out.tfevents.*"))
    trainer_mod.train(cfg_for(data_root, run, **{"train.max_iters": 3}), run, overwrite=True)
    assert train_records(run) == [1, 2, 3]  # one run's records, not two appended
    assert (run / "notes.txt").read_text() == "mine"
    assert (run / "eval" / "plot.png").read_bytes() == b"mine too"
    assert (run / "checkpoints" / "README").read_text() == "kept"
    assert not first_events & set(run.glob("events.out.tfevents.*"))
    assert load_checkpoint(run / "checkpoints" / "last.pth")["iteration"] == 3


def test_a_folder_with_only_other_files_is_not_a_run(data_root, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("written by the ablation runner\n")
    plan = check_run_folder(run, cfg_for(data_root, run), resume=False, overwrite=False)
    assert not plan.resume and not plan.notes


# ----------------------------------------------------------------------------------------- the lock
def test_a_second_training_into_a_locked_folder_refuses_naming_the_holder(data_root, tmp_path):
    run = tmp_path / "run"
    with RunLock(run):  # this process holds it, as a first training would
        holder = json.loads((run / ".lock").read_text())
        with pytest.raises(
            RunFolderError, match=f"in use by another training \\(pid {os.getpid()} on "
        ):
            trainer_mod.train(cfg_for(data_root, run), run)
        assert holder["pid"] == os.getpid()
    assert not (run / ".lock").exists() and not (run / "config.yaml").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (run / ".lock").write_text(
        json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"})
    )
    trainer_mod.train(cfg_for(data_root, run), run)
    assert f"taking over a stale lock of process {dead.pid}" in capsys.readouterr().err
    assert not (run / ".lock").exists() and (run / "eval" / "metrics.json").is_file()


# ------------------------------------------------------------------------------------------- resume
def test_resume_with_another_experiment_refuses_and_writes_nothing(data_root, finished_run, capsys):
    config_before = (finished_run / "config.yaml").read_bytes()
    other = cli(data_root, finished_run, "--resume", **{"model.backbone.name": "resnet34"})
    assert train_tool.main(other + ["model.roi_head.box_loss.name=giou"]) == 2
    err = capsys.readouterr().err
    assert (
        "model.backbone.name" in err and "model.roi_head.box_loss.name" in err and "--resume" in err
    )
    assert (finished_run / "config.yaml").read_bytes() == config_before


def test_a_longer_run_needs_extend_where_a_schedule_derives_from_max_iters(
    data_root, tmp_path, capsys
):
    run = tmp_path / "run"
    trainer_mod.train(cfg_for(data_root, run), run)
    cfg = cfg_for(
        data_root, run, **{"train.max_iters": 3, "train.resume": True, "train.log_period": 3}
    )
    with pytest.raises(
        RunFolderError,
        match=r"train.max_iters 2 -> 3 changes what the run learns "
        r"\(train.lr_schedule=cosine derive from it\).*--extend",
    ):
        trainer_mod.train(cfg, run)
    assert load_config([run / "config.yaml"]).train.max_iters == 2  # nothing was written
    trainer_mod.train(cfg, run, extend=True)
    err = capsys.readouterr().err
    assert "--extend: train.max_iters 2 -> 3; train.lr_schedule=cosine are recomputed" in err
    assert "--resume: changed train.log_period" in err
    assert load_checkpoint(run / "checkpoints" / "last.pth")["iteration"] == 3
    assert load_config([run / "config.yaml"]).train.max_iters == 3


def test_a_longer_run_resumes_plainly_where_nothing_derives_from_max_iters(
    data_root, tmp_path, capsys
):
    steps = {"train.lr_schedule": "multistep", "train.milestones": [100], "train.warmup_iters": 0}
    run = tmp_path / "run"
    trainer_mod.train(cfg_for(data_root, run, **steps), run)
    trainer_mod.train(
        cfg_for(data_root, run, **steps, **{"train.max_iters": 3, "train.resume": True}), run
    )
    assert load_checkpoint(run / "checkpoints" / "last.pth")["iteration"] == 3
    assert "--extend" not in capsys.readouterr().err


def test_a_run_without_its_config_is_refused_even_on_resume(data_root, tmp_path):
    run = tmp_path / "run"
    trainer_mod.train(cfg_for(data_root, run), run)
    (run / "config.yaml").unlink()
    for resume in (False, True):
        with pytest.raises(
            RunFolderError,
            match=r"holds a run's files \(metrics.jsonl, checkpoints, eval.*"
            r"but no config.yaml",
        ):
            trainer_mod.train(cfg_for(data_root, run, **{"train.resume": resume}), run)
    assert not (run / "config.yaml").exists()


def test_resume_of_a_run_made_before_a_key_existed_takes_its_default(data_root, tmp_path, capsys):
    """A key added to base.yaml after the run was made is not a difference: the run had its (new)
    default."""
    run = tmp_path / "run"
    trainer_mod.train(cfg_for(data_root, run), run)
    stored = yaml.safe_load((run / "config.yaml").read_text())
    # as written by an older version
    del (
        stored["train"]["lr_reference_batch"],
        stored["data"]["val_fraction"],
    )
    (run / "config.yaml").write_text(yaml.safe_dump(stored))
    trainer_mod.train(
        cfg_for(data_root, run, **{"train.max_iters": 3, "train.resume": True}), run, extend=True
    )
    assert load_checkpoint(run / "checkpoints" / "last.pth")["iteration"] == 3
    stored["train"]["lr"] = 0.5  # but a key it has, with another value, still refuses
    (run / "config.yaml").write_text(yaml.safe_dump(stored))
    with pytest.raises(RunFolderError, match="train.lr"):
        trainer_mod.train(
            cfg_for(data_root, run, **{"train.max_iters": 4, "train.resume": True}),
            run,
            extend=True,
        )


def test_resume_on_a_fresh_folder_says_it_starts_from_scratch(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    trainer_mod.train(cfg_for(data_root, run, **{"train.resume": True}), run)
    assert "holds no run yet; starting from scratch" in capsys.readouterr().err


def records_of(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def train_and_crash_after_logging_3(cfg, run: Path, monkeypatch) -> None:
    """Train ``cfg`` into ``run`` until a crash right after iteration 3 is logged."""
    original = trainer_mod.log_train_step

    def crash_after_logging_3(logger, bar, cfg, done, *args):
        original(logger, bar, cfg, done, *args)
        if done == 3:
            raise RuntimeError("simulated crash")

    with monkeypatch.context() as patched:
        patched.setattr(trainer_mod, "log_train_step", crash_after_logging_3)
        with pytest.raises(RuntimeError, match="simulated crash"):
            trainer_mod.train(cfg, run)


@pytest.mark.parametrize("max_iters", [4, 5], ids=["same-length", "new-length"])
def test_a_resume_without_a_checkpoint_starts_over_without_mixing_records(
    data_root, tmp_path, monkeypatch, capsys, max_iters
):
    # killed before its first checkpoint (or its checkpoints lost with the machine): the records
    # it logged describe iterations that no checkpoint holds. A new train.max_iters needs no
    # --extend there: the run starts over at that length, nothing is extended
    run = tmp_path / "run"
    steps = {"train.max_iters": 4, "train.checkpoint_period": 10}
    train_and_crash_after_logging_3(cfg_for(data_root, run, **steps), run, monkeypatch)
    assert train_records(run) == [1, 2, 3] and not list((run / "checkpoints").glob("*.pth"))
    steps["train.max_iters"] = max_iters
    trainer_mod.train(cfg_for(data_root, run, **steps, **{"train.resume": True}), run)
    assert train_records(run) == list(range(1, max_iters + 1))
    assert len(records_of(run, "start")) == 1
    assert "no checkpoint holds the 4 records in" in capsys.readouterr().err


def test_a_resume_that_would_start_over_beside_a_kept_best_pth_refuses(data_root, tmp_path, capsys):
    # best.pth of the lost training would sit beside a new one's records until replaced
    run = tmp_path / "run"
    trainer_mod.train(cfg_for(data_root, run, **{"train.max_iters": 3}), run)
    (run / "eval" / "metrics.json").unlink()
    (run / "metrics.jsonl").write_text('{"type": "train", "iter": 1}\n')
    (run / "checkpoints" / "last.pth").rename(run / "checkpoints" / "best.pth")
    (run / "checkpoints" / "last.prev.pth").unlink(missing_ok=True)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert train_tool.main(cli(data_root, run, "--resume", **{"train.max_iters": 3})) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "best.pth is there but nothing to resume from" in err[0]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_final_evaluation_done_again_is_logged_once(data_root, finished_run, tmp_path):
    # killed after its final evaluation was logged, before eval/metrics.json was written
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "eval" / "metrics.json").unlink()
    assert train_tool.main(cli(data_root, run, "--resume")) == 0
    assert [r["iter"] for r in records_of(run, "eval")] == [2]


def test_a_finished_run_without_checkpoints_is_left_as_it_is(
    data_root, finished_run, tmp_path, capsys
):
    # a record kept with --keep-checkpoint none, or committed: --resume must not train it again
    run = tmp_path / "record"
    shutil.copytree(finished_run, run)
    shutil.rmtree(run / "checkpoints")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert train_tool.main(cli(data_root, run, "--resume")) == 0
    assert train_tool.main(cli(data_root, run)) == 2
    assert "it has no checkpoint to go on from" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("loss", ["trained longer", "without eval/metrics.json"])
def test_a_finished_run_without_checkpoints_is_never_trained_again(
    data_root, finished_run, tmp_path, capsys, loss
):
    # neither can go on from its end, and starting over would drop its records
    run = tmp_path / "record"
    shutil.copytree(finished_run, run)
    shutil.rmtree(run / "checkpoints")
    if loss == "trained longer":
        flags = cli(data_root, run, "--resume", "--extend", **{"train.max_iters": 3})
    else:
        (run / "eval" / "metrics.json").unlink()
        flags = cli(data_root, run, "--resume")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert train_tool.main(flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint to train on from" in err[0]
    assert "--overwrite" in err[0] and "output_dir=" in err[0]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_replayed_iterations_are_not_logged_twice(data_root, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = cfg_for(data_root, run, **{"train.max_iters": 4, "train.checkpoint_period": 2})
    train_and_crash_after_logging_3(cfg, run, monkeypatch)
    assert train_records(run) == [1, 2, 3] and not (run / ".lock").exists()
    (run / "checkpoints" / ".last.pth.orphan.tmp").write_bytes(b"left by a dead writer")
    trainer_mod.train(
        cfg_for(
            data_root,
            run,
            **{"train.max_iters": 4, "train.checkpoint_period": 2, "train.resume": True},
        ),
        run,
    )
    assert train_records(run) == [1, 2, 3, 4]
    assert not list((run / "checkpoints").glob("*.tmp"))


# ---------------------------------------------------------------------------------- crash-safe ends
def test_last_checkpoint_is_written_before_the_final_evaluation(data_root, tmp_path, monkeypatch):
    run = tmp_path / "run"

    def failing_eval(*args, **kwargs):
        raise OSError(28, "No space left on device", str(run / "eval"))

    monkeypatch.setattr(trainer_mod, "evaluate_model", failing_eval)
    with pytest.raises(OSError):
        trainer_mod.train(
            cfg_for(data_root, run, **{"train.max_iters": 4, "train.checkpoint_period": 3}), run
        )
    assert load_checkpoint(run / "checkpoints" / "last.pth")["iteration"] == 4


def test_ctrl_c_finishes_the_step_saves_and_says_how_to_resume(
    data_root, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    original = trainer_mod.LossWatch.record

    def interrupt_at_3(self, losses, iteration):
        if iteration == 2:  # during the third step
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, losses, iteration)

    monkeypatch.setattr(trainer_mod.LossWatch, "record", interrupt_at_3)
    argv = cli(data_root, run, **{"train.max_iters": 50, "train.checkpoint_period": 50})
    assert train_tool.main(argv) == 130
    err = capsys.readouterr().err
    assert (
        "stopped by SIGINT at iteration 3 of 50" in err
        and "--resume" in err
        and "Traceback" not in err
    )
    assert load_checkpoint(run / "checkpoints" / "last.pth")["iteration"] == 3
    assert not (run / ".lock").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_a_second_ctrl_c_exits_at_once():
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pth"
    save_checkpoint({"model": {"w": torch.ones(1)}, "iteration": 1}, path)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 4416 vs 4304"
        )

    monkeypatch.setattr(checkpoint_mod.torch, "save", full_disk)
    with pytest.raises(
        CheckpointError,
        match=r"last.pth: could not write the checkpoint \(the disk is full\); "
        r".*last.pth is intact",
    ):
        save_checkpoint({"model": {"w": torch.ones(1)}, "iteration": 2}, path, keep_previous=True)
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1 and not (path.parent / "last.prev.pth").exists()
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]  # no temporary left behind


def test_a_bug_in_a_checkpoint_write_keeps_its_traceback(tmp_path, monkeypatch):
    def bug(obj, f, *args, **kwargs):
        raise RuntimeError("some internal assertion")

    monkeypatch.setattr(checkpoint_mod.torch, "save", bug)
    with pytest.raises(RuntimeError, match="some internal assertion"):
        save_checkpoint({"iteration": 2}, tmp_path / "last.pth")


# ----------------------------------------------------------------------------------------- messages
def test_impossible_output_dir_and_data_root_are_one_line(data_root, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert train_tool.main(cli(data_root, blocker / "run")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[0].startswith(f"error: {blocker / 'run'}")
        and "Not a directory" in err[0]
        and len(err) == 1
    )
    assert train_tool.main(cli(blocker / "synthetic", tmp_path / "run2")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert str(blocker) in err[0] and "Not a directory" in err[0] and len(err) == 1


def test_options_and_overrides_mix_in_any_order(capsys):
    code = train_tool.main(
        ["--cfg", "smoothl1.yaml", "train.max_iters=10", "--resume", "nosuch.key=1"]
    )
    assert code == 2 and "unknown key nosuch" in capsys.readouterr().err


def test_every_tool_with_overrides_mixes_them_with_options(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("eval_tool", REPO / "tools" / "eval.py")
    eval_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_tool)
    argv = [
        "--cfg",
        "smoothl1.yaml",
        "train.device=cpu",
        "--dets",
        str(tmp_path / "d.json"),
        "nosuch.key=1",
    ]
    assert eval_tool.main(argv) == 2  # reached the config, not argparse's "unrecognized arguments"
    assert "unknown key nosuch" in capsys.readouterr().err
    for tool in ("train", "eval", "dump_proposals", "ablate", "benchmark"):
        text = (REPO / "tools" / f"{tool}.py").read_text()
        assert "parse_intermixed_args(argv)" in text and "parse_args(argv)" not in text, tool


def test_an_error_in_the_middle_of_training_starts_on_its_own_line(tmp_path, capfd):
    root, run = tmp_path / "synthetic", tmp_path / "run"
    cfg = cfg_for(root, run)
    ensure_synthetic(root, **cfg.data.synthetic.to_dict())
    image = sorted((root / "val").iterdir())[0]
    # truncated: the evaluation at iteration 2 fails on it
    image.write_bytes(image.read_bytes()[:200])
    assert train_tool.main(cli(root, run, **{"train.max_iters": 3, "train.eval_period": 2})) == 1
    err = capfd.readouterr().err
    assert "train: " in err and "2/3" in err  # the progress bar was drawn on stderr
    lines = err.split("\n")
    error = [line for line in lines if "error: " in line]
    assert len(error) == 1 and error[0].startswith(f"error: {image}: cannot decode image"), error


def test_a_bug_keeps_its_traceback_and_user_errors_do_not(data_root, tmp_path, monkeypatch, capsys):
    def bug(*args, **kwargs):
        raise RuntimeError("a bug in our code")

    monkeypatch.setattr(trainer_mod, "build_detector", bug)
    with pytest.raises(RuntimeError, match="a bug in our code"):
        train_tool.main(cli(data_root, tmp_path / "run"))
    monkeypatch.undo()
    assert (
        train_tool.main(
            cli(data_root, tmp_path / "run2", **{"model.backbone.weights": "/no/such.pth"})
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(
        "error: model.backbone.weights='/no/such.pth' is neither an existing file"
    )


def test_a_split_without_boxes_is_warned_once_and_picks_no_best(capsys):
    class NoBoxes:
        name, records = "instances_train.json", [type("R", (), {"boxes": []})()] * 3

        def __len__(self):
            return 3

    trainer_mod.warn_if_no_boxes(NoBoxes(), "training")
    assert (
        "training split (instances_train.json, 3 images) has no boxes at all"
        in capsys.readouterr().err
    )
    progress = Progress()
    assert not trainer_mod.keep_best(progress, {"AP": -1.0}, "AP")
    assert not trainer_mod.keep_best(progress, {"AP": -1.0}, "AP")
    assert capsys.readouterr().err.count("the val split has no ground-truth boxes") == 1
    assert trainer_mod.keep_best(progress, {"AP": 0.25}, "AP") and progress.best == 0.25


def test_console_values_never_show_negative_zero():
    assert (
        format_value(-0.0) == "0.0000"
        and format_value(-1e-7) == "0.0000"
        and format_value(-0.5) == "-0.5000"
    )


# --------------------------------------------------------------------------------- issue 22's cases
def test_the_nonfinite_message_names_only_files_that_exist(data_root, tmp_path, monkeypatch):
    poison_third_training_forward(monkeypatch, trainer_mod)
    for period, last_named in ((50, False), (1, True)):
        run = tmp_path / f"run{period}"
        cfg = cfg_for(
            data_root,
            run,
            **{
                "train.max_iters": 4,
                "train.checkpoint_period": period,
                "train.log_period": 4,
                "train.num_vis_images": 0,
            },
        )
        with pytest.raises(trainer_mod.NonFiniteLossError) as info:
            trainer_mod.train(cfg, run)
        message = str(info.value)
        # the third forward is iteration 3, as the log counts (from 1)
        assert message.startswith("loss_box_reg is not finite at iteration 3 (")
        assert f"diagnostic checkpoint: {run / 'checkpoints' / 'nonfinite_iter3.pth'}" in message
        assert (
            f"last good checkpoint: {run / 'checkpoints' / 'last.pth'}" in message
        ) is last_named
        assert ("no checkpoint was written before it" in message) is not last_named
        assert (run / "checkpoints" / "nonfinite_iter3.pth").is_file()
        assert (run / "checkpoints" / "last.pth").is_file() is last_named


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_final_evaluation_is_one_line_exit_130_and_no_lock(
    sig, data_root, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    real_evaluate = trainer_mod.evaluate_model

    def evaluate_then_signal(*args, **kwargs):
        os.kill(os.getpid(), sig)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "evaluate_model", evaluate_then_signal)
    assert train_tool.main(cli(data_root, run, **{"train.num_vis_images": 0})) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: stopped by {sig.name} before the run finished; {run / 'checkpoints' / 'last.pth'} "
        f"holds the run; continue with the same command plus --resume"
    )
    assert "Traceback" not in "\n".join(err) and not (run / ".lock").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.undo()
    assert train_tool.main(cli(data_root, run, "--resume")) == 0  # only the evaluation is left
    assert (run / "eval" / "metrics.json").is_file()


def test_a_start_that_fails_on_bad_data_leaves_nothing_that_blocks_the_fixed_command(
    data_root, tmp_path, capsys
):
    bad = tmp_path / "bad"
    (bad / "annotations").mkdir(parents=True)
    (bad / "annotations" / "instances_train.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "missing.jpg", "height": 10, "width": 10}],
                "categories": [{"id": 1, "name": "a"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}],
            }
        )
    )
    run = tmp_path / "run"
    assert train_tool.main(cli(bad, run, **{"data.format": "coco"})) == 1
    assert "missing.jpg" in capsys.readouterr().err
    assert not run.exists() or not list(run.iterdir())  # no config.yaml, no lock, nothing
    assert train_tool.main(cli(data_root, run)) == 0  # the fixed command needs no --overwrite
