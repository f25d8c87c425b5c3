#!/usr/bin/env bash
# The protocol's code check (PROTOCOL.md, "What is trained"): before the confirmatory runs start, a short run of
# each of the six configs at the pilot's commit (old) and at the confirmatory commit (new) must log the same losses
# at every logged step. Each run: the grid's preset, ITERS iterations (default 300: three of Dynamic's beta
# updates), a log step every 10 iterations, no evaluation but the final one (on 8 images), one thread. Old and new
# of a config train at once, from this checkout's folder (so from the same data folder). Prints one line per
# config and exits 1 on any difference.
# Usage: OLD_CHECKOUT=<checkout of ec6293d> [NEW_CHECKOUT=<checkout>] docs/results/confirmatory/same_losses.sh OUT
set -uo pipefail
OUT=$(realpath -m "${1:?output folder}"); OLD_CHECKOUT=${OLD_CHECKOUT:?a checkout of ec6293d}
NEW_CHECKOUT=${NEW_CHECKOUT:-$PWD}; ITERS=${ITERS:-300}
CONFIGS="smoothl1 smoothl1_beta1_9 l1 balanced_l1 giou dynamic_smoothl1"
mkdir -p "$OUT"
for side in old new; do
  repo=$OLD_CHECKOUT; [ $side = new ] && repo=$NEW_CHECKOUT
  # from / : python -c puts its folder before PYTHONPATH, as a script (tools/train.py) does not
  echo "$side: $(git -C "$repo" rev-parse --short HEAD), package $(cd / && PYTHONPATH=$repo \
    python -c 'import detector; print(detector.__file__)')"
done
for cfg in $CONFIGS; do
  for side in old new; do
    repo=$OLD_CHECKOUT; [ $side = new ] && repo=$NEW_CHECKOUT
    (cd "$NEW_CHECKOUT" && OMP_NUM_THREADS=1 PYTHONPATH=$repo python "$repo/tools/train.py" --cfg $cfg.yaml \
      --cfg grid.yaml train.max_iters=$ITERS train.eval_period=0 train.log_period=10 train.checkpoint_period=$ITERS \
      eval.max_images=8 output_dir="$OUT/$cfg-$side" > "$OUT/$cfg-$side.out" 2>&1) &
  done
  wait
done
python - "$OUT" $CONFIGS <<'PY'
import json, pathlib, sys

out, configs = pathlib.Path(sys.argv[1]), sys.argv[2:]
failed = False
for cfg in configs:
    logged = {}
    for side in ("old", "new"):
        path = out / f"{cfg}-{side}" / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
        logged[side] = [
            {k: v for k, v in r.items() if k == "iter" or k.startswith("loss")}
            for r in records
            if r.get("type") == "train"
        ]
    old, new = logged["old"], logged["new"]
    differ = [a["iter"] for a, b in zip(old, new) if a != b]
    if not old or len(old) != len(new) or differ:
        failed = True
        why = f"first differing step {differ[0]}" if differ else f"{len(old)} vs {len(new)} log steps"
        print(f"{cfg}: DIFFERENT ({why}; see {out}/{cfg}-*.out)")
    else:
        print(f"{cfg}: the same losses at all {len(old)} log steps (to iteration {old[-1]['iter']})")
sys.exit(1 if failed else 0)
PY
