#!/usr/bin/env bash
# The Ray-free GPU benchmarks of bench/README.md in one go (the issue's settings:
# ResNet-50, batch 128, bf16, channels_last). Writes JSON lines to ${OUT:-.}/gpu_bench.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
out=${OUT:-.}/gpu_bench.jsonl
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$out"
common=(--device cuda --arch resnet50 --batch 128 --dtype bf16 --channels-last)
python bench/objective_step.py "${common[@]}" --steps 10 --rounds 3 | tee -a "$out"
python bench/device_decode.py --images 512 --batch 128 | tee -a "$out"
# CH on the ImageNet-like JPEG mix (15 % random-size tail), then the head sizes alone
python bench/eval_metrics.py --device cuda --arch resnet50 --images 512 --batch 64 | tee -a "$out"
python bench/eval_metrics.py --device cuda --arch resnet50 --images 512 --batch 64 --tail 0 --metrics ch | tee -a "$out"
timeout 200 python bench/objective_step.py "${common[@]}" --compile --steps 10 --rounds 2 \
    --cases baseline,official,two_view | tee -a "$out"
