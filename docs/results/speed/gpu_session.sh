#!/usr/bin/env bash
# Issue 29's GPU check in one command, under 8 minutes on one H100/H200: the CUDA suite (the equal-accuracy check
# included), the benchmark's full table (scratch and fine-tune, eager and compiled backbone, the real loop), a
# profile of the real loop, and the quickstart parity at gpu.yaml's settings if time is left. Every result goes
# to $OUT (8 files at most come back). Prepare once, in the checkout on the CPU machine (../shared/GPU.md):
#   mkdir -p .whl data/coco && cp ../shared/wheels/*.whl .whl/ && cp -r ../shared/data/coco_tiny data/coco/tiny
#   printf '/.whl/\n' >> .git/info/exclude
# then, with the device tool: run(command="bash docs/results/speed/gpu_session.sh", carry=[".whl",
# "data/coco/tiny"], timeout_s=540). Read $OUT, fix on the CPU, run it again.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps .whl/*.whl
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__)"
} > "$OUT/machine.txt" 2>&1
COCO="--cfg smoothl1.yaml --cfg data/coco_tiny.yaml --cfg gpu.yaml data.root=data/coco/tiny"
# 1. the CUDA suite (about 4-5 minutes): its summary line is the last line of the file
timeout 300 python -m pytest -m cuda tests -q -p no:cacheprovider -rfE > "$OUT/cuda_suite.txt" 2>&1
# 2. the table of issue 29: both settings at batch 8 bf16, eager, then with our backbone compiled
timeout 150 python tools/benchmark.py --all --batch-sizes 8 --amp on $COCO --warmup 3 --iters 10 \
  --real-iters 60 --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1
timeout 90 python tools/benchmark.py --settings finetune scratch --batch-sizes 8 --amp on --compile backbone \
  --warmup 3 --iters 10 --json "$OUT/bench_compiled.json" > "$OUT/bench_compiled.txt" 2>&1
# 3. where the real loop's time goes (loader, host work, syncs)
timeout 60 python tools/benchmark.py --profile $COCO --iters 5 > "$OUT/profile_real.txt" 2>&1
tail -n 3 "$OUT/cuda_suite.txt" "$OUT/bench.txt" "$OUT/bench_compiled.txt"
