"""Evaluate trained checkpoints: the paper's table (Top-1, Content Heatmap, CGC
loss, insertion AUC) and Grad-CAM figures, on a Ray cluster.

    python jobs/evaluate.py --checkpoint <checkpoint folder printed by jobs/imagenet.py>   # embedded data
    ray job submit --working-dir . -- python jobs/evaluate.py \
        --checkpoint s3://bucket/runs/r50-base/ckpt --checkpoint s3://bucket/runs/r50-cgc/ckpt \
        --dataset imagenet --data s3://bucket/ILSVRC2012 --out s3://bucket/eval/r50 \
        --use-gpu --concurrency 8 --iauc-limit 2000 --figures 8

Writes results.md, results.csv, results.json and figures.png under --out
(--help lists every option; cgc_ray/evaluation/graph.py describes the pipeline).
"""

import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `ray job submit --working-dir .` without install

from cgc_ray.entry import main as entry_main
from cgc_ray.evaluation.job import parse, run

main = partial(entry_main, parse, run)  # main(argv) -> exit code

if __name__ == "__main__":
    sys.exit(main())
