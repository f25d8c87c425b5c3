"""Joining torchrun's process group: a world of one under torchrun is still a process group; plain python is not."""
import socket

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
        assert dist.get_backend() == "gloo" and dist_utils.get_world_size() == 1 and dist_utils.is_main_process()
        assert dist_utils.gather_objects({"a": 1}) == {"a": 1}  # a world of one needs no gathering
    finally:
        dist_utils.cleanup()
    assert not dist.is_initialized()
