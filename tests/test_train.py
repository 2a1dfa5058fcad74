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
    (["--precision", "fp16"], "--precision fp16 needs --use-gpu"),
    (["--sync-bn"], "--sync-bn needs --use-gpu"),
    (["--arch", "vit_b_16"], "--layer 'layer4' is not a module of vit_b_16"),
    (["--arch", "vit_b_16", "--layer", "encoder"], "vit_b_16 cannot run on --image-size 96 inputs"),
    (["--arch", "vit_b_16", "--layer", "encoder", "--image-size", "224", "--resize-size", "256"],
     r"--layer encoder of vit_b_16 gives \(1, 197, 768\), not a conv feature map"),
    (["--arch", "squeezenet1_0", "--layer", "features"], "squeezenet1_0 has no Linear classification head"),
])
def test_bad_options_fail_before_any_worker(argv, message):
    with pytest.raises(ConfigError, match=message):
        check(parse(argv))


@pytest.mark.parametrize("arch,layer", [("vgg11", "features"), ("efficientnet_b0", "features"),
                                        ("resnext50_32x4d", "layer4")])
def test_other_conv_classifiers_pass(arch, layer):
    check(parse(["--arch", arch, "--layer", layer]))


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
    assert (cfg.arch, cfg.epochs, cfg.batch_size, cfg.recipe) == ("resnet50", 5, 512, "two_view")
    assert cfg.effective_lam == 0.5 and cfg.effective_lr == pytest.approx(0.2)  # paper: lambda 0.5, lr 0.1 x 512/256
    assert parse(["--dataset", "imagenet", "--data", "x"]).epochs == 90  # the paper's preset off the laptop
    (tmp_path / "bad.yaml").write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown options \['epoch'\]"):
        parse(["--config", str(tmp_path / "bad.yaml")])


def test_no_argument_job_trains_on_two_cpu_workers(ray_cluster, tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "jobs"))
    import imagenet

    monkeypatch.chdir(tmp_path)
    assert imagenet.main([]) == 0
    summary = json.loads((tmp_path / "runs" / "cgc-run" / "summary.json").read_text())
    assert summary["epochs_done"] == 3 and summary["global_step"] == 3 * summary["steps_per_epoch"]
    assert summary["config"]["num_workers"] == 2 and summary["config"]["recipe"] == "official"
    assert len(summary["params_checksums"]) == 2
    assert summary["params_checksums"][0] == summary["params_checksums"][1]  # DDP kept the ranks identical
    assert Path(summary["checkpoint"], "state.pt").exists()
    assert Path(summary["checkpoint"], "meta.json").exists()
    assert 0 <= summary["val_top1"] <= 100 and summary["val_cgc_loss"] > 0
    lines = [json.loads(x) for x in (tmp_path / "runs" / "cgc-run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3] and lines[-1]["val_top1"] == summary["val_top1"]
    assert [m["global_step"] for m in lines] == [k * summary["steps_per_epoch"] for k in (1, 2, 3)]
    out = capsys.readouterr().out
    assert "summary: " in out and "checkpoints: " in out and "runs/cgc-run/metrics.jsonl (a line per epoch)" in out


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


def test_interrupted_run_resumes_from_s3_without_repeating_steps(ray_cluster, s3_server, tmp_path, monkeypatch):
    from ray.train.v2.api.exceptions import TrainingFailedError

    from cgc_ray.data.storage import read_bytes
    from cgc_ray.train.service import run

    options, client = s3_server
    client.create_bucket(Bucket="runs")
    argv = [*SMALL, "--epochs", "2", "--storage-path", "s3://runs/cgc", "--s3-endpoint", options.endpoint_url,
            "--name", "resume", "--checkpoint-every-steps", "7", "--max-failures", "0", "--cam", "autograd",
            "--channels-last", "--keep-checkpoints", "2"]
    marker = tmp_path / "killed"
    monkeypatch.setenv("CGC_RAY_TEST_KILL", f"1:30:{marker}")  # rank 1 dies at global step 30 (epoch 1)
    with pytest.raises(TrainingFailedError):
        run(parse(argv))
    assert marker.exists()
    monkeypatch.delenv("CGC_RAY_TEST_KILL")
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


def test_worker_killed_mid_epoch_on_a_multinode_cluster(tmp_path):
    """Own 2-node cluster (ray.cluster_utils.Cluster) in a subprocess; rank 1
    is SIGKILLed mid-epoch; the run restarts from the last checkpoint."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "multinode_run.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "killed").exists()
    assert "resuming at epoch 2, step 4" in log
    assert (summary["epochs_done"], summary["global_step"]) == (2, 2 * summary["steps_per_epoch"])
    assert len(set(summary["nodes"])) == 2
