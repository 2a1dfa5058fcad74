#!/usr/bin/env bash
# The Ray-dependent GPU benchmarks in one go (issues #3 and #4): the training
# loop end to end (Ray Data -> one TorchTrainer worker -> CGC step) next to the
# step alone, with CPU and with GPU decode, on ImageNet-sized JPEGs; and the
# input pipeline alone with 8 CPU cores per GPU. ResNet-50, batch 128, bf16,
# channels_last. Writes JSON lines to ${OUT:-.}/gpu_ray_bench.jsonl.
#
# The device machine has no Ray: build it here first with
# ../shared/tools/gpu-wheels (into .whl/, git-ignored) and carry ".whl".
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} RAY_AUTH_MODE=disabled RAY_ADDRESS=local
out=${OUT:-.}/gpu_ray_bench.jsonl
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$out"
loop=(--use-gpu --arch resnet50 --batch 128 --image-size 224 --precision bf16 --channels-last
      --synthetic 5120 --epochs 2 --steps 10)
timeout 280 python3 bench/train_loop.py "${loop[@]}" | tee -a "$out"
timeout 200 python3 bench/train_loop.py "${loop[@]}" --gpu-decode | tee -a "$out"
timeout 120 python3 bench/data_pipeline.py --cores 8 --images 2000 | tee -a "$out"
