r"""Tables 7 and 8: few-shot fine-tuning, baseline vs. CGC on the same episodes.

    python jobs/fewshot.py                           # embedded set: 5-shot x 3 episodes, ~8 minutes on 2 cores
    ray job submit --working-dir . -- python jobs/fewshot.py \
        --datasets cub=s3://b/CUB_200_2011,cars=s3://b/cars --shots 1,5,10 --episodes 20 \
        --weights s3://b/resnet50-imagenet.pth --arch resnet50 --gpus-per-trial 0.25 \
        --storage-path s3://b/sweeps --name fewshot

An episode takes `shots` images of every class of the --split (seeded by the
episode: seed = --first-seed + episode) and validates on all other images of
that split; it is written as two manifests under <sweep>/episodes/. Baseline
(cross-entropy) and CGC (λ 0.8 for CUB, Cars, Flowers; 0.6 for Aircraft;
τ 0.5) train on the same episode with the same seed; cells are mean ± std
over episodes, Δ = CGC − baseline paired by episode. The global batch is
capped at the episode's size.

On an embedded set without --weights (the no-argument run) the episodes are
drawn from the target half of the classes and fine-tune a model trained on
the source half (`transfer`); they validate on the target half of the
validation split, whose boxes give Table 8's CH. Its schedule: 15 epochs at
112 px, batch 12, lr 0.01, × 0.1 after epoch 10.
"""

from __future__ import annotations

import dataclasses
from functools import partial

from ..data.embedded import DATASETS as EMBEDDED
from ..data.manifest import read as read_manifest
from ..train.config import ConfigError
from . import cli, episodes, runner, tables, transfer
from .cli import Request

LAMBDA = {"cub": 0.8, "cars": 0.8, "flowers": 0.8, "aircraft": 0.6, "embedded": 0.8}
LAYOUTS = {"table7": partial(tables.fewshot_table, metric="top1"),
           "table8": partial(tables.fewshot_table, metric="ch")}


def parse(argv: list[str] | None = None) -> Request:
    p = cli.parser(__doc__, "fewshot")
    p.add_argument("--datasets", default="embedded", help="name=root,... (cub, aircraft, cars, flowers)")
    p.add_argument("--shots", help="images per class (default 1,5,10; 5 on the embedded set)")
    p.add_argument("--episodes", type=int, help="episodes per shot setting (default 20; 3 on the embedded set)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--split", default="train", help="the split episodes are drawn from")
    p.add_argument("--lam", type=float, help="one λ for every set (default: the paper's per set)")
    p.add_argument("--tau", type=float, default=0.5)
    transfer.add_flags(p)
    req = cli.parse_request(p, argv, embedded_preset=transfer.preset(epochs=15, batch_size=12, milestone=10))
    transfer.check_flags(req.args, [name for name, _ in cli.datasets(req.args.datasets)], req.base)
    return req


def run(req: Request) -> int:
    return cli.run_request(req, LAYOUTS, trials)


def trials(req: Request, sw: runner.Sweep) -> list[runner.TrialSpec]:
    args = req.args
    tiny = all(name in EMBEDDED for name, _ in cli.datasets(args.datasets))
    shots_list = cli.ints(args.shots or ("5" if tiny else "1,5,10"), "--shots")
    n_episodes = args.episodes or (3 if tiny else 20)
    specs = []
    for name, cfg in cli.dataset_configs(req):
        cfg, pool, transferred = _pool(req, sw, cfg)
        lam = args.lam if args.lam is not None else LAMBDA.get(name, 0.8)
        for shots in shots_list:
            for k in range(n_episodes):
                specs += _episode_trials(req, sw, name, cfg, episodes.episode(pool, shots, seed=args.first_seed + k),
                                         k, lam, transferred)
    return specs


def _pool(req: Request, sw: runner.Sweep, cfg):
    """(cfg, the manifest episodes are drawn from, transferred): on an embedded
    set the target half of the training split, from the source model, validated
    on the target half of the validation split (`transfer`)."""
    if not transfer.applies(req.args, cfg):
        return cfg, cli.manifest(cfg, req.args.split, sw.storage), False
    if req.args.split != cfg.train_split:
        raise ConfigError(f"--split {req.args.split}: on the embedded set the episodes come from the target half "
                          f"of the {cfg.train_split} split, validated on its {cfg.val_split} split; --from-scratch "
                          "draws them from --split")
    cfg = transfer.start(req, sw, cfg)
    return cfg, read_manifest(cfg.train_manifest, sw.storage), True


def _episode_trials(req: Request, sw: runner.Sweep, name: str, cfg, ep: episodes.Episode, k: int,
                    lam: float, transferred: bool) -> list[runner.TrialSpec]:
    """Baseline and CGC on one episode, with the episode's seed; validated on
    the images of the split the episode left (or the target half's validation split)."""
    where = f"{name}-target-{ep.shots}shot-ep{k}" if transferred else f"{name}-{ep.shots}shot-ep{k}"
    train, val = episodes.write_episode(ep, sw.path("episodes", where), sw.storage)
    run_cfg = cli.fit_batch(dataclasses.replace(cfg, train_manifest=train,
                                                val_manifest=cfg.val_manifest if transferred else val,
                                                seed=ep.seed).with_objective(tau=req.args.tau), len(ep.train))
    specs = []
    for method, recipe, weight in cli.methods(cfg, lam):
        trial = run_cfg.with_objective(recipe=recipe, lam=weight)
        tags = {"method": method, "dataset": name, "shots": ep.shots, "episode": k, "seed": ep.seed,
                "lam": trial.objective.lam, "tau": req.args.tau}
        specs.append(runner.spec(sw, f"{name}-{ep.shots}shot-ep{k}-{method}", tags, trial,
                                 cli.ch_settings(req.args, cfg)))
    return specs
