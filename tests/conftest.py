"""Shared test fixtures. Tests run on CPU in seconds; real data is used only where present."""

import signal
from pathlib import Path

import pytest

# A shell that starts pytest in the background (`pytest &`) hands it SIGINT ignored, and Python then installs no
# KeyboardInterrupt handler; the Ctrl-C tests need the handler an interactive run has.
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
