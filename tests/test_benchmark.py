"""The benchmark runs on CPU (small version) and reports both sides and their ratios; no speed is asserted."""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import benchmark  # noqa: E402


def test_cpu_benchmark_prints_ratios_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert benchmark.main(["--device", "cpu", "--size", "96", "128", "--iters", "1", "--warmup", "1",
                           "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ratio" in text and "| 1 | off |" in text
    report = json.loads(out.read_text())
    row = report["results"][0]
    for side in ("ours", "torchvision"):
        assert row[side]["train_images_per_s"] > 0 and row[side]["infer_images_per_s"] > 0
    assert row["ratio"]["train_images_per_s"] == row["ours"]["train_images_per_s"] / row["torchvision"][
        "train_images_per_s"]
    assert {"settings", "device", "torch", "torchvision"} <= set(report)
