r"""Table 6: fine-tuning on fine-grained sets, baseline vs. CGC, top-1 and CH.

    python jobs/finegrained.py                       # embedded set, 3 trials each, ~10 minutes on 2 cores
    ray job submit --working-dir . -- python jobs/finegrained.py \
        --datasets cub=s3://b/CUB_200_2011,aircraft=s3://b/fgvc-aircraft-2013b,cars=s3://b/cars,flowers=s3://b/flowers \
        --weights s3://b/resnet50-imagenet.pth --arch resnet50 --gpus-per-trial 0.5 \
        --epochs E --lr LR --lr-step-epochs S --storage-path s3://b/sweeps --name finegrained

Every data set is fine-tuned from --weights (a state dict at a path or s3://;
the head is replaced) with plain cross-entropy (baseline) and with CGC
(λ 0.25 for CUB and Cars, 0.5 for Aircraft and Flowers, τ 0.5), --trials
seeds each; cells are mean ± std over the trials, Δ = CGC − baseline paired
by seed, CH where the set has boxes (not Flowers). The fine-tuning schedule is
given with the training flags (--epochs, --lr, --lr-step-epochs, ...).

On an embedded set without --weights (the no-argument run) the trials
fine-tune a model trained on the source half of the classes on the target
half (`transfer`): 3 epochs at 112 px, batch 16, lr 0.01, × 0.1 after epoch 2.
"""

from __future__ import annotations

import dataclasses

from ..data.embedded import DATASETS as EMBEDDED
from . import cli, runner, tables, transfer
from .cli import Request

LAMBDA = {"cub": 0.25, "cars": 0.25, "aircraft": 0.5, "flowers": 0.5, "embedded": 0.5}
LAYOUTS = {"table6": tables.finegrained_table}


def parse(argv: list[str] | None = None) -> Request:
    p = cli.parser(__doc__, "finegrained")
    p.add_argument("--datasets", default="embedded", help="name=root,... (cub, aircraft, cars, flowers)")
    p.add_argument("--trials", type=int, default=3, help="seeds per data set and method")
    p.add_argument("--lam", type=float, help="one λ for every set (default: the paper's per set)")
    p.add_argument("--tau", type=float, default=0.5)
    cli.add_subset_flag(p)
    transfer.add_flags(p)
    req = cli.parse_request(p, argv, embedded_preset=transfer.preset(epochs=3, batch_size=16, milestone=2))
    transfer.check_flags(req.args, [name for name, _ in cli.datasets(req.args.datasets)], req.base)
    return req


def run(req: Request) -> int:
    from_scratch = [n for n, _ in cli.datasets(req.args.datasets) if n not in EMBEDDED or req.args.from_scratch]
    if req.base.weights is None and not req.args.table_only and from_scratch:
        print(f"note: no --weights; {', '.join(from_scratch)} from random initialisation", flush=True)
    return cli.run_request(req, LAYOUTS, trials)


def trials(req: Request, sw: runner.Sweep) -> list[runner.TrialSpec]:
    args, specs = req.args, []
    for name, cfg in cli.dataset_configs(req):
        cfg = cli.per_class_subset(transfer.start(req, sw, cfg), sw, args.train_per_class)
        lam = args.lam if args.lam is not None else LAMBDA.get(name, 0.5)
        for seed in range(args.trials):
            for method, recipe, weight in cli.methods(cfg, lam):
                run_cfg = dataclasses.replace(cfg, seed=seed).with_objective(recipe=recipe, lam=weight, tau=args.tau)
                tags = {"method": method, "dataset": name, "lam": run_cfg.objective.lam, "tau": args.tau,
                        "seed": seed}
                specs.append(runner.spec(sw, f"{name}-{method}-seed{seed}", tags, run_cfg,
                                         cli.ch_settings(args, run_cfg)))
    return specs
