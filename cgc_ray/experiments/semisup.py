r"""Table 9: semi-supervised learning, 1% of the labels; CGC also on the unlabeled rest.

    python jobs/semisup.py                           # embedded set (10% labels, 3 seeds), ~8 minutes on 2 cores
    ray job submit --working-dir . -- python jobs/semisup.py \
        --dataset imagenet --data s3://b/ILSVRC2012 --weights s3://b/swav_800ep_pretrain.pth.tar \
        --labels-file s3://b/splits/1percent.txt --num-workers 2 --gpus-per-trial 2 \
        --storage-path s3://b/sweeps --name semisup-1pc

The labeled split is the --labels-file (one relative path or URI a line, as
the SwAV/SimCLR 1% files) or drawn with --split-seed: ~--percent of every
class, at least one image each; it is written to <sweep>/labels/labeled.txt.
Baseline: cross-entropy on the labeled images. CGC: the labeled images plus
--unlabeled-per-labeled times as many unlabeled ones (label -100: the
cross-entropy averages over the labeled rows of a batch, the CGC term uses
every image). Both start from --weights (a SwAV ResNet-50: its projection
head and prototypes are dropped) and validate on the validation split.

The authors' settings (SwAV's 1% fine-tuning recipe), the defaults off the
embedded set: ResNet-50, SGD, weight decay 0, batch 128, lr 0.02 for the
trunk and 5 for the new head (--head-lr), lr x 0.2 at epochs 12 and 16
(--lr-milestones), 50 epochs, λ 0.25, τ 0.5. One difference remains: their
step pairs a labeled batch with an unlabeled one; here one shuffled batch
mixes both in the proportion of the training manifest.

On an embedded set without --weights (the no-argument run) the labels are
drawn from the target half of the classes and both methods fine-tune a
model trained on the source half (`transfer`), standing in for SwAV's: 10
epochs at 112 px, batch 12, lr 0.01, × 0.1 after epoch 8. A --labels-file
there names images of the target half (the sweep's labels/labeled.txt does).
"""

from __future__ import annotations

import dataclasses

from ..data.embedded import DATASETS as EMBEDDED
from ..data.manifest import read as read_manifest
from ..data.manifest import write as write_manifest
from . import cli, episodes, runner, tables, transfer
from .cli import Request
from .weights import backbone_only

AUTHORS = dict(arch="resnet50", epochs=50, batch_size=128, lr=0.02, head_lr=5.0, lr_reference_batch=128,
               weight_decay=0, lr_milestones="12,16", lr_gamma=0.2, tau=0.5)
LAYOUTS = {"table9": tables.semisup_table}


def parse(argv: list[str] | None = None) -> Request:
    p = cli.parser(__doc__, "semisup")
    p.add_argument("--labels-file", help="the labeled images, one relative path or URI a line")
    p.add_argument("--percent", type=float, help="labels kept per class when drawn (default 1; 10 on the embedded set)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--unlabeled-per-labeled", type=float, default=1.0, help="unlabeled images per labeled one")
    p.add_argument("--seeds", help="one baseline and one CGC trial per seed (default 0; 0,1,2 on the embedded set)")
    p.add_argument("--lam", type=float, default=0.25)
    transfer.add_flags(p)
    req = cli.parse_request(p, argv, AUTHORS, embedded_preset=transfer.preset(epochs=10, batch_size=12, milestone=8))
    transfer.check_flags(req.args, [req.base.dataset], req.base)
    return req


def run(req: Request) -> int:
    return cli.run_request(req, LAYOUTS, trials)


def trials(req: Request, sw: runner.Sweep) -> list[runner.TrialSpec]:
    args, base = req.args, transfer.start(req, sw, req.base)
    pool = (read_manifest(base.train_manifest, sw.storage) if base.train_manifest
            else cli.manifest(base, base.train_split, sw.storage))
    labeled, label_tag = _labeled(args, pool, base, sw)
    episodes.write_split_file(pool, labeled, sw.path("labels", "labeled.txt"), sw.storage)
    manifests = {"baseline": episodes.subset(pool, labeled, f"{pool.split}-labeled"),
                 "cgc": episodes.semisup_train(pool, labeled, args.unlabeled_per_labeled, args.split_seed)}
    if base.weights and not transfer.applies(args, req.base):  # the source model's backbone has no head already
        base = dataclasses.replace(base, weights=backbone_only(base.weights, base.arch, sw.path("init", "backbone.pt"),
                                                               sw.storage))
    specs = []
    for method, recipe, lam in cli.methods(base, args.lam):
        uri = sw.path("labels", f"train-{method}.parquet")
        write_manifest(manifests[method], uri, sw.storage)
        run_cfg = cli.fit_batch(dataclasses.replace(base, train_manifest=uri), len(manifests[method]))
        for seed in cli.ints(args.seeds or ("0,1,2" if req.base.dataset in EMBEDDED else "0"), "--seeds"):
            trial = dataclasses.replace(run_cfg, seed=seed).with_objective(recipe=recipe, lam=lam)
            tags = {"method": method, "dataset": base.dataset, "labels": label_tag, "labeled": len(labeled),
                    "lam": trial.objective.lam, "tau": trial.objective.tau, "seed": seed}
            specs.append(runner.spec(sw, f"{method}-seed{seed}", tags, trial, cli.ch_settings(args, trial)))
    return specs


def _labeled(args, pool, base, sw):
    """The labeled rows (from the file, else drawn) and how the table names them."""
    if args.labels_file:
        return episodes.match_labeled(pool, episodes.read_split_file(args.labels_file, sw.storage)), "file"
    percent = args.percent or (10.0 if base.dataset in EMBEDDED else 1.0)
    return episodes.draw_labeled(pool, percent / 100, args.split_seed), f"{percent:g}%"
