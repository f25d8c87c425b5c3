"""Ablation launcher: GPU list from the user's CUDA_VISIBLE_DEVICES, placement of packed runs, CPU
shares, the environment and command of each run (PYTHONPATH prepended, never replaced)."""

import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from detector.ablation.launch import (
    REPO,
    Interrupted,
    Slot,
    child_env,
    cpu_share,
    plan_slots,
    run_local,
    slot_overrides,
    train_command,
    visible_gpus,
)
from detector.ablation.plan import Run, Step, plan_runs

sys.path.insert(0, str(REPO / "tools"))
import ablate  # noqa: E402


def no_torch() -> int:
    raise AssertionError("the device count must not be read when CUDA_VISIBLE_DEVICES is set")


def test_visible_gpus_follow_the_users_list():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}, no_torch) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": " 5 , 1 "}, no_torch) == ["5", "1"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-8f3a,MIG-1c2d"}, no_torch) == [
        "GPU-8f3a",
        "MIG-1c2d",
    ]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, no_torch) == []  # CUDA: no GPU
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}, no_torch) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "4,-1,5"}, no_torch) == [
        "4"
    ]  # CUDA stops at an invalid entry
    assert visible_gpus({}, lambda: 3) == ["0", "1", "2"]  # unset: every GPU torch counts
    assert visible_gpus({}, lambda: 0) == []


def test_five_jobs_on_two_gpus_pack_three_and_two():
    slots = plan_slots(5, ["2", "3"], cores=16)
    assert [s.gpu for s in slots] == ["2", "3", "2", "3", "2"]
    assert sorted([s.gpu for s in slots].count(g) for g in ("2", "3")) == [2, 3]
    # 16 cores // 5 jobs = 3 threads per run: one drives the GPU, two load data; 5 x 3 <= 16
    assert all((s.omp_threads, s.num_workers) == (1, 2) for s in slots)
    assert sum(s.omp_threads + s.num_workers for s in slots) <= 16


@pytest.mark.parametrize(
    "jobs, cores, threads", [(1, 2, 2), (2, 2, 1), (3, 8, 2), (4, 2, 1), (2, 16, 8)]
)
def test_cpu_only_runs_share_the_cores(jobs, cores, threads):
    slots = plan_slots(jobs, [], cores)
    assert len(slots) == jobs and all(s.gpu is None for s in slots)
    assert all(
        (s.omp_threads, s.num_workers) == (threads, 0) for s in slots
    )  # CPU runs compute; load in-process
    if jobs <= cores:
        assert sum(s.omp_threads + s.num_workers for s in slots) <= cores  # never oversubscribed


def test_cpu_share():
    assert cpu_share(1, on_gpu=True) == (1, 0)
    assert cpu_share(8, on_gpu=True) == (1, 7)
    assert cpu_share(0, on_gpu=False) == (1, 0)


def test_child_env_prepends_the_repo_and_keeps_the_users_entries():
    user = {
        "PYTHONPATH": os.pathsep.join(["/opt/site", "/home/u/lib"]),
        "HOME": "/home/u",
        "OMP_NUM_THREADS": "8",
    }
    env = child_env(user, Slot("3", omp_threads=2, num_workers=5))
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/opt/site", "/home/u/lib"]
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["HOME"] == "/home/u"
    assert env["OMP_NUM_THREADS"] == "2"  # the share, below the user's 8
    assert (
        child_env({"OMP_NUM_THREADS": "1"}, Slot(None, 4, 0))["OMP_NUM_THREADS"] == "1"
    )  # the user's, smaller
    bare = child_env({}, Slot(None, 4, 0))
    assert bare["PYTHONPATH"] == str(REPO) and "CUDA_VISIBLE_DEVICES" not in bare
    assert child_env({"PYTHONPATH": str(REPO)}, Slot(None, 1, 0))["PYTHONPATH"] == str(
        REPO
    )  # not twice


def test_slot_overrides_keep_an_explicit_num_workers():
    slot = Slot(None, 1, 3)
    assert slot_overrides(["seed=0"], slot) == ["seed=0", "data.loader.num_workers=3"]
    assert slot_overrides(["data.loader.num_workers=0", "seed=0"], slot) == [
        "data.loader.num_workers=0",
        "seed=0",
    ]


