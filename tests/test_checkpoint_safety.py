"""Checkpoints are data, not code, and every file a run reads is named in one line when it cannot be used:
a pickle that would run code is refused by resume, eval and dump_proposals (unless --trust-checkpoint), a
checkpoint of today's format still resumes bit-exactly, weights of another model give the one "does not fit" line
wherever they are loaded, and the run lock is never seen half-written."""
import json
import os
import socket
import sys
from pathlib import Path

import pytest

from detector.engine.runs import LOCK_FILE, RunFolderError, RunLock
from helpers import tiny_run_overrides

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import train as train_tool  # noqa: E402


def one_error_line(err: str) -> str:
    """The tool's only line of stderr that is not the traceback hint; it starts with "error:"."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("(set DETECTOR_TRACEBACK=1")]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# ------------------------------------------------------------------------------------------- the run lock
def test_the_lock_is_linked_into_place_whole_and_leaves_no_temporary(tmp_path, monkeypatch):
    seen = []
    real_link = os.link

    def link(src, dst):  # the content is complete before the lock exists
        seen.append(json.loads(Path(src).read_text()))
        real_link(src, dst)
    monkeypatch.setattr(os, "link", link)
    with RunLock(tmp_path / "run") as lock:
        assert seen == [json.loads(lock.path.read_text())] and seen[0]["pid"] == os.getpid()
        assert seen[0]["host"] == socket.gethostname() and (lock.path.stat().st_mode & 0o777) == 0o644
        assert sorted(p.name for p in lock.path.parent.iterdir()) == [LOCK_FILE]
        with pytest.raises(RunFolderError, match=f"in use by another training \\(pid {os.getpid()} on "):
            RunLock(tmp_path / "run").acquire()  # exclusive: the second taker refuses and leaves nothing
    assert list((tmp_path / "run").iterdir()) == []


@pytest.mark.parametrize("content", ["", '{"pid": 12', "[1, 2]"], ids=["empty", "half-written", "not-a-lock"])
def test_a_lock_that_cannot_be_read_is_one_line_naming_it_and_the_fix(tmp_path, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text(content)
    with pytest.raises(RunFolderError) as info:
        RunLock(run).acquire()
    message = str(info.value)
    assert message.startswith(f"{run / LOCK_FILE} exists but cannot be read (") and "\n" not in message
    assert message.endswith(f"; if no training uses {run}, delete it") and "pid None" not in message
    assert (run / LOCK_FILE).read_text() == content and sorted(run.iterdir()) == [run / LOCK_FILE]


def test_training_into_a_folder_with_an_unreadable_lock_prints_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text('{"pid": 12')  # a lock as a writer of the old code left it, mid-write
    code = train_tool.main(["--cfg", "smoothl1.yaml", *tiny_run_overrides(tmp_path / "data", run)])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and line.startswith(f"error: {run / LOCK_FILE} exists but cannot be read (")
    assert not (run / "config.yaml").exists()
