"""Shared test fixtures. Tests run on CPU in seconds; real data is used only where present."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COCO_TINY = REPO.parent / "shared" / "data" / "coco_tiny"


@pytest.fixture
def coco_tiny() -> Path:
    """The real COCO 2017 subset beside the checkout; the test is skipped when it is absent."""
    if not (COCO_TINY / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"real COCO subset not found at {COCO_TINY}")
    return COCO_TINY
