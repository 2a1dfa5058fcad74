"""The evaluation's tables (Ray-free): running totals of the per-image results,
and the paper's layout `Method | Top-1 | CH | CGC loss | IAUC` as Markdown
and CSV, with the protocol written next to the numbers (a Markdown section and
a JSON sidecar holding every setting and count).

Units: Top-1, Top-5 and CH in percent; CGC loss the mean over batches of the
per-batch InfoNCE loss; IAUC the area under the insertion curve, in [0, 1].
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict

import numpy as np

from ..data.storage import StorageOptions, write_bytes

METRICS = ("top1", "top5", "ch", "iauc", "cgc")
COLUMNS = ("Method", "Top-1", "CH", "CGC loss", "IAUC")
UNITS = {"top1": "percent", "top5": "percent", "ch": "percent", "cgc": "mean per-batch loss",
         "iauc": "area in [0, 1]"}


class Totals:
    """Sums and counts of the per-image result columns `<metric>_<k>` (NaN: not
    computed), so the driver holds a few numbers whatever the image count.

    The first pass's batches must come in order; a CGC loss must sit on the
    first row of a batch of `batch_size` (rows 0, B, 2B, ... of the stream),
    else `add` fails: the fixed batches were not formed.
    """

    def __init__(self, models: int, batch_size: int = 32):
        self.models, self.batch_size = models, batch_size
        self.sums = np.zeros((models, len(METRICS)))
        self.counts = np.zeros((models, len(METRICS)), dtype=np.int64)
        self.images = self.with_boxes = self.clamped = self.no_usable_box = 0

    def add(self, batch: dict) -> None:
        position = self.images + np.arange(len(batch["index"]))
        for k in range(self.models):
            if (position[~np.isnan(batch[f"cgc_{k}"])] % self.batch_size).any():
                raise RuntimeError(f"a CGC loss off the batch grid (batch size {self.batch_size}): "
                                   "the pipeline did not keep its fixed batches")
        self.images += len(batch["index"])
        self.with_boxes += int(np.sum(batch["has_boxes"]))
        self.clamped += int(np.sum(batch["clamped"]))
        self.no_usable_box += int(np.sum(batch.get("no_usable_box", 0)))
        self.add_columns(batch)

    def add_columns(self, batch: dict) -> None:
        """The metric columns of a batch whose images `add` counted already
        (the CH pass); metrics without a column are left as they are."""
        for k in range(self.models):
            for j, m in enumerate(METRICS):
                if f"{m}_{k}" not in batch:
                    continue
                v = np.asarray(batch[f"{m}_{k}"], dtype=np.float64)
                ok = ~np.isnan(v)
                self.sums[k, j] += v[ok].sum()
                self.counts[k, j] += int(ok.sum())

    def mean(self, k: int, metric: str) -> float | None:
        j = METRICS.index(metric)
        if not self.counts[k, j]:
            return None
        scale = 1.0 if metric in ("cgc", "iauc") else 100.0
        return scale * float(self.sums[k, j] / self.counts[k, j])

    def count(self, k: int, metric: str) -> int:
        return int(self.counts[k, METRICS.index(metric)])


def results(totals: Totals, labels: list[str]) -> list[dict]:
    """One dict per checkpoint: the means and how many images/batches each has."""
    return [{"method": label, **{m: totals.mean(k, m) for m in METRICS},
             "counts": {m: totals.count(k, m) for m in METRICS}} for k, label in enumerate(labels)]


def summarize(cfg, manifest, rows: int, metas: list[dict], labels: list[str], totals: Totals, bad: dict,
              figure_names: list[str]) -> dict:
    """The JSON sidecar: results, counts, every setting (cfg: the job's EvalConfig), the protocol in words."""
    full = totals.images // cfg.batch_size
    return {
        "results": results(totals, labels),
        "data": {"dataset": cfg.dataset, "split": cfg.split, "root": manifest.root, "manifest_rows": len(manifest),
                 "rows_evaluated": rows, "images": totals.images, "skipped_images": bad["skipped_images"],
                 "skipped_examples": bad["examples"], "images_with_boxes": totals.with_boxes,
                 "clamped_boxes": totals.clamped,
                 "ch_images_without_usable_box": totals.no_usable_box if "ch" in cfg.metrics else None,
                 "cgc_batches": full,
                 "cgc_images_dropped": totals.images - full * cfg.batch_size},
        "checkpoints": [{"label": lab, "uri": uri, "meta": {k: v for k, v in m.items() if k != "classes"},
                         "classes": len(m["classes"])} for lab, uri, m in zip(labels, cfg.checkpoints, metas)],
        "settings": asdict(cfg), "units": UNITS, "figures": figure_names,
        "protocol": protocol_text(cfg, totals, bad["skipped_images"]),
    }


def protocol_text(cfg, totals: Totals, skipped: int) -> dict[str, str]:
    """Each metric's protocol in words, with the settings and counts of this run."""
    ch = (f"resize to short side {cfg.short_side} (no crop), Grad-CAM at the checkpoint's layer, map "
          "normalised (+1e-8) and upsampled bilinearly to the original image, mass inside the union of the "
          "class's boxes" if cfg.ch_protocol == "resize" else
          "resize 256 + centre crop 224, boxes mapped into the crop and clipped, CH on the 224 map")
    gt = ("the allowed ImageNet class scored highest on the centre crop (UnRel)" if cfg.dataset == "unrel"
          else "the ground-truth class")
    text = {
        "data": f"{cfg.dataset} {cfg.split}: {totals.images} images evaluated"
                + (f" (first {cfg.limit} manifest rows)" if cfg.limit is not None else "")
                + f", {skipped} unreadable images skipped",
        "Top-1": "resize 256 (short side, bilinear, antialias) + centre crop 224, ImageNet mean/std, eval mode"
                 + ("; correct if the prediction is in the category's ImageNet class set" if cfg.dataset == "unrel"
                    else ""),
        "CH": f"protocol {cfg.ch_protocol}: {ch}; Grad-CAM of {gt}; eval mode; {totals.with_boxes} images "
              f"with boxes, {totals.clamped} boxes clamped to their image (counted), "
              f"{totals.no_usable_box} images whose boxes have no area inside the image not scored",
        "IAUC": f"RISE insertion: image squashed to 224x224, blur kernel 11 / sigma 5, {cfg.iauc_step} pixels "
                f"per step ({-(-224 * 224 // cfg.iauc_step) + 1} canvases), Grad-CAM of {gt} upsampled "
                "bilinearly, score = softmax probability of the class predicted on the clean image; maps in "
                + (f"BatchNorm train mode, batches of {cfg.batch_size} (the authors')" if cfg.iauc_bn_train
                   else "eval mode")
                + (f"; first {cfg.iauc_limit} rows only" if cfg.iauc_limit is not None else ""),
        "CGC loss": f"batches of {cfg.batch_size} consecutive decoded images in manifest order (last partial "
                    f"batch dropped: {totals.images % cfg.batch_size} images); query = centre crop 224, "
                    f"positive = T(query) with T = RandomResizedCrop(0.08-1, 3/4-4/3) + flip p=0.5 drawn per "
                    f"image from (seed {cfg.seed}, crc32(uri)), negatives = the other {cfg.batch_size - 1}; "
                    "InfoNCE, official arrangement, tau from meta.json; eval mode; mean over batches",
    }
    skip = {k for k, m in (("Top-1", "top1"), ("CH", "ch"), ("IAUC", "iauc"), ("CGC loss", "cgc"))
            if m not in cfg.metrics}
    return {k: "not computed" if k in skip else v for k, v in text.items()}


def _fmt(value: float | None, digits: int, empty: str) -> str:
    return empty if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _cells(row: dict, empty: str) -> list[str]:
    return [row["method"], _fmt(row["top1"], 2, empty), _fmt(row["ch"], 2, empty),
            _fmt(row["cgc"], 4, empty), _fmt(row["iauc"], 4, empty)]


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(_cells(r, "") for r in rows)
    return buf.getvalue()


def markdown(summary: dict) -> str:
    """The table, its units, the protocol and the checkpoints, as Markdown."""
    lines = [f"# Evaluation: {summary['data']['dataset']} {summary['data']['split']}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r, "—")) + " |" for r in summary["results"]]
    lines += ["", "Top-1 and CH in percent; CGC loss: mean over batches of the per-batch loss; "
              "IAUC: area under the insertion curve in [0, 1]; —: not computed.", "", "## Protocol", ""]
    lines += [f"- **{name}**: {text}" for name, text in summary["protocol"].items()]
    lines += ["", "## Checkpoints", "", "| Method | checkpoint | arch | recipe | lambda | tau | epoch |",
              "|---|---|---|---|---|---|---|"]
    for c in summary["checkpoints"]:
        m = c["meta"]
        lines.append(f"| {c['label']} | {c['uri']} | {m.get('arch')} | {m.get('recipe')} | {m.get('lam')} | "
                     f"{m.get('tau')} | {m.get('epoch')} |")
    if summary.get("figures"):
        lines += ["", "## Figures", ""] + [f"![Grad-CAM]({name})" for name in summary["figures"]]
    return "\n".join(lines) + "\n"


def out_uri(out: str, name: str) -> str:
    return f"{out.rstrip('/')}/{name}"


def write(out: str, summary: dict, storage: StorageOptions = StorageOptions()) -> dict[str, str]:
    """results.md, results.csv and results.json under `out` (a folder or s3:// prefix)."""
    files = {"markdown": out_uri(out, "results.md"), "csv": out_uri(out, "results.csv"),
             "json": out_uri(out, "results.json")}
    write_bytes(files["markdown"], markdown(summary).encode(), storage)
    write_bytes(files["csv"], csv_text(summary["results"]).encode(), storage)
    write_bytes(files["json"], json.dumps(summary, indent=1, default=str).encode(), storage)
    return files
