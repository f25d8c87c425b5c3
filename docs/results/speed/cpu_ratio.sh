#!/usr/bin/env bash
# The CPU speed ratio behind "the grid's preset against the old 128 px grid" (issue 30, item 10), measured with the
# two sides interleaved: old, grid, old, grid, ... for 3 rounds, so that a machine whose speed drifts during the
# session moves both sides alike. Each side is two runs at once with one thread each (what tools/ablate.py --jobs 2
# does on 2 cores), each run its own process, 60 iterations in windows of 20, the first window left out.
#   old:  a checkout of 4029f75 with the old 128 px grid command (as cpu_speed.sh ran it)
#   grid: this checkout, cpu_lean.yaml with the MobileNetV3-Large trunk (configs/grid.yaml's model and input; the
#         grid's 1,024 val images are not part of a training step)
# A round 0 of 2 iterations per side first generates each side's data folder and is left out.
# Usage: OLD_CHECKOUT=<checkout of 4029f75> docs/results/speed/cpu_ratio.sh OUT
set -uo pipefail
OUT=${1:?output folder}; OLD_CHECKOUT=${OLD_CHECKOUT:?a checkout of 4029f75}; NEW_CHECKOUT=${NEW_CHECKOUT:-$PWD}
mkdir -p "$OUT"
OLD="data.root=$OUT/synthetic128old data.synthetic.image_size=[128,128] data.input.min_size_train=[112,128,144]
  data.input.max_size_train=256 data.input.min_size_test=128 data.input.max_size_test=256 data.loader.num_workers=0
  train.num_vis_images=0"
GRID="--cfg cpu_lean.yaml model.backbone.name=mobilenet_v3_large data.root=$OUT/synthetic128"
COMMON="train.log_period=20 train.checkpoint_period=60 eval.max_images=8 train.device=cpu"
pair() {  # $1 round, $2 side, $3 iterations
  local repo=$NEW_CHECKOUT args=$GRID
  [ "$2" = old ] && repo=$OLD_CHECKOUT args=$OLD
  for ab in a b; do
    (cd "$repo" && OMP_NUM_THREADS=1 PYTHONPATH=$repo python tools/train.py --cfg smoothl1.yaml $args $COMMON \
      train.max_iters=$3 output_dir=$OUT/r$1-$2-$ab > "$OUT/r$1-$2-$ab.log" 2>&1) &
  done
  wait
}
for side in old grid; do pair 0 $side 2; done
for round in 1 2 3; do
  for side in old grid; do pair $round $side 60; done
done
python - "$OUT" <<'PY'
import json, pathlib, statistics, sys

out = pathlib.Path(sys.argv[1])
median = {}
for side in ("old", "grid"):
    per_round = []
    for r in (1, 2, 3):
        speeds = []
        for run in sorted(out.glob(f"r{r}-{side}-[ab]/metrics.jsonl")):
            windows = [json.loads(line) for line in run.read_text().splitlines() if '"images_per_s"' in line]
            speeds += [w["images_per_s"] for w in windows[1:]]
        per_round.append(statistics.median(speeds) if speeds else float("nan"))
    median[side] = per_round
    print(f"{side}: img/s per run, median of each round {[round(s, 2) for s in per_round]}")
ratios = [g / o for g, o in zip(median["grid"], median["old"])]
print(f"grid / old per round: {[round(r, 2) for r in ratios]}; median {statistics.median(ratios):.2f}, "
      f"range {min(ratios):.2f}-{max(ratios):.2f}")
PY