def test_train_command(tmp_path):
    run = Run(
        "smoothl1", 1, ["smoothl1.yaml", "data/synthetic.yaml"], ["train.max_iters=5", "seed=1"]
    )
    step = Step(run, tmp_path / "runs" / run.name, "resume")
    cmd = train_command(step, run.overrides)
    assert cmd[:2] == [sys.executable, str(REPO / "tools" / "train.py")]
    assert cmd[2:] == [
        "--cfg",
        "smoothl1.yaml",
        "--cfg",
        "data/synthetic.yaml",
        "train.max_iters=5",
        "seed=1",
        f"output_dir={step.run_dir}",
        "--resume",
    ]
    step.action = "overwrite"
    assert train_command(step, run.overrides)[-1] == "--overwrite"
    step.action = "train"
    ddp = train_command(step, run.overrides, nproc=2)
    assert ddp[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert ddp[-1] == f"output_dir={step.run_dir}"


def fake_python(tmp_path: Path) -> tuple[Path, Path]:
    """An executable standing in for python: it records each run's environment and arguments, then
    fails fast."""
    record = tmp_path / "calls.tsv"
    script = tmp_path / "fake-python"
    script.write_text(
        '#!/bin/sh\nprintf "%s\\t%s\\t%s\\n" "$CUDA_VISIBLE_DEVICES" "$PYTHONPATH" "$*" >> '
        f"{record}\n"
        f'echo "error: fake trainer"\nexit 3\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, record


def calls_of_a_fake_ablation(tmp_path: Path, monkeypatch, *args: str) -> list[list[str]]:
    """Run the real ablation runner with the fake python; [CUDA_VISIBLE_DEVICES, PYTHONPATH, argv]
    per run."""
    script, record = fake_python(tmp_path)
    monkeypatch.setattr(sys, "executable", str(script))
    code = ablate.main(
        ["--cfgs", "smoothl1.yaml", "--out", str(tmp_path / "abl"), *args, "train.max_iters=2"]
    )
    assert code == 1  # the fake trainer fails every run
    return [line.split("\t") for line in record.read_text().splitlines()]


def test_packed_runs_go_to_the_users_gpus(tmp_path, monkeypatch):
    """CUDA_VISIBLE_DEVICES=2,3: the two runs go to GPUs 2 and 3, not to indices 0 and 1."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # what the old runner counted
    calls = calls_of_a_fake_ablation(tmp_path, monkeypatch, "--seeds", "2", "--jobs", "2")
    # which slot takes which run is a race (a fast failure can free a slot first); the GPUs are the
    # user's
    assert len(calls) == 2 and {c[0] for c in calls} <= {"2", "3"}


def test_runs_keep_the_users_pythonpath(tmp_path, monkeypatch, capsys):
    """Packages that come through PYTHONPATH (cluster modules, pip --target) stay importable in
    every run."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/opt/cluster/site-packages", "/home/u/lib"]))
    calls = calls_of_a_fake_ablation(tmp_path, monkeypatch, "--seeds", "1")
    assert len(calls) == 1
    assert calls[0][1].split(os.pathsep) == [str(REPO), "/opt/cluster/site-packages", "/home/u/lib"]
    assert "fake trainer" in capsys.readouterr().err  # the run's own last line is surfaced


