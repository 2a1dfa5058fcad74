r"""Table 6: fine-tuning on fine-grained sets, baseline vs. CGC, top-1 and CH.

    python jobs/finegrained.py                       # embedded set, 1 trial each, minutes
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
"""

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `ray job submit --working-dir .` without install

from cgc_ray.experiments import cli, runner, tables

LAMBDA = {"cub": 0.25, "cars": 0.25, "aircraft": 0.5, "flowers": 0.5, "embedded": 0.5}


def sweep(argv) -> int:
    p = cli.parser(__doc__, "finegrained")
    p.add_argument("--datasets", default="embedded", help="name=root,... (cub, aircraft, cars, flowers)")
    p.add_argument("--trials", type=int, default=3, help="seeds per data set and method")
    p.add_argument("--lam", type=float, help="one λ for every set (default: the paper's per set)")
    p.add_argument("--tau", type=float, default=0.5)
    cli.add_subset_flag(p)
    args, train_argv = p.parse_known_args(argv)
    base = cli.with_gpus(cli.train_config(train_argv), args.gpus_per_trial)
    sw, layouts = cli.sweep(args, base), {"table6": tables.finegrained_table}
    if args.table_only:
        return runner.run_sweep(sw, [], layouts, table_only=True)
    if base.weights is None:
        print("note: no --weights; training from random initialisation", flush=True)
    specs = []
    for name, root in cli.datasets(args.datasets):
        cfg = cli.with_gpus(cli.train_config([*train_argv, "--dataset", name, *(["--data", root] if root else [])]),
                            args.gpus_per_trial)
        cfg = cli.per_class_subset(cfg, sw, args.train_per_class)
        lam = args.lam if args.lam is not None else LAMBDA.get(name, 0.5)
        cgc_recipe = cfg.recipe if cfg.recipe != "baseline" else "official"
        for seed in range(args.trials):
            for method, recipe, weight in (("baseline", "baseline", None), ("cgc", cgc_recipe, lam)):
                run = dataclasses.replace(cfg, recipe=recipe, lam=weight, tau=args.tau, seed=seed)
                tags = {"method": method, "dataset": name, "lam": run.effective_lam, "tau": args.tau, "seed": seed}
                specs.append(runner.spec(sw, f"{name}-{method}-seed{seed}", tags, run,
                                         cli.ch_settings(args, run)))
    return runner.run_sweep(sw, specs, layouts, max_concurrent=args.max_concurrent_trials)


def main(argv=None) -> int:
    return cli.main(sweep, argv)


if __name__ == "__main__":
    sys.exit(main())
