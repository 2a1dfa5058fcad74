"""The sweep jobs end to end on the embedded set (Tune trials running the
training service on the test session's 2-CPU cluster), tiny grids: tables of
mean ± std over the trials that ran, and a sweep whose driver is killed midway
and restored without rerunning its finished trial."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision

from cgc_ray.experiments import tables

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "jobs"))
TINY = ["--image-size", "48", "--resize-size", "56", "--epochs", "1", "--num-workers", "1", "--batch-size", "16",
        "--val-batches", "1", "--val-batch-size", "16", "--ch-images", "8", "--ch-short-side", "64",
        "--cpus-per-worker", "0.25", "--log-every-steps", "50"]


def _rows(sweep: Path) -> list[dict]:
    return [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]


def _cell(rows, metric, **where) -> str:
    return str(tables.stat(r[metric] for r in rows if all(r[k] == v for k, v in where.items())))


def _check_rows(rows, n):
    assert len(rows) == n
    for r in rows:
        assert r["config"]["seed"] == r["seed"] and r["code_version"] and r["config"]["name"] == r["key"]
        assert 0 <= r["top1"] <= 100 and math.isfinite(r["summary"]["params_checksums"][0])  # no NaN training


def _attempts(sweep: Path, key: str) -> int:
    return len(list((sweep / "attempts").glob(f"{key}-*.json")))


def test_lambda_sweep_killed_midway_resumes_without_rerunning(ray_cluster, tmp_path, capsys):
    """The driver (a subprocess on the session's cluster) is SIGKILLed once the
    first trial's row is stored; the re-run runs only the other two trials,
    one at a time as the cap asks (issue 15.5: a restored Tune experiment
    started them together). Then --table-only rewrites the table."""
    import ray

    import lambda_sweep

    argv = ["--lam", "0,0.5,1", "--train-per-class", "3", *TINY, "--max-concurrent-trials", "1",
            "--storage-path", str(tmp_path), "--name", "lam"]
    sweep = tmp_path / "lam"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "lambda_sweep.py"), *argv], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while not list((sweep / "results").glob("*.json")) and driver.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    done = sorted(p.stem for p in (sweep / "results").glob("*.json"))
    assert len(done) == 1, (tmp_path / "driver.log").read_text()[-3000:]
    first = (sweep / "results" / f"{done[0]}.json").read_text()

    assert lambda_sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert "resuming sweep" in out and "1 of 3 trials finished and kept" in out
    assert "2 trials to run, up to 1 at a time" in out
    rows = _rows(sweep)
    _check_rows(rows, 3)
    assert (sweep / "results" / f"{done[0]}.json").read_text() == first  # the finished trial was not rerun
    assert _attempts(sweep, done[0]) == 1
    rerun = sorted((r for r in rows if r["key"] != done[0]), key=lambda r: r["started"])
    assert rerun[1]["started"] >= rerun[0]["finished"]  # one at a time after the resume too
    assert {r["lam"] for r in rows} == {0.0, 0.5, 1.0}
    assert all(0 <= r["ch"] <= 100 and r["ch_images"] == 8 for r in rows)  # the embedded val set has boxes
    md = (sweep / "table10.md").read_text()
    for lam in (0.0, 0.5, 1.0):
        assert f"| {lam:g} | {_cell(rows, 'top1', lam=lam)} | {_cell(rows, 'ch', lam=lam)} |" in md

    (sweep / "table10.md").unlink()
    assert lambda_sweep.main([*argv, "--table-only"]) == 0  # from the stored rows alone
    assert (sweep / "table10.md").read_text() == md
    assert sum(_attempts(sweep, r["key"]) for r in rows) <= 4


def test_fewshot_pairs_baseline_and_cgc_on_the_same_episodes(ray_cluster, tmp_path):
    """The embedded default: a source model trained on classes 0-4, episodes of
    classes 5-9 fine-tuned from its backbone, validated on their boxed val images."""
    import fewshot

    from cgc_ray.data.manifest import read
    from cgc_ray.train.checkpoint import load_state

    argv = ["--shots", "2", "--episodes", "2", "--source-epochs", "1", *TINY,
            "--max-concurrent-trials", "2", "--storage-path", str(tmp_path), "--name", "fs"]
    assert fewshot.main(argv) == 0
    sweep = tmp_path / "fs"
    rows = _rows(sweep)
    _check_rows(rows, 4)
    source_run = json.loads((sweep / "source" / "runs" / "embedded-source-1ep" / "summary.json").read_text())
    assert source_run["train_images"] == 320 and source_run["config"]["recipe"] == "baseline"  # 5 classes x 64
    ckpt = load_state((Path(source_run["checkpoint"]) / "state.pt").read_bytes(), "source")["model"]
    backbone = torch.load(sweep / "source" / "embedded-source-1ep-backbone.pt", weights_only=True)
    assert set(ckpt) - set(backbone) == {"fc.weight", "fc.bias"}  # the head is dropped
    assert all(torch.equal(backbone[k], ckpt[k]) for k in backbone)
    val = read(str(sweep / "source" / "embedded-val-target.parquet"))
    assert val.classes == [f"n900000{i:02d}" for i in range(6, 11)] and len(val) == 80
    for r in rows:
        assert r["summary"]["train_images"] == 10 and r["config"]["seed"] == r["episode"]  # 2 shots x 5 classes
        assert r["config"]["train_manifest"].endswith(f"embedded-target-2shot-ep{r['episode']}-train.parquet")
        assert r["config"]["weights"] == str(sweep / "source" / "embedded-source-1ep-backbone.pt")
        assert r["config"]["val_manifest"] == str(sweep / "source" / "embedded-val-target.parquet")
        assert r["ch"] is not None and r["ch_images"] == 8  # the val split's boxes
    pair = {r["method"]: r["config"]["train_manifest"] for r in rows if r["episode"] == 1}
    assert pair["baseline"] == pair["cgc"]
    cells = [_cell(rows, "top1", method="baseline"), _cell(rows, "top1", method="cgc"),
             str(tables.paired_diff(rows, "top1", ("episode",)))]
    assert "± n/a" not in "".join(cells)  # two episodes: a real spread
    assert f"| 2 | {' | '.join(cells)} |" in (sweep / "table7.md").read_text()
    ch_cells = [_cell(rows, "ch", method="baseline"), _cell(rows, "ch", method="cgc")]
    assert f"| 2 | {' | '.join(ch_cells)} |" in (sweep / "table8.md").read_text()


@pytest.mark.parametrize("argv,message", [
    (["--source-epochs", "0"], "--source-epochs 0: must be >= 1"),
    (["--source-epochs", "2", "--from-scratch"], "--source-epochs 2: must be >= 1, and only for the source model"),
    (["--source-epochs", "2", "--datasets", "cub=/data/cub"], "only for the source model of an embedded set"),
    (["--from-scratch", "--weights", "/w.pt"], "--from-scratch: only on an embedded set without --weights"),
])
def test_transfer_flags_only_where_a_source_model_is_trained(argv, message):
    from cgc_ray.experiments import fewshot
    from cgc_ray.train.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        fewshot.parse(argv)


def test_fewshot_refuses_another_split_under_transfer_before_training(tmp_path):
    from cgc_ray.experiments import fewshot
    from cgc_ray.train.config import ConfigError

    req = fewshot.parse(["--split", "val", "--storage-path", str(tmp_path)])
    with pytest.raises(ConfigError, match="--split val: on the embedded set the episodes come from the target half"):
        fewshot.trials(req, req.sweep)
    assert not req.setup and not (tmp_path / "fewshot").exists()  # nothing trained or written


def test_finegrained_job_fine_tunes_from_weights_with_s3_storage(ray_cluster, s3_server, tmp_path):
    """Tune's experiment, the training runs, the rows and the tables all in S3."""
    import finegrained

    from cgc_ray.data.storage import read_bytes

    options, client = s3_server
    client.create_bucket(Bucket="sweeps")
    weights = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), weights)  # an ImageNet-shaped head: replaced
    argv = ["--trials", "1", "--train-per-class", "3", "--weights", str(weights), *TINY,
            "--max-concurrent-trials", "2", "--storage-path", "s3://sweeps/x", "--s3-endpoint", options.endpoint_url,
            "--name", "fg"]
    assert finegrained.main(argv) == 0
    rows = [json.loads(line) for line in read_bytes("s3://sweeps/x/fg/results.jsonl", options).decode().splitlines()]
    _check_rows(rows, 2)
    by = {r["method"]: r for r in rows}
    assert by["baseline"]["config"]["recipe"] == "baseline" and by["cgc"]["lam"] == 0.5
    assert all(r["config"]["weights"] == str(weights) and r["ch"] is not None for r in rows)
    assert all(r["summary"]["checkpoint"].startswith("s3://sweeps/x/fg/runs/") for r in rows)
    row = (f"| embedded | {_cell(rows, 'top1', method='baseline')} | {_cell(rows, 'top1', method='cgc')} | "
           f"{tables.paired_diff(rows, 'top1', ('seed',))} |")
    assert row in read_bytes("s3://sweeps/x/fg/table6.md", options).decode()
    assert read_bytes("s3://sweeps/x/fg/tuner.pkl", options)  # Tune's experiment state, restorable from S3