def test_code_trains_with_another_checkout_and_its_launch_names_it(tmp_path, monkeypatch, capsys):
    """--code DIR: the runs train with DIR's tools/train.py, DIR first on PYTHONPATH, and each
    launch records DIR's commit (a pre-registered protocol's commit, whatever this checkout has
    become); a folder that is no checkout is one line before anything trains."""
    import json
    import subprocess

    checkout = tmp_path / "protocol"
    (checkout / "tools").mkdir(parents=True)
    (checkout / "detector").mkdir()
    (checkout / "tools" / "train.py").write_text("# the protocol's trainer\n")
    (checkout / "detector" / "__init__.py").write_text("")
    git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "protocol"], check=True)
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    calls = calls_of_a_fake_ablation(tmp_path, monkeypatch, "--seeds", "1", "--code", str(checkout))
    assert len(calls) == 1
    assert calls[0][1].split(os.pathsep)[0] == str(checkout)
    assert calls[0][2].split()[0] == str(checkout / "tools" / "train.py")
    launches = tmp_path / "abl" / "runs" / "smoothl1-seed0" / "launches.jsonl"
    launch = json.loads(launches.read_text().splitlines()[-1])
    assert launch["commit"] == commit and launch["dirty"] is False
    capsys.readouterr()

    # an unfinished run with no checkpoint: another checkout's trainer may not start it over
    # cleanly, so --code asks for --force, which replaces it
    run = plan_runs(["smoothl1.yaml"], [], 1, ["train.max_iters=2"])[0]
    run.config(tmp_path / "abl").save(tmp_path / "abl" / "runs" / run.name / "config.yaml")
    args = ["--cfgs", "smoothl1.yaml", "--seeds", "1", "--out", str(tmp_path / "abl")]
    assert ablate.main([*args, "--code", str(checkout), "train.max_iters=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "smoothl1-seed0" in err and "--force" in err
    calls = calls_of_a_fake_ablation(
        tmp_path, monkeypatch, "--seeds", "1", "--code", str(checkout), "--force"
    )
    assert calls[-1][2].split()[-1] == "--overwrite"
    capsys.readouterr()

    not_a_checkout = tmp_path / "empty"
    not_a_checkout.mkdir()
    args = ["--cfgs", "l1.yaml", "--seeds", "1", "--out", str(tmp_path / "abl2")]
    assert ablate.main([*args, "--code", str(not_a_checkout), "train.max_iters=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(not_a_checkout / "tools" / "train.py") in err


def ctrl_c_two_trainers(tmp_path, monkeypatch, script_text: str, seeds: int) -> str:
    """Train ``seeds`` runs, 2 at a time, with a trainer stand-in (``script_text``: a sh script
    that appends ``started`` and what it saw to signals.txt); one Ctrl-C once two have started;
    the words of signals.txt after the ablation stopped."""
    record = tmp_path / "signals.txt"
    script = tmp_path / "fake-python"
    script.write_text(script_text.replace("RECORD", str(record)))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(sys, "executable", str(script))
    steps = [
        Step(run, run.run_dir(tmp_path), "train", device="cpu")
        for run in plan_runs(["l1.yaml"], [], seeds, [])
    ]

    def ctrl_c_once_two_started():
        while not record.exists() or record.read_text().split().count("started") < 2:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c_once_two_started, daemon=True).start()
    with pytest.raises(Interrupted):
        run_local(steps, jobs=2, cores=2)
    return record.read_text().split()


def test_ctrl_c_stops_the_ablation_and_reaches_each_training_once(tmp_path, monkeypatch):
    """A trainer stand-in that counts the SIGINTs it gets for 2 s: 2 jobs, 3 runs; Ctrl-C once both
    started."""
    script = (
        "#!/bin/sh\ntrap 'echo INT >> RECORD' INT\necho started >> RECORD\n"
        "i=0; while [ $i -lt 40 ]; do sleep 0.05; i=$((i+1)); done\nexit 130\n"
    )
    words = ctrl_c_two_trainers(tmp_path, monkeypatch, script, seeds=3)
    assert words.count("started") == 2  # the third run never started
    assert words.count("INT") == 2  # one SIGINT per running training: finish the step, save, stop


def test_a_resumed_run_keeps_its_share_of_the_cores_and_the_line_tells_the_truth(
    tmp_path, monkeypatch, capsys
):
    """--jobs 2 on 2 cores gives each run 1 thread, also when one run is left to resume; the line
    printed is the thread count the run gets, the user's smaller OMP_NUM_THREADS included."""
    from detector.ablation import launch

    envs = []
    monkeypatch.setattr(
        launch,
        "execute",
        lambda step, environ, slot, **kw: envs.append(child_env(environ, slot)) or None,
    )
    steps = [
        Step(run, run.run_dir(tmp_path), "resume", device="cpu")
        for run in plan_runs(["l1.yaml"], [], 1, [])
    ]
    run_local(steps, jobs=2, environ={}, cores=2)
    assert envs[-1]["OMP_NUM_THREADS"] == "1" and "1 compute thread(s)" in capsys.readouterr().out
    run_local(steps, jobs=1, environ={"OMP_NUM_THREADS": "1"}, cores=2)
    assert envs[-1]["OMP_NUM_THREADS"] == "1" and "1 compute thread(s)" in capsys.readouterr().out


def test_ctrl_c_waits_for_the_slowest_training_to_exit(tmp_path, monkeypatch):
    """Trainers that take different times to save and exit after Ctrl-C: the ablation returns only
    once every one has exited (none is left running without its ablation)."""
    script = (
        '#!/bin/sh\ncase "$*" in *seed0*) delay=30;; *) delay=0;; esac\n'
        "stop=0; trap 'stop=1' INT\necho started >> RECORD\n"
        "while [ $stop = 0 ]; do sleep 0.05; done\n"
        "i=0; while [ $i -lt $delay ]; do sleep 0.05; i=$((i+1)); done\n"
        "echo exited >> RECORD\nexit 130\n"
    )
    assert ctrl_c_two_trainers(tmp_path, monkeypatch, script, seeds=2).count("exited") == 2


def test_a_run_that_cannot_be_launched_leaves_the_queue_going(tmp_path, monkeypatch):
    from detector.ablation import launch

    def execute(step, environ, slot, **kw):
        if step.run.seed == 0:
            raise PermissionError(13, "Permission denied", str(step.run_dir / "train.log"))
        return None

    monkeypatch.setattr(launch, "execute", execute)
    steps = [
        Step(run, run.run_dir(tmp_path), "train", device="cpu")
        for run in plan_runs(["l1.yaml"], [], 3, [])
    ]
    results = run_local(steps, jobs=1, cores=1)
    assert results["l1-seed1"] is None and results["l1-seed2"] is None
    assert results["l1-seed0"].startswith("l1-seed0 was not launched: PermissionError")


def test_one_training_ablation_per_out_at_a_time(tmp_path, capsys):
    """A second ablation into an --out that a live one is training into stops before it plans; a
    report may still be written from it."""
    import json
    import socket
    import subprocess

    out = tmp_path / "abl"
    out.mkdir()
    holder = subprocess.Popen(["sleep", "30"])
    try:
        me = {"pid": holder.pid, "host": socket.gethostname(), "started": "now"}
        (out / ".lock").write_text(json.dumps(me))
        args = ["--cfgs", "l1.yaml", "--seeds", "1", "--out", str(out), "train.max_iters=2"]
        assert ablate.main(args) != 0
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "use another --out" in err
        assert not (out / "runs").exists()
        assert ablate.main([*args, "--report-only"]) == 1  # nothing finished: a partial report
        assert (out / "summary.md").is_file()
    finally:
        holder.kill()
        holder.wait()
