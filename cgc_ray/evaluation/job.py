"""The evaluation job's driver: checkpoints x validation images -> the paper's
table (`Method | Top-1 | CH | CGC loss | IAUC`), results.json and Grad-CAM
figures. The request is `config.EvalConfig`; the checkpoints are loaded and
matched to the data set's classes in `checkpoints`; the per-image metrics are
`batch_metrics` (Ray-free), run by the Ray Data graph of `graph`; the tables
are `report`'s. This module only sequences them.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import uuid

import numpy as np
import pyarrow as pa
import ray
import torch

from ..data.embedded import DATASETS as EMBEDDED
from ..data.embedded import embedded_root
from ..data.indexers import load_or_build
from ..data.manifest import Manifest
from ..data.manifest import write as write_manifest
from ..data.pipeline import open_ledger
from ..data.storage import StorageOptions, read_bytes, write_bytes
from ..data.views import BadImage, decode_rgb
from ..train.cluster import connect
from . import figures, report
from .batch_metrics import boxes_array, predictions
from .checkpoints import Checkpoint, class_sets, method_labels, usable_checkpoints  # noqa: F401 (class_sets: API)
from .config import EvalConfig, EvalError, check, parse  # noqa: F401 (parse: jobs/evaluate.py)
from .content_heatmap import evaluating, geometry, preprocess
from .graph import ch_rows, result_batches, rows_table

log = logging.getLogger(__name__)


def rows_without_boxes(cfg: EvalConfig, table: pa.Table) -> dict:
    """Images CH cannot score (no box of their class in the annotation): an
    error naming them, or with --skip-bad their count and first few URIs."""
    boxes = table.column("boxes").to_pylist()
    missing = [u for u, b in zip(table.column("uri").to_pylist(), boxes) if not b]
    if "ch" in cfg.metrics and missing:
        if not cfg.skip_bad:
            raise EvalError(f"Content Heatmap needs boxes: {len(missing)} of {len(boxes)} images have no usable "
                            f"box for their class (none annotated, or none with area inside the image), e.g. "
                            f"{', '.join(missing[:3])}; pass --skip-bad to score CH on the others, or drop ch "
                            "from --metrics")
        print(f"skipped for CH: {len(missing)} images without a usable box, e.g. {missing[0]}", flush=True)
    return {"count": len(missing), "examples": missing[:20]}


def load_manifest(cfg: EvalConfig) -> tuple[Manifest, str]:
    """The manifest and where it is cached."""
    root = embedded_root(cfg.dataset, cfg.data) if cfg.dataset in EMBEDDED else cfg.data
    if not root:
        raise EvalError(f"--dataset {cfg.dataset} needs --data <root>")
    try:
        return load_or_build(cfg.dataset, root, cfg.split, cfg.manifest, cfg.storage())
    except ValueError as e:  # unknown data set kind, split, labels
        raise EvalError(str(e)) from e


def store_sizes(manifest: Manifest, uri: str, rows: pa.Table, storage: StorageOptions) -> None:
    """Image sizes that `ch_rows` read from headers, written into the cached
    manifest so that the next evaluation needs no header pass (best effort)."""
    height, width = manifest.table.column("height").to_pylist(), manifest.table.column("width").to_pylist()
    found = 0
    for i, h, w in zip(*(rows.column(c).to_pylist() for c in ("index", "height", "width"))):
        if h is not None and height[i] is None:
            height[i], width[i], found = h, w, found + 1
    if not found:
        return
    table = manifest.table
    for name, values in (("height", height), ("width", width)):
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.int32()))
    try:
        write_manifest(dataclasses.replace(manifest, table=table), uri, storage)
        log.info("stored %d image sizes in %s", found, uri)
    except OSError as e:
        log.warning("could not store image sizes in %s (%s)", uri, e)


def run(cfg: EvalConfig) -> dict:
    """Evaluate; write results.md/.csv/.json (and figures.png) under cfg.out; return the summary."""
    check(cfg)
    storage = cfg.storage()
    manifest, manifest_uri = load_manifest(cfg)
    table = rows_table(manifest, cfg.limit)
    if not table.num_rows:
        raise EvalError(f"no images to evaluate (--limit {cfg.limit})")
    no_boxes = rows_without_boxes(cfg, table)
    cfg, checkpoints, sets, skipped = usable_checkpoints(cfg, manifest, set(table.column("label").to_pylist()))
    metas = [ck.meta for ck in checkpoints]
    connect(cfg.ray_log_level)
    if cfg.use_gpu and ray.cluster_resources().get("GPU", 0) < 1:
        raise EvalError("--use-gpu, but the Ray cluster has no GPU")
    labels = method_labels(cfg, metas)
    print(f"evaluating {len(metas)} checkpoint(s) on {table.num_rows} {cfg.dataset} {cfg.split} images: "
          f"{', '.join(cfg.metrics)}", flush=True)

    ledger_name = f"cgc-eval-bad-images-{uuid.uuid4().hex[:8]}"
    ledger = open_ledger(ledger_name)
    totals = report.Totals(len(metas), cfg.batch_size)
    for batch in result_batches(cfg, table, sets, ledger_name):
        totals.add(batch)
    if "ch" in cfg.metrics and (rows := ch_rows(cfg, table)).num_rows:
        store_sizes(manifest, manifest_uri, rows, storage)
        for batch in result_batches(cfg, rows, sets, part="ch"):
            totals.add_columns(batch)
    bad = ray.get(ledger.summary.remote())
    ray.kill(ledger)

    names = write_figures(cfg, checkpoints, manifest, table, sets, labels) if cfg.figures or cfg.images else []
    summary = report.summarize(cfg, manifest, table.num_rows, metas, labels, totals, bad, names)
    summary["data"].update(skipped_checkpoints=skipped, ch_images_without_boxes=no_boxes["count"],
                           ch_without_boxes_examples=no_boxes["examples"],
                           boxes_reordered=manifest.notes.get("boxes_reordered", 0),
                           boxes_outside_image=manifest.notes.get("boxes_outside_image", 0))
    if "ch" in cfg.metrics and totals.no_usable_box:
        print(f"not scored for CH: {totals.no_usable_box} images whose boxes have no area inside the decoded "
              "image (ch_images_without_usable_box in results.json)", flush=True)
    files = report.write(cfg.out, summary, storage)
    for row in summary["results"]:
        print(f"{row['method']}: " + ", ".join(f"{m} {row[m]:.4f}" for m in report.METRICS if row[m] is not None))
    print(f"tables: {files['markdown']}, {files['csv']}, {files['json']}", flush=True)
    return summary


def write_figures(cfg, models: list[Checkpoint], manifest, table, sets, labels) -> list[str]:
    """figures.png under cfg.out: the chosen (or seeded random) images, one row each."""
    rows = figure_rows(cfg, manifest, table)
    storage = cfg.storage()
    cells = []
    for row in rows:
        try:
            image = np.array(decode_rgb(read_bytes(row["uri"], storage)))
        except (OSError, BadImage) as e:
            log.warning("figure: skipping unreadable image %s (%s)", row["uri"], e)
            continue
        boxes = boxes_array(row["boxes"])
        line = []
        for k, ck in enumerate(models):
            allowed = torch.zeros(1, len(ck.meta["classes"]), dtype=torch.bool)
            allowed[0, sets[k][row["label"]]] = True
            crop = preprocess(image, geometry(*image.shape[:2], "center_crop"))[None]
            with evaluating(ck.model), torch.no_grad():
                logits = ck.model(crop)
            target = int(predictions(logits, allowed)[2][0])
            view, heat, b = figures.heatmap_view(ck.model, image, boxes, target, layer=ck.layer,
                                                 protocol=cfg.ch_protocol, short_side=cfg.short_side)
            if not line:
                line.append(figures.panel(view, b, caption=f"label {manifest.classes[row['label']]}"))
            line.append(figures.panel(view, b, heat, caption=f"pred {ck.meta['classes'][int(logits.argmax())]}"))
        cells.append(line)
    if not cells:
        return []
    buf = io.BytesIO()
    figures.grid(cells, ["image", *labels]).save(buf, "PNG")
    write_bytes(report.out_uri(cfg.out, "figures.png"), buf.getvalue(), storage)
    return ["figures.png"]


def figure_rows(cfg: EvalConfig, manifest: Manifest, table: pa.Table) -> list[dict]:
    """Manifest rows of the figure: --images in the given order, else cfg.figures seeded random ones."""
    if cfg.images:
        uris = manifest.table.column("uri").to_pylist()
        picks = []
        for name in cfg.images:
            hits = [i for i, u in enumerate(uris) if u == name or u.endswith("/" + name.lstrip("/"))]
            if not hits:
                raise EvalError(f"--images {name}: not in the {cfg.dataset} {cfg.split} manifest")
            picks.append(hits[0])
        source = manifest.table
    else:
        n = min(cfg.figures, table.num_rows)
        picks = sorted(np.random.default_rng(cfg.seed).choice(table.num_rows, n, replace=False).tolist())
        source = table
    return [source.slice(i, 1).select(["uri", "label", "boxes"]).to_pylist()[0] for i in picks]
