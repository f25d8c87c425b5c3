"""Shared test fixtures. Tests run on CPU in seconds; real data is used only where present."""

import os
import signal
from pathlib import Path

import pytest

# Under pytest-xdist (the README's `-n auto`) each worker gets its share of the cores, for its own
# torch and for the tools its tests start: two workers of 2 threads each on a 2-core machine spent
# a third of the suite's wall time waiting for each other (287 s against 202 s at 1 thread each).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // WORKERS))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# A shell that starts pytest in the background (`pytest &`) hands it SIGINT ignored, and Python then
# installs no KeyboardInterrupt handler; the Ctrl-C tests need the handler an interactive run has.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parent.parent
COCO_TINY = REPO.parent / "shared" / "data" / "coco_tiny"


@pytest.fixture
def coco_tiny() -> Path:
    """The real COCO 2017 subset beside the checkout; the test is skipped when it is absent."""
    if not (COCO_TINY / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"real COCO subset not found at {COCO_TINY}")
    return COCO_TINY


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The tiny synthetic set of ``helpers.tiny_run_overrides``, generated once per session (a
    training on it reuses it; tools that only read data find it there)."""
    from helpers import tiny_run_overrides

    from detector.config import load_config
    from detector.data.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    cfg = load_config([], tiny_run_overrides(root, root / "unused"))
    ensure_synthetic(root, **cfg.data.synthetic.to_dict())
    return root


@pytest.fixture(scope="session")
def trained_run(tiny_data, tmp_path_factory) -> tuple[Path, str]:
    """One finished tiny run through tools/train.py, shared by the tests that only read a finished
    run: smoothl1.yaml, 4 iterations logged every 2 and evaluated every 2. Returns (run folder,
    stdout)."""
    import contextlib
    import importlib.util
    import io

    from helpers import tiny_run_overrides

    run = tmp_path_factory.mktemp("trained") / "run"
    extra = {"train.max_iters": 4, "train.log_period": 2, "train.eval_period": 2}
    spec = importlib.util.spec_from_file_location("train_tool", REPO / "tools" / "train.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = tool.main(["--cfg", "smoothl1.yaml", *tiny_run_overrides(tiny_data, run, **extra)])
    assert code == 0, out.getvalue()
    return run, out.getvalue()
