r"""Table 10: top-1 and Content Heatmap over a grid of the CGC weight λ (and τ).

    python jobs/lambda_sweep.py                      # embedded set: λ 0 and 1, one tiny epoch each, minutes
    python jobs/lambda_sweep.py --lam 0,0.5 --tau 0.5,1 --seeds 0,1 --train-per-class 8
    ray job submit --working-dir . -- python jobs/lambda_sweep.py \
        --dataset imagenet --data s3://bucket/ILSVRC2012 --arch resnet18 --num-workers 8 \
        --gpus-per-trial 8 --storage-path s3://bucket/sweeps --name r18-lambda

λ ∈ {0, 0.01, 0.1, 0.5, 1.0, 2.0} by default off the embedded set. Each grid
point × seed is one trial (a training run, then CH on validation images with
boxes); the table's cells are mean ± std over the seeds. Re-running with the
same --name and --storage-path resumes an interrupted sweep; --table-only
rewrites the table from the stored results.
"""

from __future__ import annotations

import dataclasses

from . import cli, runner, tables
from .cli import Request

PAPER_GRID, TINY_GRID = "0,0.01,0.1,0.5,1.0,2.0", "0,1.0"
LAYOUTS = {"table10": tables.lambda_table}


def parse(argv: list[str] | None = None) -> Request:
    p = cli.parser(__doc__, "lambda-sweep")
    p.add_argument("--lam", help=f"λ values (default {PAPER_GRID}; {TINY_GRID} on the embedded set)")
    p.add_argument("--tau", default="0.5", help="τ values")
    p.add_argument("--seeds", default="0", help="one trial per seed at every grid point")
    cli.add_subset_flag(p)
    return cli.parse_request(p, argv)


def run(req: Request) -> int:
    return cli.run_request(req, LAYOUTS, trials)


def trials(req: Request, sw: runner.Sweep) -> list[runner.TrialSpec]:
    args = req.args
    base = cli.per_class_subset(req.base, sw, args.train_per_class)
    grid = args.lam or (TINY_GRID if base.dataset == "embedded" else PAPER_GRID)
    return [runner.spec(sw, f"lam{lam:g}-tau{tau:g}-seed{seed}",
                        {"method": "cgc" if lam else "baseline", "dataset": base.dataset,
                         "lam": lam, "tau": tau, "seed": seed},
                        dataclasses.replace(base, seed=seed).with_objective(lam=lam, tau=tau),
                        cli.ch_settings(args, base))
            for lam in cli.floats(grid, "--lam") for tau in cli.floats(args.tau, "--tau") for seed in cli.ints(args.seeds, "--seeds")]
