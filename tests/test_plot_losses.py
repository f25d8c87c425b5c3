"""tools/plot_losses.py writes its two figures."""

import importlib.util
from pathlib import Path

from PIL import Image

TOOL = Path(__file__).resolve().parent.parent / "tools" / "plot_losses.py"


def test_plot_losses_writes_pngs(tmp_path):
    spec = importlib.util.spec_from_file_location("plot_losses", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--out", str(tmp_path / "plots"), "--iters", "300"]) == 0
    for name in ("losses.png", "beta_schedules.png"):
        path = tmp_path / "plots" / name
        assert path.stat().st_size > 20_000, name
        with Image.open(path) as image:
            assert image.width > 500 and image.height > 300
            assert (
                len(image.convert("L").getcolors(maxcolors=1 << 16)) > 20
            )  # curves, not a blank canvas
