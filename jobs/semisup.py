r"""Table 9: semi-supervised learning, 1% of the labels; CGC also on the unlabeled rest.

    python jobs/semisup.py                           # embedded set (10% labels there), minutes
    ray job submit --working-dir . -- python jobs/semisup.py \
        --dataset imagenet --data s3://b/ILSVRC2012 --weights s3://b/swav_800ep_pretrain.pth.tar \
        --labels-file s3://b/splits/1percent.txt --num-workers 2 --gpus-per-trial 2 \
        --storage-path s3://b/sweeps --name semisup-1pc

The labeled split is the --labels-file (one relative path or URI a line, as
the SwAV/SimCLR 1% files) or drawn with --split-seed: ~--percent of every
class, at least one image each; it is written to <sweep>/labels/labeled.txt.
Baseline: cross-entropy on the labeled images. CGC: the labeled images plus
--unlabeled-per-labeled times as many unlabeled ones (label -100: the
cross-entropy skips them, the CGC term uses every image). Both start from
--weights (a SwAV ResNet-50: its projection head and prototypes are dropped)
and validate on the validation split.

The authors' settings, the defaults off the embedded set: ResNet-50, SGD, weight
decay 0, batch 128, lr 0.02, 50 epochs, λ 0.25, τ 0.5. Not yet reproduced:
their head learning rate (5) and lr x 0.2 at epochs 12 and 16 need optimizer
parameter groups and a MultiStepLR in the training loop; here the whole model
uses one lr, x 0.2 every 12 epochs. Their step pairs a labeled batch with an
unlabeled one; here one batch mixes both.
"""

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `ray job submit --working-dir .` without install

from cgc_ray.data.manifest import write as write_manifest
from cgc_ray.experiments import cli, episodes, runner, tables
from cgc_ray.experiments.weights import backbone_only

AUTHORS = dict(arch="resnet50", epochs=50, batch_size=128, lr=0.02, lr_reference_batch=128, weight_decay=0,
               lr_step_epochs=12, lr_gamma=0.2, tau=0.5)


def sweep(argv) -> int:
    p = cli.parser(__doc__, "semisup")
    p.add_argument("--labels-file", help="the labeled images, one relative path or URI a line")
    p.add_argument("--percent", type=float, help="labels kept per class when drawn (default 1; 10 on the embedded set)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--unlabeled-per-labeled", type=float, default=1.0, help="unlabeled images per labeled one")
    p.add_argument("--seeds", default="0", help="one baseline and one CGC trial per seed")
    p.add_argument("--lam", type=float, default=0.25)
    args, train_argv = p.parse_known_args(argv)
    base = cli.with_gpus(cli.train_config(train_argv, AUTHORS), args.gpus_per_trial)
    sw, layouts = cli.sweep(args, base), {"table9": tables.semisup_table}
    if args.table_only:
        return runner.run_sweep(sw, [], layouts, table_only=True)
    pool = cli.manifest(base, base.train_split, sw.storage)
    labeled, label_tag = _labeled(args, pool, base, sw)
    episodes.write_split_file(pool, labeled, sw.path("labels", "labeled.txt"), sw.storage)
    manifests = {"baseline": episodes.subset(pool, labeled, f"{pool.split}-labeled"),
                 "cgc": episodes.semisup_train(pool, labeled, args.unlabeled_per_labeled, args.split_seed)}
    if base.weights:
        base = dataclasses.replace(base, weights=backbone_only(base.weights, base.arch, sw.path("init", "backbone.pt"),
                                                               sw.storage))
    cgc_recipe = base.recipe if base.recipe != "baseline" else "official"
    specs = []
    for method, m in manifests.items():
        uri = sw.path("labels", f"train-{method}.parquet")
        write_manifest(m, uri, sw.storage)
        run = cli.fit_batch(dataclasses.replace(base, train_manifest=uri), len(m))
        recipe, lam = ("baseline", None) if method == "baseline" else (cgc_recipe, args.lam)
        for seed in cli.ints(args.seeds):
            trial = dataclasses.replace(run, recipe=recipe, lam=lam, seed=seed)
            tags = {"method": method, "dataset": base.dataset, "labels": label_tag, "labeled": len(labeled),
                    "lam": trial.effective_lam, "tau": trial.tau, "seed": seed}
            specs.append(runner.spec(sw, f"{method}-seed{seed}", tags, trial, cli.ch_settings(args, trial)))
    return runner.run_sweep(sw, specs, layouts, max_concurrent=args.max_concurrent_trials)


def _labeled(args, pool, base, sw):
    """The labeled rows (from the file, else drawn) and how the table names them."""
    if args.labels_file:
        return episodes.match_labeled(pool, episodes.read_split_file(args.labels_file, sw.storage)), "file"
    percent = args.percent or (10.0 if base.dataset == "embedded" else 1.0)
    return episodes.draw_labeled(pool, percent / 100, args.split_seed), f"{percent:g}%"


def main(argv=None) -> int:
    return cli.main(sweep, argv)


if __name__ == "__main__":
    sys.exit(main())
