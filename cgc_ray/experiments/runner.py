"""Sweeps on Ray Tune: one trial = one training run + its evaluation.

The trial function builds a TrainConfig from its spec and runs the training
service (`service.run`: a TorchTrainer started inside the Tune trial, Ray's
Train-in-Tune pattern), scores CH on validation images with boxes in a Ray
task that takes the resources the training just released, stores one JSON
row (tags, metrics, full config, seed, code version) and reports it with
`ray.tune.report`. The experiment math lives in the Ray-free modules
(`episodes`, `tables`, `evaluation.run_report`); this one only moves things around.

Under <storage_path>/<name>/ (a local path or s3://):

    tuner.pkl, experiment_state-*.json, trial-<key>/   Ray Tune's experiment
    runs/<key>/                     each trial's training run (checkpoints, summary.json)
    results/<key>.json              the trial's row
    attempts/<key>-<ns>.json        one per training started for the trial
    specs.json                      the sweep's trials: a re-run asks for the same (and may add more)
    results.jsonl, <table>.md/.csv  regenerated from results/ (alone with --table-only)

An interrupted sweep re-run with the same name and storage path resumes:
trials whose row is stored are not rerun; the unfinished and failed ones run
in a new Tune experiment under the same cap as a fresh sweep (not
`Tuner.restore`, which drops `max_concurrent_trials`), and their training
continues from its last checkpoint. A trial whose row is already stored
returns that row without training (a row written just before the driver died).

Resources: a trial holds a token CPU share (it only waits on its trainer);
the trainer's workers hold `cpus_per_worker` (and `gpus_per_worker`, a
fraction lets several small trials share a GPU) each. Unless given, the
number of concurrent trials is what the cluster's CPUs (a trial's workers
plus one CPU for its input tasks) and GPUs allow; on an autoscaling cluster
(--autoscaling) there is no cap: waiting trials are what makes it grow (Ray
Train retries a worker group that cannot start yet), so give
--max-concurrent-trials to match the cluster's largest size.

(Just over 300 lines on purpose: the trial, its stored row and the resume
rules are one contract with the storage layout above, read in one place.)
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import ray
from ray import tune

from ..data.indexers import child
from ..data.storage import StorageOptions, exists, list_dir, read_bytes, resolve, write_bytes
from ..evaluation.run_report import checkpoint_ch
from ..train import service
from ..train.cluster import connect
from ..train.config import DATA_CPUS, ConfigError, TrainConfig, check, comparable  # DATA_CPUS: trial input
from . import tables

TRIAL_CPUS = 0.01  # the trial process only drives its TorchTrainer


@dataclass(frozen=True)
class Sweep:
    name: str
    storage_path: str
    storage: StorageOptions = field(default_factory=StorageOptions)

    @property
    def uri(self) -> str:
        return child(self.storage_path, self.name)

    def path(self, *parts: str) -> str:
        return child(self.uri, *parts)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`git describe` of the checkout the code runs from, else the package version."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], capture_output=True, text=True,
                             timeout=10, cwd=Path(__file__).resolve().parent)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return "cgc-ray " + importlib.metadata.version("cgc-ray")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class TrialSpec:
    """One trial: a training run at <sweep>/runs/<key>, scored for CH with `ch`.

    key: the trial's name (unique in the sweep); tags: its table columns
    (method, lam, seed, ...); train: TrainConfig fields; ch: CH settings
    ({"images", "short_side", "protocol"}); sweep: the sweep's URI;
    code_version: `git describe` of the code that planned it. Stored as a
    plain dict in specs.json (and in Tune's param_space)."""
    key: str
    tags: dict
    train: dict
    ch: dict
    sweep: str
    code_version: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, stored: dict, where: str) -> TrialSpec:
        """The spec of a stored dict; ConfigError naming `where` if its fields are not this version's."""
        names = {f.name for f in dataclasses.fields(cls)}
        if set(stored) != names:
            raise ConfigError(f"{where} holds a trial spec with fields {sorted(stored)}, not {sorted(names)}: it was "
                              "written by another version of cgc-ray; re-run it with that version, or use another "
                              "--name")
        return cls(**stored)


def spec(sweep: Sweep, key: str, tags: dict, cfg: TrainConfig, ch: dict) -> TrialSpec:
    """One trial: its training run lives at <sweep>/runs/<key>. Raises
    ConfigError for a grid point that fails TrainConfig's checks or whose --data cannot be read."""
    # the trial scores CH with the sweep's settings (`_ch_task`), not the run's own end-of-run pass
    train = {**cfg.to_dict(), "name": key, "storage_path": sweep.path("runs"), "explain_images": 0}
    check(TrainConfig.from_dict(train))  # a bad grid point fails before anything starts
    if cfg.data and not _readable(cfg.data, _storage(cfg)):
        raise ConfigError(f"--data {cfg.data} does not exist or cannot be read")
    return TrialSpec(key=key, tags=tags, train=train, ch=ch, sweep=sweep.uri, code_version=code_version())


# --- inside a Tune trial -------------------------------------------------------------------------

