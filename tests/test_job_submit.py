"""The submission path for real: `ray start --head`, `ray job submit -- python
jobs/imagenet.py ...`, progress in the job log, training metrics on the node's
Prometheus endpoint, then `jobs/evaluate.py` on its checkpoint; and a Tune
job (`jobs/lambda_sweep.py`) the same way."""

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster  # a CLI-started head of its own

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A separate single-node cluster started with the CLI (stopped by killing
    its `ray start --block` process group, not `ray stop`, which would also
    stop the test session's cluster)."""
    ports = {k: free_port() for k in ("port", "dashboard", "metrics", "client", "agent", "agent_grpc", "runtime_env")}
    proc = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={ports['port']}", "--num-cpus=2",
         "--include-dashboard=true", f"--dashboard-port={ports['dashboard']}", "--dashboard-host=127.0.0.1",
         f"--metrics-export-port={ports['metrics']}", f"--ray-client-server-port={ports['client']}",
         # its own agent ports: the defaults (52365, ...) are taken by the test session's cluster
         f"--dashboard-agent-listen-port={ports['agent']}", f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
         f"--runtime-env-agent-port={ports['runtime_env']}",
         "--object-store-memory=300000000", f"--temp-dir={tmp_path_factory.mktemp('ray')}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard']}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("ray start --head did not come up: " + proc.stdout.read()[-2000:])
    yield address, ports["metrics"]
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _submit(address, entrypoint, tries=20):
    """`ray job submit`, retried while the new head's job agent is not up yet."""
    for _ in range(tries):
        proc = subprocess.run(["ray", "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
                               *entrypoint], capture_output=True, text=True, timeout=900)
        if "No available agent to submit job" not in proc.stdout + proc.stderr:
            return proc
        time.sleep(5)
    return proc


def _scrape_until_done(port, done, found):
    while not done.is_set():
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            found.update(re.findall(r"^(ray_cgc_\w+)\{", text, flags=re.M))
        except OSError:
            pass
        done.wait(2)


def test_ray_job_submit_runs_the_training_job(head, tmp_path):
    address, metrics_port = head
    done, found = threading.Event(), set()
    scraper = threading.Thread(target=_scrape_until_done, args=(metrics_port, done, found))
    scraper.start()
    try:
        proc = _submit(address, ["python", "jobs/imagenet.py", "--epochs", "1", "--image-size", "48",
                                 "--resize-size", "56", "--batch-size", "16", "--val-batches", "2",
                                 "--log-every-steps", "5", "--storage-path", str(tmp_path / "runs"),
                                 "--name", "submitted"])
    finally:
        done.set()
        scraper.join()
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert re.search(r"Job 'raysubmit_\w+' succeeded", log), log[-3000:]
    assert re.search(r"epoch 1/1 step 5/40 loss [\d.]+ \(ce [\d.]+ cgc [\d.]+\)", log), log[-3000:]
    assert "epoch 1/1 done: val top-1" in log
    assert (tmp_path / "runs" / "submitted" / "summary.json").exists()
    assert {"ray_cgc_images_per_second", "ray_cgc_loss", "ray_cgc_cgc_loss", "ray_cgc_learning_rate",
            "ray_cgc_data_wait_fraction"} <= found, sorted(found)

    # the evaluation job on that checkpoint, submitted the same way
    checkpoint = json.loads((tmp_path / "runs" / "submitted" / "summary.json").read_text())["checkpoint"]
    proc = _submit(address, ["python", "jobs/evaluate.py", "--checkpoint", checkpoint, "--limit", "8",
                             "--batch-size", "4", "--iauc-limit", "1", "--iauc-step", str(224 * 56),
                             "--short-side", "96", "--figures", "1", "--threads", "1", "--out", str(tmp_path / "eval")])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert re.search(r"Job 'raysubmit_\w+' succeeded", log), log[-3000:]
    row = r"official \(lambda 1\): top1 [\d.]+, top5 [\d.]+, ch [\d.]+, iauc [\d.]+, cgc [\d.]+"
    assert re.search(row, log), log[-3000:]
    assert {p.name for p in (tmp_path / "eval").iterdir()} == {"results.md", "results.csv", "results.json",
                                                               "figures.png"}


def test_ray_job_submit_runs_a_tune_sweep(head, tmp_path):
    """One tiny λ trial through Tune in the submitted job: the trial's training
    run, its CH pass and the table all happen on the CLI-started cluster."""
    address, _ = head
    proc = _submit(address, ["python", "jobs/lambda_sweep.py", "--lam", "0.5", "--train-per-class", "2",
                             "--image-size", "48", "--resize-size", "56", "--batch-size", "16", "--val-batches", "1",
                             "--val-batch-size", "16", "--ch-images", "4", "--ch-short-side", "64",
                             "--storage-path", str(tmp_path), "--name", "submitted-sweep"])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert re.search(r"Job 'raysubmit_\w+' succeeded", log), log[-3000:]
    assert "sweep " in log and "1 trials to run, up to" in log
    assert re.search(r"\| 0\.5 \| [^|]+ \| [^|]+ \|", log), log[-3000:]  # the Table 10 row, in the job log
    rows = (tmp_path / "submitted-sweep" / "results.jsonl").read_text().splitlines()
    assert len(rows) == 1 and '"lam": 0.5' in rows[0]
