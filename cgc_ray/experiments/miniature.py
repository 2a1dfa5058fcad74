r"""The paper's comparisons in miniature, on the embedded sets: Table 1
(baseline vs CGC: Top-1 | CH | CGC loss), Table 5 (CGC without negatives:
the MSE ablation) and Table 10 (λ), each as mean ± std over seeds with the
paired CGC − baseline difference.

    python jobs/miniature.py                                   # both embedded sets, 3 seeds, every comparison
    python jobs/miniature.py --datasets embedded --seeds 0 --lam 1.0   # one seed of Table 1 and 5
    python jobs/miniature.py --datasets embedded --lam 1.0 --methods baseline,cgc   # Table 1 alone

Trials per data set and seed: the baseline (plain CE), CGC at each λ of
--lam (the preset λ = 1.0 of ResNet-18 is Table 1's CGC row) and CGC with
`--consistency mse` at the preset λ. `embedded_context` is the variant whose
background stripes predict the class 80 % of the time. Every other flag is a
training option; the defaults are the no-argument run's (jobs/imagenet.py).
"""

from __future__ import annotations

import dataclasses

from ..train.config import PAPER_LAMBDA, ConfigError
from . import cli, runner
from .cli import Request
from .tables import Table, paired_diff, stat

DATASETS = "embedded,embedded_context"
LAMBDAS = "0.1,0.5,1.0,2.0"
METHODS = ("baseline", "cgc", "cgc_mse")


def parse(argv: list[str] | None = None) -> Request:
    p = cli.parser(__doc__, "miniature")
    p.add_argument("--datasets", default=DATASETS, help=f"embedded sets to run on (default {DATASETS})")
    p.add_argument("--lam", default=LAMBDAS, help=f"λ values of Table 10 (default {LAMBDAS})")
    p.add_argument("--seeds", default="0,1,2", help="one trial per seed of every configuration")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"which of {', '.join(METHODS)} to run (default all; cgc covers every --lam)")
    # the no-argument run's preset (LAPTOP), its workers at 0.45 CPU: a trial's own share (0.01) and the
    # input pipeline's one CPU must fit beside them on a 2-core machine
    return cli.parse_request(p, argv, embedded_preset={"cpus_per_worker": 0.45})


def run(req: Request) -> int:
    return cli.run_request(req, {"table1": table1, "table5": table5, "table10": table10}, trials)


def preset_lam(cfg) -> float:
    return PAPER_LAMBDA.get(cfg.arch, 1.0)


def trials(req: Request, sw: runner.Sweep) -> list[runner.TrialSpec]:
    args, out = req.args, []
    methods = [m.strip() for m in args.methods.split(",")]
    if unknown := sorted(set(methods) - set(METHODS)):
        raise ConfigError(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    for name, _ in cli.datasets(args.datasets):
        base = dataclasses.replace(req.base, dataset=name, data=None)
        lam0 = preset_lam(base)
        configs = [("baseline", "baseline", None, "infonce")]
        recipe = base.objective.recipe
        configs += [("cgc", recipe if recipe != "baseline" else "official", lam, "infonce")
                    for lam in sorted(set(cli.floats(args.lam, "--lam")) | {lam0})]
        configs += [("cgc_mse", "official", lam0, "mse")]
        configs = [c for c in configs if c[0] in methods]
        for seed in cli.ints(args.seeds, "--seeds"):
            for method, recipe, lam, consistency in configs:
                key = f"{name}-{method}-lam{lam or 0:g}-seed{seed}"
                tags = {"method": method, "dataset": name, "lam": lam or 0.0, "tau": base.objective.tau, "seed": seed,
                        "preset_lam": lam0}
                cfg = dataclasses.replace(base, seed=seed)
                cfg = cfg.with_objective(recipe=recipe, lam=lam, consistency=consistency)
                out.append(runner.spec(sw, key, tags, cfg, ch_settings(args, base)))
    return out


def ch_settings(args, cfg) -> dict:
    """CH as the no-argument run reports it: every boxed validation image, the
    authors' short side scaled to the run (2 x image size)."""
    return {"images": args.ch_images or 1000, "short_side": args.ch_short_side or 2 * cfg.image_size,
            "protocol": args.ch_protocol}


def _at_preset(rows: list[dict]) -> list[dict]:
    """The baseline rows and the InfoNCE CGC rows at the preset λ (Table 1's pair)."""
    return [r for r in rows if r["method"] == "baseline" or (r["method"] == "cgc" and r["lam"] == r["preset_lam"])]


def table1(rows: list[dict]) -> Table:
    """Table 1: baseline and CGC (preset λ) per data set; Δ paired by seed."""
    table = Table("Table 1: baseline vs CGC (mean ± std over seeds; Δ = CGC − baseline, paired by seed)",
                  ["Data set", "Method", "Top-1", "CH", "CGC loss"])
    metrics = ("top1", "ch", "val_cgc_loss")
    for ds in sorted({r["dataset"] for r in rows}):
        mine = _at_preset([r for r in rows if r["dataset"] == ds])
        for label, method in (("Baseline", "baseline"), ("CGC", "cgc")):
            table.rows.append([ds, label, *(stat(r[m] for r in mine if r["method"] == method) for m in metrics)])
        table.rows.append([ds, "Δ CGC − baseline", *(paired_diff(mine, m, ("seed",)) for m in metrics)])
    return table


def table5(rows: list[dict]) -> Table:
    """Table 5: CGC with negatives (InfoNCE) vs without (MSE), preset λ."""
    table = Table("Table 5: negatives (mean ± std over seeds)", ["Data set", "Consistency", "Top-1", "CH"])
    for ds in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == ds]
        for label, keep in (("none (baseline)", lambda r: r["method"] == "baseline"),
                            ("MSE, no negatives", lambda r: r["method"] == "cgc_mse"),
                            ("InfoNCE (CGC)", lambda r: r["method"] == "cgc" and r["lam"] == r["preset_lam"])):
            table.rows.append([ds, label, *(stat(r[m] for r in mine if keep(r)) for m in ("top1", "ch"))])
    return table


def table10(rows: list[dict]) -> Table:
    """Table 10: λ (0 = the baseline) per data set."""
    table = Table("Table 10: CGC weight λ (mean ± std over seeds; λ = 0 is the baseline)",
                  ["Data set", "λ", "Top-1", "CH"])
    for ds in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == ds and r["method"] in ("baseline", "cgc")]
        for lam in sorted({r["lam"] for r in mine}):
            at = [r for r in mine if r["lam"] == lam]
            table.rows.append([ds, lam, *(stat(r[m] for r in at) for m in ("top1", "ch"))])
    return table
