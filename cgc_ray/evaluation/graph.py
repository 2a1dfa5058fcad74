"""The evaluation's Ray Data graph: two passes over the images, each a
pipeline (`preserve_order`):

    rows (from_arrow, blocks of `decode_batch` rows)
    -> decode_rows (CPU tasks): read + decode_rgb; unreadable images are
       dropped (and, in the first pass, recorded in a ledger actor)
    -> repartition(batch_size, strict=True): blocks of exactly `batch_size`
       consecutive decoded images (the last one may be shorter)
    -> BatchMetrics (first pass) or CHMetrics (second), an actor pool, one
       GPU each with --use-gpu: every checkpoint loaded once per actor;
       per-image results out
    -> the driver sums them up (report.Totals), one batch at a time.

1. "batches", in manifest order: top-1/top-5, the CGC loss and IAUC. The
   CGC-loss batches are fixed: the k-th batch holds decoded images
   32k .. 32k + 31 in manifest order (unreadable images skipped), the same on
   every run and for every checkpoint; the last, partial batch has no CGC loss
   (its images still count for the other metrics).
2. "ch", the images with boxes ordered by their CH input shape (`ch_rows`):
   the authors' protocol keeps each image's aspect ratio, and the core batches
   only images of one shape, so in manifest order a batch of 32 ImageNet
   images would run as a handful of small forwards; sorted, nearly every
   batch is one forward. Sizes come from the manifest (the VOC XML), else
   from the image headers. The images are read and decoded a second time.

Images travel at their original size (variable-shaped tensor columns). All
metric math is the Ray-free core's (`content_heatmap`, `insertion_auc`,
`heatmap_consistency`); this module only moves data.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray

from ..data.manifest import Manifest
from ..data.pipeline import DataSettings, fetch_decode, read_sizes
from ..data.storage import StorageOptions
from ..data.views import decode_rgb
from .batch_metrics import BatchMetrics, CHMetrics
from .config import EvalConfig
from .content_heatmap import geometry


def rows_table(manifest: Manifest, limit: int | None = None) -> pa.Table:
    """The manifest's rows to evaluate (the first `limit`), numbered in manifest order."""
    t = manifest.table.select(["uri", "label", "boxes", "width", "height"])
    t = t.slice(0, limit) if limit is not None else t
    return t.add_column(0, "index", pa.array(np.arange(t.num_rows, dtype=np.int64)))


def ch_rows(cfg: EvalConfig, table: pa.Table) -> pa.Table:
    """The CH pass's rows: those with boxes, ordered by the model input shape
    under the CH protocol, then by manifest order; images whose header cannot
    be read last (the decoding skips them). Sizes the manifest lacks are read
    from the image headers and filled in."""
    t = table.take([i for i, b in enumerate(table.column("boxes").to_pylist()) if b])
    if cfg.ch_protocol != "resize" or not t.num_rows:
        return t  # every input is the 224 centre crop
    sizes = image_sizes(cfg, t)
    for k, name in enumerate(("height", "width")):
        values = pa.array([s[k] if s else None for s in sizes], pa.int32())
        t = t.set_column(t.schema.get_field_index(name), name, values)
    shapes = [(1,) if s is None else (0, *geometry(*s, short_side=cfg.short_side).input_size) for s in sizes]
    return t.take(sorted(range(t.num_rows), key=shapes.__getitem__))  # stable


def image_sizes(cfg: EvalConfig, table: pa.Table) -> list[tuple[int, int] | None]:
    """(height, width) of each row: the manifest's, else read from the image
    header by Ray tasks (None: unreadable)."""
    sizes = [None if h is None or w is None else (h, w)
             for h, w in zip(table.column("height").to_pylist(), table.column("width").to_pylist())]
    if missing := [i for i, s in enumerate(sizes) if s is None]:
        print(f"reading the size of {len(missing)} images from their headers (not in the manifest)", flush=True)
        rows = table.take(missing).select(["uri"]).add_column(0, "row", pa.array(missing, pa.int64()))
        ds = ray.data.from_arrow(rows).map_batches(_header_sizes, batch_size=256, batch_format="numpy",
                                                   fn_kwargs={"storage": cfg.storage()})
        for r in ds.iter_rows():
            sizes[r["row"]] = (int(r["height"]), int(r["width"])) if r["height"] > 0 else None
    return sizes


def _header_sizes(batch: dict, storage: StorageOptions) -> dict:
    sizes = [s or (0, 0) for s in read_sizes(batch["uri"], DataSettings(storage=storage))]
    return {"row": batch["row"], "height": np.array([h for h, _ in sizes]), "width": np.array([w for _, w in sizes])}


def decode_rows(batch: dict, storage: StorageOptions, ledger: str | None, threads: int = 16):
    """Read and decode a batch of rows (CPU task); unreadable images are dropped
    and recorded. Yields nothing when no image of the batch could be read."""
    settings = DataSettings(storage=storage, ledger=ledger, read_threads=threads, max_bad_images=None)
    keep, images = fetch_decode(batch["uri"], settings, decode=_decode_array)
    if keep:
        yield {"index": np.asarray(batch["index"])[keep], "uri": np.asarray(batch["uri"], dtype=object)[keep],
               "label": np.asarray(batch["label"], dtype=np.int64)[keep],
               "boxes": [_box_list(batch["boxes"][i]) for i in keep], "image": images}


def _decode_array(data: bytes) -> np.ndarray:
    return np.asarray(decode_rgb(data))


def _box_list(value) -> list | None:
    return None if value is None else [[float(v) for v in box] for box in value]


def result_batches(cfg: EvalConfig, table: pa.Table, sets: list[list[list[int]]], ledger: str | None = None,
                   part: str = "batches"):
    """Per-image results of one pass (numpy batches, in `table` order), streamed."""
    ds = ray.data.from_arrow([table.slice(s, cfg.decode_batch) for s in range(0, table.num_rows, cfg.decode_batch)])
    ds.context.execution_options.preserve_order = True  # shared by the datasets derived from ds
    ds = (ds.map_batches(decode_rows, batch_size=cfg.decode_batch, batch_format="numpy",
                         fn_kwargs={"storage": cfg.storage(), "ledger": ledger})
          .repartition(target_num_rows_per_block=cfg.batch_size, strict=True)
          .map_batches(CHMetrics if part == "ch" else BatchMetrics, batch_size=cfg.batch_size, batch_format="numpy",
                       fn_constructor_kwargs={"cfg": cfg, "sets": sets},
                       compute=ray.data.ActorPoolStrategy(size=cfg.concurrency),
                       num_cpus=cfg.cpus_per_actor, num_gpus=1 if cfg.use_gpu else 0))
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")
