"""Train a classifier with CGC (or the baseline) on Ray Train.

    python jobs/imagenet.py                                  # embedded data, 2 CPU workers, minutes
    ray job submit --working-dir . -- python jobs/imagenet.py \
        --dataset imagenet --data s3://bucket/ILSVRC2012 --arch resnet50 \
        --num-workers 16 --use-gpu --precision bf16 --channels-last --name r50-cgc

Every option of cgc_ray.train.config.TrainConfig (the objective's, in
TrainConfig.objective, too) is a flag (--help) or a key of a YAML file given
with --config.
"""

import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `ray job submit --working-dir .` without install

from cgc_ray.entry import main as entry_main
from cgc_ray.train.config import parse
from cgc_ray.train.service import run

main = partial(entry_main, parse, run)  # main(argv) -> exit code

if __name__ == "__main__":
    sys.exit(main())
