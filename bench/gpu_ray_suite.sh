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

# The GPU path end to end (issue #16): jobs/imagenet.py --use-gpu on the embedded set, 2 epochs with
# validation (NCCL all-reduce) and step checkpoints; rank 0 SIGKILLs itself mid-epoch 2 (the loop's test
# fault hook), the run restarts from the step checkpoint and must finish with every epoch logged once.
e2e=(--use-gpu --num-workers 1 --cpus-per-worker 2 --epochs 2 --checkpoint-every-steps 5 --max-failures 1
     --storage-path /tmp/gpu-e2e --name e2e)
rm -rf /tmp/gpu-e2e /tmp/gpu-e2e-killed
CGC_RAY_TEST_KILL="0:28:/tmp/gpu-e2e-killed" timeout 300 python3 jobs/imagenet.py "${e2e[@]}" 2>&1 | tail -4 | tee -a "$out"
python3 - "$out" <<'PY'
import json, os, sys
s = json.load(open("/tmp/gpu-e2e/e2e/summary.json"))
epochs = [json.loads(l)["epoch"] for l in open("/tmp/gpu-e2e/e2e/metrics.jsonl")]
line = {"bench": "gpu_e2e_resume", "killed": os.path.exists("/tmp/gpu-e2e-killed"), "epochs_logged": epochs,
        "global_step": s["global_step"], "steps_per_epoch": s["steps_per_epoch"], "val_top1": s["val_top1"],
        "val_content_heatmap": s.get("val_content_heatmap")}
print(json.dumps(line)); open(sys.argv[1], "a").write(json.dumps(line) + "\n")
PY
