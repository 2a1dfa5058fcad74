"""Run by test_train.py in its own process: a 2-node local cluster, a CGC run
whose rank 1 is SIGKILLed mid-epoch, from the Train controller, once the
epoch-2 step-4 checkpoint is registered."""

import json
import sys

import ray
from ray.cluster_utils import Cluster

from cgc_ray.train.config import parse
from cgc_ray.train.service import run
from faults import KillWorkerAfterCheckpoint

out = sys.argv[1]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=2)
ray.init(address=cluster.address)
summary = run(parse(["--image-size", "48", "--resize-size", "56", "--batch-size", "16", "--epochs", "2",
                     "--val-batches", "1", "--checkpoint-every-steps", "4", "--max-failures", "2",
                     "--placement-strategy", "SPREAD", "--storage-path", out, "--name", "multinode"]),
              # 640 images / batch 16 = 40 steps an epoch: step 44 is epoch 2, step 4
              callbacks=[KillWorkerAfterCheckpoint(rank=1, global_step=44, marker=f"{out}/killed")])
with open(f"{out}/summary.json", "w") as f:
    json.dump(summary, f)
ray.shutdown()
cluster.shutdown()