def trial(config: dict) -> None:
    """The Tune function trainable; config["spec"]: a TrialSpec as a dict."""
    spec = TrialSpec(**config["spec"])
    cfg = TrainConfig.from_dict(spec.train)
    storage = _storage(cfg)
    row_uri = child(spec.sweep, "results", f"{spec.key}.json")
    if exists(row_uri, storage):
        row = json.loads(read_bytes(row_uri, storage))
    else:
        row = _train_and_evaluate(spec, cfg, storage)
        write_bytes(row_uri, json.dumps(row, indent=1).encode(), storage)
    tune.report({k: row[k] for k in ("top1", "top5", "val_cgc_loss", "ch", "key")})


def _train_and_evaluate(spec: TrialSpec, cfg: TrainConfig, storage: StorageOptions) -> dict:
    started = time.time()
    trial_id = tune.get_context().get_trial_id()
    write_bytes(child(spec.sweep, "attempts", f"{spec.key}-{time.time_ns()}.json"),
                json.dumps({"key": spec.key, "trial_id": trial_id, "started": started}).encode(), storage)
    summary = service.run(cfg)
    ch = ray.get(_ch_task.options(**_eval_resources(cfg)).remote(
        summary["checkpoint"], summary["val_manifest"], storage, spec.ch))
    return {**spec.tags, "key": spec.key, "sweep": spec.sweep, "seed": cfg.seed,
            "top1": summary["val_top1"], "top5": summary["val_top5"], "val_cgc_loss": summary["val_cgc_loss"],
            **ch, "ch_settings": spec.ch, "code_version": spec.code_version, "trial_id": trial_id,
            "started": started, "finished": time.time(), "config": cfg.to_dict(), "summary": summary}


@ray.remote
def _ch_task(checkpoint: str, manifest: str, storage: StorageOptions, settings: dict) -> dict:
    return checkpoint_ch(checkpoint, manifest, limit=settings["images"], short_side=settings["short_side"],
                         protocol=settings["protocol"], storage=storage)


def _eval_resources(cfg: TrainConfig) -> dict:
    """One worker's share; "DEFAULT" scheduling: outside the trial's tiny placement group."""
    return {"num_cpus": cfg.cpus_per_worker, "num_gpus": cfg.gpus_per_worker if cfg.use_gpu else 0,
            "scheduling_strategy": "DEFAULT"}


@functools.lru_cache(maxsize=64)
def _readable(uri: str, storage: StorageOptions) -> bool:
    try:
        return exists(uri, storage)
    except OSError:
        return False


def _storage(cfg: TrainConfig) -> StorageOptions:
    return StorageOptions(endpoint_url=cfg.s3_endpoint, region=cfg.s3_region)


# --- the driver ----------------------------------------------------------------------------------

def run_sweep(sweep: Sweep, specs: list[TrialSpec], layouts: dict[str, Callable], *, table_only: bool = False,
              max_concurrent: int | None = None, setup: Sequence[Callable[[], None]] = ()) -> int:
    """Runs (or resumes) the sweep, then writes its tables; returns the number
    of failed trials. `setup`: work the trials need (a source model), done
    once the request has been checked against a stored sweep and only if a trial is left to run."""
    if not specs and not table_only:
        raise ConfigError(f"sweep {sweep.uri}: the request gives no trials (an empty grid, seed or method list?)")
    failed = [] if table_only else _tune(sweep, specs, max_concurrent, setup)
    rows = load_rows(sweep)
    if not rows:
        print(f"no results stored under {sweep.path('results')}", flush=True)
    else:
        write_tables(sweep, rows, layouts)
    for error in failed:
        print(f"trial failed: {error}", flush=True)
    return len(failed) or (0 if rows else 1)  # a sweep with nothing stored has not succeeded


def _tune(sweep: Sweep, specs: list[TrialSpec], max_concurrent: int | None, setup=()) -> list:
    connect(specs[0].train["ray_log_level"])  # as the training job does
    fs, root = resolve(sweep.storage_path, sweep.storage)
    concurrent = max_concurrent or _fitting_now(specs[0].train)  # refused before specs.json is written
    pending = _pending(sweep, specs)
    if not pending:
        return []
    for step in setup:
        step()
    print(f"sweep {sweep.uri}: {len(pending)} trials to run, up to {concurrent or 'all'} at a time", flush=True)
    tuner = tune.Tuner(
        tune.with_resources(trial, {"cpu": TRIAL_CPUS}),
        param_space={"spec": tune.grid_search([p.to_dict() for p in pending])},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, trial_dirname_creator=_trial_dir),
        run_config=tune.RunConfig(name=sweep.name, storage_path=root, storage_filesystem=fs, verbose=1))
    return [r.error for r in tuner.fit() if r.error]