def test_semisup_job_trains_cgc_on_unlabeled_images(ray_cluster, tmp_path):
    import semisup

    from cgc_ray.data.manifest import read

    state = {f"module.{k}": v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc")}
    state.update({"module.projection_head.0.weight": torch.zeros(8, 512),
                  "module.prototypes.weight": torch.zeros(4, 8)})
    torch.save({"state_dict": state}, tmp_path / "swav.pth.tar")  # the SwAV checkpoint layout
    argv = ["--percent", "5", "--seeds", "0", "--weights", str(tmp_path / "swav.pth.tar"), *TINY,
            "--max-concurrent-trials", "2",
            "--head-lr", "0.5", "--storage-path", str(tmp_path), "--name", "ss"]
    assert semisup.main(argv) == 0
    sweep = tmp_path / "ss"
    assert len((sweep / "labels" / "labeled.txt").read_text().splitlines()) == 30  # round(5% of 64) = 3 per class
    labels = read(str(sweep / "labels" / "train-cgc.parquet")).table.column("label").to_pylist()
    assert sum(x >= 0 for x in labels) == 30 and labels.count(-100) == 30
    rows = _rows(sweep)
    _check_rows(rows, 2)
    by = {r["method"]: r for r in rows}
    assert by["baseline"]["summary"]["train_images"] == 30 and by["cgc"]["summary"]["train_images"] == 60
    assert by["cgc"]["lam"] == 0.25 and by["cgc"]["config"]["weights"].endswith("init/backbone.pt")
    assert by["cgc"]["config"]["head_lr"] == 0.5  # the new head's own parameter group
    md = (sweep / "table9.md").read_text()
    cgc = f"| CGC (+ CGC on unlabeled) | {_cell(rows, 'top1', method='cgc')} | {_cell(rows, 'ch', method='cgc')} |"
    assert cgc in md
    assert "| Δ CGC − baseline |" in md


def test_semisup_on_the_embedded_set_starts_from_the_source_model(ray_cluster, tmp_path):
    """No --weights: the labels come from the target half (10 % of 64 = 6 of
    each of its 5 classes), both methods start from the source backbone,
    which is trained once and kept for a re-run."""
    import semisup

    argv = ["--seeds", "0", "--source-epochs", "1", *TINY, "--storage-path", str(tmp_path), "--name", "ss"]
    assert semisup.main(argv) == 0
    sweep = tmp_path / "ss"
    rows = _rows(sweep)
    _check_rows(rows, 2)
    backbone = sweep / "source" / "embedded-source-1ep-backbone.pt"
    assert all(r["config"]["weights"] == str(backbone) and r["ch"] is not None for r in rows)
    by = {r["method"]: r for r in rows}
    assert by["baseline"]["summary"]["train_images"] == 30 and by["cgc"]["summary"]["train_images"] == 60
    assert by["baseline"]["summary"]["num_classes"] == 5
    written = backbone.stat().st_mtime_ns
    assert semisup.main([*argv, "--table-only"]) == 0 and semisup.main(argv) == 0  # nothing left to run
    assert backbone.stat().st_mtime_ns == written


def test_concurrent_trials_follow_the_cluster():
    from cgc_ray.experiments.runner import max_concurrent_trials

    cpu = {"num_workers": 1, "cpus_per_worker": 0.5, "use_gpu": False, "gpus_per_worker": 1.0}
    assert max_concurrent_trials({"CPU": 2.0}, cpu) == 1 and max_concurrent_trials({"CPU": 16.0}, cpu) == 10
    gpu = {**cpu, "use_gpu": True, "gpus_per_worker": 0.25}
    assert max_concurrent_trials({"CPU": 16.0, "GPU": 1.0}, gpu) == 4  # four trials share the GPU
    assert max_concurrent_trials({"CPU": 16.0, "GPU": 8.0}, {**gpu, "num_workers": 4, "gpus_per_worker": 1.0}) == 2


def test_a_resumed_sweep_refuses_dropped_trials_or_other_settings_and_takes_new_ones(tmp_path):
    from cgc_ray.experiments import runner
    from cgc_ray.train.config import TrainConfig

    sw, ch = runner.Sweep("s", str(tmp_path)), {"images": 8, "short_side": 64, "protocol": "resize"}
    specs = [runner.spec(sw, "a", {}, TrainConfig(), ch)]
    (tmp_path / "s").mkdir()
    stored = {"key": "a", "tags": {}, "train": specs[0].train, "ch": ch, "sweep": sw.uri,
              "code_version": "v0"}  # specs.json as earlier versions wrote it
    (tmp_path / "s" / "specs.json").write_text(json.dumps({"keys": ["a"], "specs": [stored]}))
    assert runner._check_same_trials(sw, specs) == []
    (tmp_path / "s" / "specs.json").write_text(json.dumps({"keys": ["a"], "specs": [
        {**stored, "train": {**stored["train"], "lam": None}}]}))  # --lam as versions before 13.4 stored it
    assert runner._check_same_trials(sw, specs) == []
    with pytest.raises(ValueError, match=r"other settings \(trial a: \['epochs'\]\)"):
        runner._check_same_trials(sw, [runner.spec(sw, "a", {}, TrainConfig(epochs=5), ch)])
    b = runner.spec(sw, "b", {}, TrainConfig(), ch)
    with pytest.raises(ValueError, match=r"the request gives no trials"):  # before Ray or storage is touched
        runner.run_sweep(sw, [], {})
    assert runner._check_same_trials(sw, [*specs, b]) == [b]  # a grid extended: b is new
    with pytest.raises(ValueError, match=r"started with trials this request leaves out \(1: \['a'\]\)"):
        runner._check_same_trials(sw, [b])
    del stored["code_version"]  # a specs.json of another layout: named, not a KeyError
    (tmp_path / "s" / "specs.json").write_text(json.dumps({"keys": ["a"], "specs": [stored]}))
    with pytest.raises(ValueError, match=r"s/specs.json holds a trial spec with fields \['ch', 'key', 'sweep', "
                                         r"'tags', 'train'\], not .*written by another version of cgc-ray"):
        runner._check_same_trials(sw, specs)


def test_miniature_trials_and_tables_from_literal_rows(tmp_path):
    """The miniature's grid as plain specs, and its tables from hand-written rows."""
    from cgc_ray.experiments import miniature, runner

    req = miniature.parse(["--seeds", "0,1", "--lam", "0.5,1.0", "--storage-path", str(tmp_path)])
    specs = miniature.trials(req, req.sweep)
    keys = sorted(s.key for s in specs)
    assert len(keys) == 2 * 2 * 4  # data sets x seeds x (baseline, CGC at 0.5 and 1.0, MSE at the preset 1.0)
    assert "embedded_context-cgc_mse-lam1-seed1" in keys and "embedded-baseline-lam0-seed0" in keys
    mse = next(s for s in specs if s.key == "embedded-cgc_mse-lam1-seed0")
    assert (mse.train["consistency"], mse.train["lam"], mse.train["explain_images"]) == ("mse", 1.0, 0)
    assert mse.ch == {"images": 1000, "short_side": 224, "protocol": "resize"}
    assert runner.max_concurrent_trials({"CPU": 2.0}, mse.train) == 1  # 2 x 0.45 + 1 + 0.01 fits 2 cores

    def row(method, lam, seed, top1, ch, loss):
        return {"dataset": "embedded", "method": method, "lam": lam, "preset_lam": 1.0, "seed": seed,
                "top1": top1, "ch": ch, "val_cgc_loss": loss}
    rows = [row("baseline", 0.0, 0, 90.0, 50.0, 3.0), row("baseline", 0.0, 1, 92.0, 54.0, 3.2),
            row("cgc", 1.0, 0, 89.0, 60.0, 2.0), row("cgc", 1.0, 1, 91.0, 66.0, 2.2),
            row("cgc", 0.5, 0, 93.0, 58.0, 2.5), row("cgc_mse", 1.0, 0, 88.0, 40.0, 2.9)]
    md = tables_md(miniature.table1(rows))
    assert "| embedded | Baseline | 91.00 ± 1.41 | 52.00 ± 2.83 | 3.10 ± 0.14 |" in md
    assert "| embedded | CGC | 90.00 ± 1.41 | 63.00 ± 4.24 | 2.10 ± 0.14 |" in md
    assert "| embedded | Δ CGC − baseline | -1.00 ± 0.00 | 11.00 ± 1.41 | -1.00 ± 0.00 |" in md
    assert "| embedded | MSE, no negatives | 88.00 ± n/a | 40.00 ± n/a |" in tables_md(miniature.table5(rows))
    md10 = tables_md(miniature.table10(rows))
    assert "| embedded | 0 | 91.00 ± 1.41 | 52.00 ± 2.83 |" in md10 and "| embedded | 0.5 | 93.00 ± n/a | 58.00 ± n/a |" in md10


def tables_md(table) -> str:
    return tables.to_markdown(table)


def test_a_no_argument_sweep_says_it_is_a_smoke_run():
    """Issue 12.4: a table of 1-epoch runs on the embedded set is labelled as
    what it is, from the stored rows' configs; runs that learn are not."""
    import lambda_sweep
    import miniature

    smoke = lambda_sweep.parse([]).base.to_dict()
    note = tables.smoke_note([smoke, smoke])
    assert note.startswith("Smoke run: 1 epoch at 64 px on the generated embedded set") and "miniature.py" in note
    assert tables.smoke_note([smoke, {**smoke, "epochs": 4}]) is None
    assert tables.smoke_note([miniature.parse([]).base.to_dict()]) is None
    assert tables.smoke_note([{**smoke, "dataset": "cub"}]) is None
    md = tables.to_markdown(tables.Table("T", ["a"], [[1]], note=note))
    assert md.endswith(f"| 1 |\n\n> {note}\n")
