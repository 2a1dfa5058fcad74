"""The training service on real local Ray clusters: the no-argument job, resume
from S3 after an interruption, a worker killed on a multi-node cluster, bad input."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cgc_ray.train.config import ConfigError, TrainConfig, check, parse

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--image-size", "48", "--resize-size", "56", "--batch-size", "16", "--val-batches", "2",
         "--log-every-steps", "10"]


@pytest.mark.parametrize("argv,message", [
    (["--arch", "resnet-nope"], "--arch 'resnet-nope' is not a torchvision classifier"),
    (["--batch-size", "33"], "--batch-size 33 is not divisible by --num-workers 2"),
    (["--recipe", "baseline", "--lam", "0.5"], "--recipe baseline trains without the CGC term"),
    (["--recipe", "cgc"], "--recipe must be one of"),
    (["--tau", "0"], "--tau must be > 0"),
    (["--dataset", "imagenet"], "--data is required for --dataset imagenet"),
    (["--negatives", "block", "--block-size", "5"], "--block-size dividing the per-worker batch 16"),
    (["--negatives", "block"], "--block-size must be given \\(>= 2\\) with negatives='block', got None"),
    (["--block-size", "1"], "--block-size must be >= 2, got 1"),
    (["--consistency", "l2"], r"--consistency must be one of \('infonce', 'mse'\), got 'l2'"),
    (["--precision", "fp16"], "--precision fp16 needs --use-gpu"),
    (["--sync-bn"], "--sync-bn needs --use-gpu"),
    (["--arch", "vit_b_16"], "--layer 'layer4' is not a module of vit_b_16"),
    (["--arch", "vit_b_16", "--layer", "encoder"], "vit_b_16 cannot run on --image-size 112 inputs"),
    (["--arch", "vit_b_16", "--layer", "encoder", "--image-size", "224", "--resize-size", "256"],
     r"--layer encoder of vit_b_16 gives \(2, 197, 768\), not a conv feature map"),
    (["--arch", "vit_b_16", "--layer", "encoder.layers.encoder_layer_0.self_attention", "--image-size", "224",
      "--resize-size", "256"], "--layer encoder.layers.encoder_layer_0.self_attention of vit_b_16: layer "
     "'encoder.layers.encoder_layer_0.self_attention' gives a tuple, not a feature map tensor"),
    (["--arch", "squeezenet1_0", "--layer", "features"], "squeezenet1_0 has no Linear classification head"),
    (["--lr", "-0.1"], r"--lr must be > 0, got -0.1"),
    (["--momentum", "1.5"], r"--momentum must be in \[0, 1\), got 1.5"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (["--max-bad-images", "-1"], "--max-bad-images must be >= 0"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints must be >= 1"),
    (["--cpus-per-worker", "0"], "--cpus-per-worker must be > 0"),
    (["--ray-log-level", "LOUD"], "--ray-log-level must be one of"),
    (["--max-bad-share", "1.5"], r"--max-bad-share must be in \[0, 1\]"),
    (["--arch", "googlenet", "--layer", "inception5b"], "--arch googlenet returns GoogLeNetOutputs in training"),
    (["--compile", "--cam", "autograd"], r"--compile with the autograd Grad-CAM \(--cam autograd at resnet18"),
    (["--compile", "--arch", "vgg11", "--layer", "features"], r"--compile with the autograd Grad-CAM \(--cam auto at vgg11"),
    (["--cam", "closed_form", "--layer", "layer3"], "--cam closed_form needs --layer layer4"),
    (["--use-gpu", "--gpus-per-worker", "0.5"], "--gpus-per-worker 0.5 with --num-workers 2 can put two DDP ranks"),
    (["--use-gpu", "--sync-bn", "--layer", "layer3"], "--sync-bn with --layer layer3 of resnet18: a batch-statistics"),
])
def test_bad_options_fail_before_any_worker(argv, message):
    with pytest.raises(ConfigError, match=message):
        check(parse(argv))


def test_shared_gpus_only_when_asked_for():
    check(parse(["--use-gpu", "--gpus-per-worker", "0.5", "--share-gpus"]))
    check(parse(["--use-gpu", "--sync-bn"]))  # layer4: no BatchNorm after it
    check(parse(["--use-gpu", "--gpus-per-worker", "0.25", "--num-workers", "1", "--batch-size", "16"]))


def test_unreadable_weights_and_storage_fail_before_ray_starts(tmp_path):
    from cgc_ray.train.service import run

    with pytest.raises(ConfigError, match=f"--weights {tmp_path}/nope.pt: cannot read"):
        run(parse(["--weights", str(tmp_path / "nope.pt")]))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=f"--storage-path {tmp_path}/file/runs: cannot write there"):
        run(parse(["--storage-path", str(tmp_path / "file" / "runs")]))


def test_a_run_resumes_only_with_the_options_it_started_with(tmp_path):
    from cgc_ray.data.storage import StorageOptions
    from cgc_ray.train.service import check_resume, write_config

    def started(argv):
        cfg = parse(["--storage-path", str(tmp_path), *argv])
        check_resume(cfg, StorageOptions())
        write_config(cfg, StorageOptions())

    started(["--momentum", "0.95"])  # refused before its first checkpoint: not a run yet, may change
    started([])
    stored = json.loads((tmp_path / "cgc-run" / "config.json").read_text())
    assert stored["momentum"] == 0.9 and stored["lr"] == 0.1
    (tmp_path / "cgc-run" / "checkpoint_2026-11-30_00-00-00.000000").mkdir()  # Ray Train's checkpoint folder
    started([])  # identical: continues
    started(["--epochs", "9", "--max-failures", "1", "--cpus-per-worker", "0.25", "--max-bad-images", "5"])
    with pytest.raises(ConfigError, match=r"run 'cgc-run' .* was started with other options "
                                          r"\(--lr 0.1 -> 0.2, --momentum 0.9 -> 0.5\).*another --name"):
        started(["--momentum", "0.5", "--lr", "0.2"])
    started(["--momentum", "0.5", "--name", "other"])
    # config.json of a version before the nested objective stored --lam as given (null: the arch's value)
    old = {**stored, "name": "other", "lam": None, "removed_option": 1}
    (tmp_path / "other" / "config.json").write_text(json.dumps(old))
    (tmp_path / "other" / "checkpoint_2026-11-30_00-00-00.000000").mkdir()
    started(["--name", "other"])  # lam null meant 1.0 for resnet18: the same run
    (tmp_path / "other" / "config.json").write_text(json.dumps(old))
    with pytest.raises(ConfigError, match=r"\(--lam 1.0 -> 0.5\)"):
        started(["--name", "other", "--lam", "0.5"])


def test_weights_from_a_project_checkpoint_folder_or_a_state_dict(tmp_path):
    import torch
    import torchvision

    from cgc_ray.data.storage import StorageOptions
    from cgc_ray.train import checkpoint
    from cgc_ray.train.model import build_model
    from cgc_ray.train.service import check_weights

    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    (tmp_path / "ckpt").mkdir()
    checkpoint.save(str(tmp_path / "ckpt"), model=model, optimizer=opt, scheduler=sched,
                    scaler=torch.amp.GradScaler(enabled=False), epoch=1, step_in_epoch=0, global_step=5, meta={})
    uri = check_weights(str(tmp_path / "ckpt"), "resnet18", StorageOptions())
    assert uri == str(tmp_path / "ckpt" / "state.pt")
    loaded = build_model("resnet18", 10, uri)
    assert torch.equal(loaded.layer1[0].conv1.weight, model.layer1[0].conv1.weight)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    assert check_weights(str(tmp_path / "plain.pt"), "resnet18", StorageOptions()) == str(tmp_path / "plain.pt")
    with pytest.raises(ConfigError, match="does not fit resnet50"):
        check_weights(str(tmp_path / "plain.pt"), "resnet50", StorageOptions())


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_carrying_pickled_code_is_refused_unexecuted(tmp_path):
    import torch

    from cgc_ray.data.storage import StorageOptions
    from cgc_ray.train.checkpoint import UnsafeCheckpoint, load_model
    from cgc_ray.train.service import check_weights

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "meta.json").write_text(json.dumps({"arch": "resnet18", "classes": ["a", "b"]}))
    torch.save({"model": {}, "position": _Evil(str(tmp_path / "pwned"))}, tmp_path / "ckpt" / "state.pt")
    with pytest.raises(UnsafeCheckpoint, match=r"state.pt: refused by a weights-only load, it asks for the global "
                                               r"(builtins|io)\.open"):
        load_model(str(tmp_path / "ckpt"))
    with pytest.raises(ConfigError, match="refused by a weights-only load"):
        check_weights(str(tmp_path / "ckpt"), "resnet18", StorageOptions())
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("arch,layer", [("vgg11", "features"), ("efficientnet_b0", "features"),
                                        ("resnext50_32x4d", "layer4")])
def test_other_conv_classifiers_pass(arch, layer):
    check(parse(["--arch", arch, "--layer", layer]))


def test_a_request_the_cluster_cannot_serve_is_named():
    """Workers that take every CPU leave none for the input pipeline: the run would hang."""
    with pytest.raises(ConfigError, match=r"--num-workers 2 x --cpus-per-worker 1 take 2 CPUs and the input "
                                          r"pipeline needs 1 more; the cluster has 2 \(--cpus-per-worker 0.5 fits"):
        check(TrainConfig(num_workers=2, cpus_per_worker=1.0, batch_size=32), cluster_cpus=2.0)
    with pytest.raises(ConfigError, match="3 x --cpus-per-worker 1 take 3 CPUs"):
        check(TrainConfig(num_workers=3, cpus_per_worker=1.0, batch_size=33), cluster_cpus=2.0)
    check(TrainConfig(num_workers=2, cpus_per_worker=0.5, batch_size=32), cluster_cpus=2.0)
    check(TrainConfig(num_workers=3, cpus_per_worker=1.0, batch_size=33, autoscaling=True), cluster_cpus=2.0)


def test_too_few_gpus_is_named():
    with pytest.raises(ConfigError, match="needs 4 GPUs; the cluster has 1"):
        check(TrainConfig(use_gpu=True, num_workers=4, batch_size=64), cluster_gpus=1.0)


def test_missing_data_path_fails_before_ray_starts(tmp_path):
    from cgc_ray.train.service import run

    with pytest.raises(ConfigError, match=f"--data {tmp_path}/nope does not exist"):
        run(parse(["--dataset", "imagenet", "--data", str(tmp_path / "nope")]))


def test_yaml_config_and_flags(tmp_path):
    (tmp_path / "r50.yaml").write_text("arch: resnet50\nepochs: 90\nbatch-size: 512\nrecipe: two_view\n")
    cfg = parse(["--config", str(tmp_path / "r50.yaml"), "--epochs", "5", "--dataset", "imagenet", "--data", "s3://b/x"])
    assert (cfg.arch, cfg.epochs, cfg.batch_size, cfg.objective.recipe) == ("resnet50", 5, 512, "two_view")
    assert cfg.objective.lam == 0.5 and cfg.effective_lr == pytest.approx(0.2)  # paper: lambda 0.5, lr 0.1 x 512/256
    assert parse(["--dataset", "imagenet", "--data", "x"]).epochs == 90  # the paper's preset off the laptop
    # --data without --dataset: an ImageNet-layout root, as in jobs/evaluate.py (issue 13.3)
    from cgc_ray.evaluation.job import parse as parse_eval
    assert parse(["--data", "/d"]).dataset == parse_eval(["--checkpoint", "c", "--data", "/d"]).dataset == "imagenet"
    assert parse([]).dataset == parse_eval(["--checkpoint", "c"]).dataset == "embedded"
    (tmp_path / "bad.yaml").write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown options \['epoch'\]"):
        parse(["--config", str(tmp_path / "bad.yaml")])


def test_the_objective_options_are_flat_outside_and_one_cgcconfig_inside(tmp_path):
    """Flags, YAML keys and stored configs name the objective's options flat
    (--lam, --tau, ...); TrainConfig holds them as one CGCConfig, built and
    checked once (issue 13.4)."""
    from cgc_ray.objective import CGCConfig
    from cgc_ray.train.config import TrainConfig, flag_names

    (tmp_path / "o.yaml").write_text("tau: 0.25\nnegatives: global\narch: resnet50\n")
    cfg = parse(["--config", str(tmp_path / "o.yaml"), "--cam", "autograd"])
    assert cfg.objective == CGCConfig(lam=0.5, tau=0.25, negatives="global", cam="autograd")  # resnet50: lam 0.5
    flat = cfg.to_dict()
    assert "objective" not in flat and (flat["lam"], flat["tau"], flat["layer"]) == (0.5, 0.25, "layer4")
    assert sorted(flat) == sorted(flag_names()) and json.loads(json.dumps(flat)) == flat
    assert TrainConfig.from_dict(flat) == cfg
    baseline = TrainConfig.from_dict({**flat, "lam": None, "recipe": "baseline"})
    assert baseline.objective.lam == 0.0 and baseline.with_objective(recipe="official").objective.lam == 0.5
    assert cfg.with_objective(recipe="baseline").objective.lam == 0.0  # the recipe's own lam
    with pytest.raises(ConfigError, match=r"--recipe baseline trains without the CGC term; drop --lam 0.5"):
        cfg.with_objective(recipe="baseline", lam=0.5)
    assert TrainConfig(arch="resnet50").objective.lam == 0.5  # built here too: the arch's lam
    with pytest.raises(ConfigError, match=r"--tau must be > 0, got -1.0"):
        cfg.with_objective(tau=-1.0)
    with pytest.raises(ConfigError, match=r"unknown options \['lamda'\]"):
        TrainConfig.from_dict({**flat, "lamda": 1})


def test_presets_are_named_and_the_objective_comes_from_the_config():
    from cgc_ray.objective import CGCConfig

    assert (parse([]).preset, parse(["--dataset", "imagenet", "--data", "/d"]).preset) == ("laptop", "paper")
    forced = parse(["--preset", "laptop", "--dataset", "imagenet", "--data", "/d", "--epochs", "3"])
    assert (forced.image_size, forced.epochs, forced.warmup_epochs) == (112, 3, 1)  # preset under the flags
    with pytest.raises(ConfigError, match=r"--preset must be one of \['laptop', 'paper'\], got 'fast'"):
        parse(["--preset", "fast"])
    cfg = parse(["--lam", "0.3", "--tau", "0.7", "--negatives", "block", "--block-size", "4", "--layer", "layer3",
                 "--precision", "bf16", "--consistency", "mse", "--cam", "autograd"])
    assert cfg.objective == CGCConfig(lam=0.3, tau=0.7, negatives="block", block_size=4, layer="layer3",
                                      consistency="mse", cam="autograd")
    assert cfg.precision == "bf16"  # the loop's autocast dtype (CGCConfig.amp_dtype), not an objective flag
    assert parse(["--recipe", "baseline"]).objective.lam == 0.0


def test_no_argument_job_trains_on_two_cpu_workers(ray_cluster, tmp_path, monkeypatch, capsys):
    """The README's first command: the model learns (far above the 10 % of
    chance, so a pipeline that mixes images and labels or breaks their
    normalisation fails here) and the run reports its explanations."""
    from PIL import Image

    sys.path.insert(0, str(ROOT / "jobs"))
    import imagenet

    monkeypatch.chdir(tmp_path)
    assert imagenet.main([]) == 0
    run = tmp_path / "runs" / "cgc-run"
    summary = json.loads((run / "summary.json").read_text())
    epochs = summary["config"]["epochs"]
    assert summary["epochs_done"] == epochs and summary["global_step"] == epochs * summary["steps_per_epoch"]
    assert summary["config"]["num_workers"] == 2 and summary["config"]["recipe"] == "official"
    assert len(summary["params_checksums"]) == 2
    assert summary["params_checksums"][0] == summary["params_checksums"][1]  # DDP kept the ranks identical
    assert Path(summary["checkpoint"], "state.pt").exists()
    assert Path(summary["checkpoint"], "meta.json").exists()
    assert summary["val_images"] == 160  # every validation image, once
    assert summary["val_top1"] >= 60, summary["val_top1"]
    assert summary["val_cgc_loss"] > 0
    assert summary["val_ch_images"] == 160 and 0 < summary["val_content_heatmap"] <= 100
    with Image.open(run / "heatmaps.png") as picture:
        assert picture.format == "PNG" and picture.size[0] >= 4 * 160
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == list(range(1, epochs + 1)) and lines[-1]["val_top1"] == summary["val_top1"]
    assert [m["global_step"] for m in lines] == [k * summary["steps_per_epoch"] for k in range(1, epochs + 1)]
    out = capsys.readouterr().out
    assert "summary: " in out and "checkpoints: " in out and "runs/cgc-run/metrics.jsonl (a line per epoch)" in out
    assert re.search(r"^final: val top-1 \d+\.\d\d% \(160 images\), Content Heatmap \d+\.\d\d% "
                     r"\(160 images with boxes\)", out, flags=re.M), out[-1500:]


def test_a_run_at_layer3_trains_validates_and_explains(ray_cluster, tmp_path):
    """Issue 14.5: any valid layer with --cam auto (autograd Grad-CAM here,
    per-image in training: batch-statistics BatchNorm follows layer3) gets
    through training, validation and the end-of-run Content Heatmap."""
    from cgc_ray.data.embedded import ensure_embedded
    from cgc_ray.data.indexers import load_or_build
    from cgc_ray.data.manifest import build, write

    sys.path.insert(0, str(ROOT / "jobs"))
    import imagenet

    train, _ = load_or_build("embedded", str(ensure_embedded()), "train")
    rows = train.table.slice(0, 64).to_pylist()
    write(build(rows, train.classes, "embedded", "train", train.root), str(tmp_path / "train.parquet"))
    rc = imagenet.main([*SMALL, "--epochs", "1", "--layer", "layer3", "--train-manifest", str(tmp_path / "train.parquet"),
                        "--explain-images", "16", "--figure-images", "4", "--max-failures", "0",
                        "--storage-path", str(tmp_path / "runs")])
    assert rc == 0
    summary = json.loads((tmp_path / "runs" / "cgc-run" / "summary.json").read_text())
    assert summary["config"]["layer"] == "layer3" and summary["epochs_done"] == 1
    assert summary["global_step"] == summary["steps_per_epoch"] == 4  # 64 images, 16 a step
    assert summary["val_images"] > 0 and summary["val_cgc_loss"] > 0
    assert summary["val_ch_images"] == 16 and 0 < summary["val_content_heatmap"] <= 100


def test_a_deterministic_run_repeats_itself(ray_cluster, tmp_path):
    """--deterministic: the same seed gives the same run (two epochs, so two
    shuffles and two draws of every augmentation; two DDP ranks, so Ray Data's
    split): equal weights and validation after every epoch."""
    from cgc_ray.data.embedded import ensure_embedded
    from cgc_ray.data.indexers import load_or_build
    from cgc_ray.data.manifest import build, write

    sys.path.insert(0, str(ROOT / "jobs"))
    import imagenet

    train, _ = load_or_build("embedded", str(ensure_embedded()), "train")
    rows = train.table.take(list(range(0, 640, 5))).to_pylist()  # 128 images, every class
    write(build(rows, train.classes, "embedded", "train", train.root), str(tmp_path / "train.parquet"))

    def run(name):
        assert imagenet.main([*SMALL, "--epochs", "2", "--deterministic", "--explain-images", "0",
                              "--train-manifest", str(tmp_path / "train.parquet"),
                              "--storage-path", str(tmp_path), "--name", name]) == 0
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        return summary, (tmp_path / name / "metrics.jsonl").read_text().splitlines()

    (first, lines), (again, lines_again) = run("a"), run("b")
    keys = ("params_checksums", "val_top1", "val_cgc_loss")
    per_epoch = [[{k: json.loads(x)[k] for k in keys} for x in run_lines] for run_lines in (lines, lines_again)]
    assert len(per_epoch[0]) == 2 and per_epoch[0] == per_epoch[1]
    assert first["params_checksums"] == again["params_checksums"]


def test_too_many_unreadable_images_end_the_job_with_one_line(ray_cluster, tmp_path, capsys):
    """Past --max-bad-images the job exits 2 with one line naming the limit and a file."""
    from cgc_ray.data.embedded import ensure_embedded
    from cgc_ray.data.indexers import load_or_build
    from cgc_ray.data.manifest import build, write

    sys.path.insert(0, str(ROOT / "jobs"))
    import imagenet

    train, _ = load_or_build("embedded", str(ensure_embedded()), "train")
    (tmp_path / "empty.JPEG").write_bytes(b"")
    rows = [*train.table.slice(0, 62).to_pylist(), {"uri": str(tmp_path / "empty.JPEG"), "label": 0},
            {"uri": str(tmp_path / "gone.JPEG"), "label": 1}]
    write(build(rows, train.classes, "embedded", "train", train.root), str(tmp_path / "train.parquet"))
    rc = imagenet.main([*SMALL, "--epochs", "1", "--train-manifest", str(tmp_path / "train.parquet"),
                        "--max-bad-images", "1", "--max-failures", "0", "--storage-path", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2
    assert re.search(r"^error: 2 images could not be read, more than --max-bad-images 1 allows; "
                     rf"e.g. {tmp_path}/(empty|gone).JPEG \(", err, flags=re.M), err[-2000:]


def test_an_epoch_that_trains_nothing_fails_with_the_reason(ray_cluster, tmp_path, capsys):
    """Every training image unreadable but under the limits: no 'finished' run
    with 0 steps, but one line saying no batch could be made."""
    from cgc_ray.data.embedded import ensure_embedded
    from cgc_ray.data.indexers import load_or_build
    from cgc_ray.data.manifest import write

    sys.path.insert(0, str(ROOT / "jobs"))
    import imagenet

    train, _ = load_or_build("embedded", str(ensure_embedded()), "train")
    for i in range(32):
        (tmp_path / f"empty{i}.JPEG").write_bytes(b"")
    rows = [{"uri": str(tmp_path / f"empty{i}.JPEG"), "label": i % 10} for i in range(32)]
    from cgc_ray.data.manifest import build
    write(build(rows, train.classes, "embedded", "train", train.root), str(tmp_path / "train.parquet"))
    rc = imagenet.main([*SMALL, "--epochs", "1", "--train-manifest", str(tmp_path / "train.parquet"),
                        "--max-bad-images", "100", "--max-bad-share", "1", "--max-failures", "0",
                        "--storage-path", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2
    assert re.search(r"^error: an epoch of run 'cgc-run' trained on no batch: none of its 32 training images "
                     r"could be made into a batch of 8 per worker \(32 unreadable", err, flags=re.M), err[-2000:]
    assert not (tmp_path / "runs" / "cgc-run" / "summary.json").exists()


def test_interrupted_run_resumes_from_s3_without_repeating_steps(ray_cluster, s3_server, tmp_path):
    from faults import KillWorkerAfterCheckpoint
    from ray.train.v2.api.exceptions import TrainingFailedError

    from cgc_ray.data.storage import read_bytes
    from cgc_ray.train.service import run

    options, client = s3_server
    client.create_bucket(Bucket="runs")
    argv = [*SMALL, "--epochs", "2", "--storage-path", "s3://runs/cgc", "--s3-endpoint", options.endpoint_url,
            "--name", "resume", "--checkpoint-every-steps", "7", "--max-failures", "0", "--cam", "autograd",
            "--channels-last", "--keep-checkpoints", "2"]
    marker = tmp_path / "killed"
    with pytest.raises(TrainingFailedError):  # rank 1 dies once the step-28 checkpoint (epoch 1) is registered
        run(parse(argv), callbacks=[KillWorkerAfterCheckpoint(rank=1, global_step=28, marker=marker)])
    assert marker.exists()
    summary = run(parse(argv))  # same name: continues from the step-28 checkpoint
    spe = summary["steps_per_epoch"]
    assert (summary["epochs_done"], summary["global_step"]) == (2, 2 * spe)
    assert summary["params_checksums"][0] == summary["params_checksums"][1]  # with double backward under DDP
    stored = json.loads(read_bytes("s3://runs/cgc/resume/summary.json", options))
    assert stored["global_step"] == 2 * spe and stored["checkpoint"].startswith("s3://runs/cgc/resume/")

    def epochs_logged():
        lines = read_bytes("s3://runs/cgc/resume/metrics.jsonl", options).decode().splitlines()
        return [(m["epoch"], m["global_step"]) for m in map(json.loads, lines)]

    assert epochs_logged() == [(1, spe), (2, 2 * spe)]  # the killed epoch once, after its resume
    # a finished run asked for one more epoch goes on from its last checkpoint
    summary = run(parse([*argv, "--epochs", "3"]))
    assert (summary["epochs_done"], summary["global_step"]) == (3, 3 * spe)
    # submitted again unchanged: nothing left to train, the same final checkpoint
    again = run(parse([*argv, "--epochs", "3"]))
    assert (again["epochs_done"], again["global_step"], again["checkpoint"]) == (3, 3 * spe, summary["checkpoint"])
    assert epochs_logged() == [(1, spe), (2, 2 * spe), (3, 3 * spe)]
    listed = client.list_objects_v2(Bucket="runs", Prefix="cgc/resume/", Delimiter="/")["CommonPrefixes"]
    assert len([p for p in listed if p["Prefix"].startswith("cgc/resume/checkpoint_")]) == 2  # --keep-checkpoints 2


@pytest.mark.parametrize("where", ["local", "s3"])
def test_checkpoint_folders_ray_does_not_keep_are_pruned(where, tmp_path, request):
    """Only checkpoint_* folders outside the kept set go; other files stay."""
    from cgc_ray.data.storage import StorageOptions, list_dir, write_bytes
    from cgc_ray.train.service import prune_checkpoints

    if where == "s3":
        options, client = request.getfixturevalue("s3_server")
        client.create_bucket(Bucket="prune")
        run = "s3://prune/runs/r"
    else:
        options, run = StorageOptions(), str(tmp_path / "r")
    for name in ("checkpoint_a/state.pt", "checkpoint_a/meta.json", "checkpoint_b/state.pt", "checkpoint_c/state.pt",
                 "summary.json", "checkpoint_notes.txt"):
        write_bytes(f"{run}/{name}", b"x", options)
    assert prune_checkpoints(run, ["checkpoint_a", "checkpoint_c"], options) == ["checkpoint_b"]
    assert sorted(i.base_name for i in list_dir(run, options)) == [
        "checkpoint_a", "checkpoint_c", "checkpoint_notes.txt", "summary.json"]


@pytest.mark.cluster
def test_worker_killed_mid_epoch_on_a_multinode_cluster(tmp_path):
    """Own 2-node cluster (ray.cluster_utils.Cluster) in a subprocess; rank 1
    is SIGKILLed mid-epoch; the run restarts from the last checkpoint."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "multinode_run.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "killed").exists()
    spe = summary["steps_per_epoch"]
    assert (summary["epochs_done"], summary["global_step"]) == (2, 2 * spe)
    # the run's own record, not the workers' forwarded stdout (which a busy cluster may drop):
    # epoch 2 ran in the worker group that resumed from the epoch-2 step-4 checkpoint
    lines = [json.loads(x) for x in (tmp_path / "multinode" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["epoch"], m["resumed_from_step"]) for m in lines] == [(1, 0), (2, spe + 4)], log[-4000:]
    assert len(set(summary["nodes"])) == 2


@pytest.mark.parametrize("level,notice", [("WARNING", False), ("ERROR", False), ("INFO", True), ("DEBUG", True)])
def test_ray_datas_progress_bar_notice_shows_only_at_info(level, notice):
    """The job turns Ray Data's progress bars off (its own lines replace them);
    Ray Data's one-line notice about that is a WARNING of its progress module:
    shown at --ray-log-level INFO/DEBUG only, that module's errors always."""
    import logging

    from cgc_ray.train.cluster import ray_log_level

    loggers = [logging.getLogger(n) for n in ("ray.data", "ray.data._internal.progress")]
    saved = [lg.level for lg in loggers]
    try:
        ray_log_level(level)
        progress = logging.getLogger("ray.data._internal.progress")
        assert progress.isEnabledFor(logging.WARNING) == notice and progress.isEnabledFor(logging.ERROR)
        assert logging.getLogger("ray.data").getEffectiveLevel() == logging.getLevelName(level)
    finally:
        for lg, lv in zip(loggers, saved):
            lg.setLevel(lv)
