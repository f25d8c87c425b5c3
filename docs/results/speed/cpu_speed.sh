#!/usr/bin/env bash
# Images/s of a 128 px ablation run, each variant as two runs at once with one thread each (what tools/ablate.py
# --jobs 2 does on 2 cores), each run its own process: today's main (4029f75) with the old 128 px grid command,
# against this checkout's lean preset (configs/cpu_lean.yaml), with a MobileNetV3 trunk, and with the backbone
# compiled. 60 iterations, windows of 20, the first window (start-up, compilation) left out.
set -uo pipefail
OUT=${1:?output folder}; OLD_CHECKOUT=${OLD_CHECKOUT:?a checkout of 4029f75}; NEW_CHECKOUT=${NEW_CHECKOUT:-$PWD}; mkdir -p $OUT
OLD="data.root=$OUT/synthetic128old data.synthetic.image_size=[128,128] data.input.min_size_train=[112,128,144] data.input.max_size_train=256 data.input.min_size_test=128 data.input.max_size_test=256 data.loader.num_workers=0 train.num_vis_images=0"
NEW="--cfg cpu_lean.yaml data.root=$OUT/synthetic128"
COMMON="train.max_iters=60 train.log_period=20 train.checkpoint_period=60 eval.max_images=8 train.device=cpu"
pair() {  # $1 checkout, $2 name, then configs/overrides
  local repo=$1 name=$2; shift 2
  for ab in a b; do
    (cd $repo && OMP_NUM_THREADS=1 PYTHONPATH=$repo python tools/train.py --cfg smoothl1.yaml "$@" $COMMON \
       output_dir=$OUT/$name-$ab > $OUT/$name-$ab.log 2>&1) &
  done
  wait
}
pair $OLD_CHECKOUT old $OLD
pair $NEW_CHECKOUT lean $NEW
pair $NEW_CHECKOUT lean-mobilenet $NEW model.backbone.name=mobilenet_v3_large
pair $NEW_CHECKOUT lean-compiled $NEW train.compile=backbone
python - "$OUT" <<'PY'
import json, statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
base = None
for kind in ("old", "lean", "lean-mobilenet", "lean-compiled"):
    speeds = []
    for run in sorted(out.glob(f"{kind}-[ab]/metrics.jsonl")):
        windows = [json.loads(l) for l in run.read_text().splitlines() if '"train"' in l]
        speeds += [w["images_per_s"] for w in windows[1:]]
    if not speeds:
        print(kind, "no result"); continue
    med = statistics.median(speeds); base = base or med
    print(f"{kind}: img/s per run {[round(s, 2) for s in speeds]}, median {med:.2f}, {med / base:.2f}x of old")
PY
