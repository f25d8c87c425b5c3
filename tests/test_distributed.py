"""Joining torchrun's process group: a world of one under torchrun is still a process group; plain
python is not."""

import signal
import socket
import time
from pathlib import Path

import torch.distributed as dist

from detector.engine import distributed as dist_utils


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_plain_python_joins_no_process_group(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert dist_utils.init_distributed("cpu") is False
    assert not dist.is_initialized()


def test_torchrun_with_one_process_joins_a_process_group(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    try:
        assert dist_utils.init_distributed("cpu") is True
        assert (
            dist.get_backend() == "gloo"
            and dist_utils.get_world_size() == 1
            and dist_utils.is_main_process()
        )
        assert dist_utils.gather_objects({"a": 1}) == {"a": 1}  # a world of one needs no gathering
    finally:
        dist_utils.cleanup()
    assert not dist.is_initialized()


def _ddp_ctrl_c_worker(rank: int, port: int, data_root: str, run_dir: str, out_dir: str) -> None:
    """One rank of a 2-process gloo training in which only rank 0 receives Ctrl-C, during its 4th
    step."""
    import os

    from helpers import tiny_run_overrides

    from detector.config import load_config
    from detector.engine import trainer as trainer_mod

    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    real_record = trainer_mod.LossWatch.record

    def record(self, losses, iteration):
        if rank == 0 and iteration == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real_record(self, losses, iteration)

    trainer_mod.LossWatch.record = record
    cfg = load_config(
        ["smoothl1.yaml"],
        tiny_run_overrides(
            Path(data_root),
            Path(run_dir),
            **{
                "train.max_iters": 40,
                "train.log_period": 5,
                "train.checkpoint_period": 40,
                "train.batch_size": 1,
                "train.num_vis_images": 0,
            },
        ),
    )
    try:
        trainer_mod.train(cfg, run_dir)
        outcome = "finished"
    except trainer_mod.TrainingInterrupted as exc:
        outcome = str(exc)
    finally:
        dist_utils.cleanup()
    Path(out_dir, f"rank{rank}.txt").write_text(outcome)


def test_ctrl_c_on_one_rank_stops_every_rank_at_the_next_log_step(tmp_path, tiny_data):
    """torchrun may deliver a signal to the ranks at different steps: they agree at the next log
    step, both stop there, and rank 0 writes last.pth (the save gathers every rank's RNG state: a
    rank left behind would hang)."""
    import torch.multiprocessing as mp

    from detector.engine.checkpoint import load_checkpoint

    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    context = mp.spawn(
        _ddp_ctrl_c_worker,
        args=(free_port(), str(tiny_data), str(run), str(out)),
        nprocs=2,
        join=False,
    )
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):
        if (
            time.monotonic() > deadline
        ):  # a rank left behind hangs in a collective: fail, do not hang the suite
            for process in context.processes:
                process.kill()
            raise AssertionError("the ranks did not stop together (a rank hung in a collective)")
    outcomes = [(out / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert outcomes[0].startswith("stopped by SIGINT at iteration 5 of 40"), outcomes
    assert outcomes[1].startswith("stopped by a signal to another rank at iteration 5 of 40"), (
        outcomes
    )
    assert load_checkpoint(run / "checkpoints" / "last.pth")["iteration"] == 5