def _pending(sweep: Sweep, specs: list[TrialSpec]) -> list[TrialSpec]:
    """The trials without a stored row. A sweep seen before (its specs.json)
    must ask for its trials with the same settings, and may add new ones (a
    grid extended: another method, λ or seed); its finished ones are kept.
    Resuming runs a new Tune experiment over the others, with the cap and
    resources of a fresh one (`Tuner.restore` would lose the concurrency cap),
    and each trial's training continues from its last checkpoint under
    <sweep>/runs/<key>."""
    if not exists(sweep.path("specs.json"), sweep.storage):
        _write_specs(sweep, specs)
        return specs
    added = _check_same_trials(sweep, specs)
    if added:
        _write_specs(sweep, specs)
        print(f"extending sweep {sweep.uri} with {len(added)} new trials: {', '.join(s.key for s in added)}",
              flush=True)
    done = {r["key"] for r in load_rows(sweep)}
    pending = [s for s in specs if s.key not in done]
    print(f"resuming sweep {sweep.uri}: {len(done)} of {len(specs)} trials finished and kept", flush=True)
    return pending


def _write_specs(sweep: Sweep, specs: list[TrialSpec]) -> None:
    body = {"keys": [s.key for s in specs], "specs": [s.to_dict() for s in specs]}
    write_bytes(sweep.path("specs.json"), json.dumps(body, indent=1).encode(), sweep.storage)


def _trial_dir(t) -> str:
    return f"trial-{t.config['spec']['key']}"  # Tune's config holds the spec as a dict


def _check_same_trials(sweep: Sweep, specs: list[TrialSpec]) -> list[TrialSpec]:
    """A restored sweep runs the trials it was started with, and may add
    others: refuse a request that leaves a stored trial out or changes its
    settings. Returns the requested trials specs.json does not hold yet."""
    where = sweep.path("specs.json")
    stored = [TrialSpec.from_dict(d, where) for d in json.loads(read_bytes(where, sweep.storage))["specs"]]
    stored = {s.key: s for s in stored}
    if missing := sorted(set(stored) - {s.key for s in specs}):
        raise ConfigError(f"sweep {sweep.uri} was started with trials this request leaves out ({len(missing)}: "
                          f"{missing[:4]}{'...' if len(missing) > 4 else ''}); re-run it with the same grid (new "
                          "trials may be added), or use another --name")
    for s in specs:
        old = stored.get(s.key)
        # an option TrainConfig gained (or lost) since the sweep started is not a change of its settings
        was = comparable(old.train) if old else {}
        changed = sorted(k for k in was if s.train.get(k) != was[k])
        if old and (changed or s.ch != old.ch):
            raise ConfigError(f"sweep {sweep.uri} was started with other settings (trial {s.key}: "
                              f"{changed or 'CH settings'}); re-run it with the same options, or use another --name")
    return [s for s in specs if s.key not in stored]


def _fitting_now(train: dict) -> int | None:
    """What the cluster's resources allow now; None (no cap) on an autoscaling
    cluster, whose trials' waiting trainers make it add nodes."""
    if train["autoscaling"]:
        print("--autoscaling: every trial starts and waits for its resources; bound them with "
              "--max-concurrent-trials", flush=True)
        return None
    return max_concurrent_trials(ray.cluster_resources(), train)


def max_concurrent_trials(resources: dict, train: dict) -> int:
    """Trials that fit at once: each needs its workers' CPUs plus one for its
    input tasks (and its workers' GPU shares)."""
    need = {"CPU": TRIAL_CPUS + DATA_CPUS + train["num_workers"] * train["cpus_per_worker"]}
    if train["use_gpu"]:
        need["GPU"] = train["num_workers"] * train["gpus_per_worker"]
    fit = int(min(resources.get(k, 0.0) // v for k, v in need.items()))
    if fit < 1:
        raise ConfigError(f"one trial needs {need} (its workers, a CPU for its input pipeline and {TRIAL_CPUS} "
                          f"for the trial itself); the cluster has {dict(resources)}: lower --num-workers or "
                          "--cpus-per-worker, or pass --autoscaling on a cluster that grows")
    return fit


def load_rows(sweep: Sweep) -> list[dict]:
    try:
        files = [i.path for i in list_dir(sweep.path("results"), sweep.storage) if i.path.endswith(".json")]
    except (FileNotFoundError, OSError):
        return []
    scheme = sweep.uri.split("://")[0] + "://" if "://" in sweep.uri else ""
    return sorted((json.loads(read_bytes(scheme + f, sweep.storage)) for f in files), key=lambda r: r["key"])


def write_tables(sweep: Sweep, rows: list[dict], layouts: dict[str, Callable]) -> None:
    """results.jsonl and each layout as <name>.md and <name>.csv, from the
    stored rows only (a smoke run's tables say so: `tables.smoke_note`)."""
    note = tables.smoke_note([r["config"] for r in rows])
    write_bytes(sweep.path("results.jsonl"), "".join(json.dumps(r) + "\n" for r in rows).encode(), sweep.storage)
    for name, layout in layouts.items():
        table = layout(rows)
        table.note = note or table.note
        write_bytes(sweep.path(f"{name}.md"), tables.to_markdown(table).encode(), sweep.storage)
        write_bytes(sweep.path(f"{name}.csv"), tables.to_csv(table).encode(), sweep.storage)
        print(f"\n{tables.to_markdown(table)}\n-> {sweep.path(name + '.md')} (.csv)", flush=True)
