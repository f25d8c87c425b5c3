"""Shared test fixtures. Tests run on CPU in seconds; real data is used only where present."""

import signal
from pathlib import Path

import pytest

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
