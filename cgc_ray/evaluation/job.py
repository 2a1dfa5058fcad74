"""The evaluation job: checkpoints x validation images -> the paper's table
(`Method | Top-1 | CH | CGC loss | IAUC`) and Grad-CAM figures.

Two passes over the images, each a Ray Data pipeline (`preserve_order`):

    rows (from_arrow, blocks of `decode_batch` rows)
    -> decode_rows (CPU tasks): read + decode_rgb; unreadable images are
       dropped (and, in the first pass, recorded in a ledger actor)
    -> repartition(batch_size, strict=True): blocks of exactly `batch_size`
       consecutive decoded images (the last one may be shorter)
    -> BatchMetrics (actor pool, one GPU each with --use-gpu): every
       checkpoint loaded once per actor; per-image results out
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

import argparse
import dataclasses
import io
import logging
import os
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
import torch
from torch import nn

from ..data.embedded import DATASETS as EMBEDDED
from ..data.embedded import embedded_root
from ..data.indexers import default_dataset, load_or_build, unrel
from ..data.manifest import Manifest
from ..data.manifest import write as write_manifest
from ..data.pipeline import DataSettings, fetch_decode, open_ledger, read_sizes
from ..data.storage import StorageOptions, read_bytes, write_bytes
from ..data.views import BadImage, decode_rgb, val_transform
from ..errors import UserError
from ..objective import CGCConfig, heatmap_consistency
from ..train.checkpoint import load_model
from ..train.config import absolute_paths
from ..transforms import crop_resize_flip
from . import figures, report
from .content_heatmap import cam_net, clamp_boxes, content_heatmap, evaluating, geometry, preprocess, usable
from .insertion import STEP, insertion_auc

log = logging.getLogger(__name__)
METRICS = ("top1", "ch", "iauc", "cgc")
CH_PROTOCOLS = ("resize", "center_crop")


class EvalError(UserError):
    """A request the job cannot run (bad flag, unusable checkpoint)."""


@dataclass(frozen=True)
class EvalConfig:
    checkpoints: tuple[str, ...]
    labels: tuple[str, ...] = ()
    dataset: str = "embedded"            # embedded, imagenet, unrel, or any indexer
    data: str | None = None              # root of the raw data; None: the embedded set
    split: str = "val"
    manifest: str | None = None          # where the manifest is cached (default: next to the data)
    out: str = "eval"                    # folder or s3:// prefix for the tables and figures
    metrics: tuple[str, ...] = METRICS
    ch_protocol: str = "resize"          # the authors' (short side 448, whole image) or center_crop
    short_side: int = 448
    iauc_limit: int | None = None        # IAUC on the first N manifest rows only (it costs 29 forwards)
    iauc_bn_train: bool = False          # the authors' maps: BatchNorm in train mode, per batch
    iauc_step: int = STEP                # pixels inserted per step (RISE: 224 * 8, 29 canvases)
    iauc_max_batch: int = 1024           # canvases per forward (a batch of 32 images makes 928)
    limit: int | None = None             # the first N manifest rows
    figures: int = 4                     # images in the figure (0: none)
    images: tuple[str, ...] = ()         # figure images (URIs, or names they end with); else random
    seed: int = 0                        # T of the CGC loss (per image) and the random figure images
    batch_size: int = 32                 # images per metric batch = CGC-loss batch (31 negatives)
    decode_batch: int = 32
    concurrency: int = 1                 # metric actors
    use_gpu: bool = False
    cpus_per_actor: float = 1.0
    threads: int | None = None           # torch threads per actor (default: its CPUs)
    skip_bad: bool = False               # skip unusable checkpoints and (for CH) images without boxes
    s3_endpoint: str | None = None
    s3_region: str | None = None

    def storage(self) -> StorageOptions:
        return StorageOptions(endpoint_url=self.s3_endpoint, region=self.s3_region)


def check(cfg: EvalConfig) -> None:
    if not cfg.checkpoints:
        raise EvalError("give at least one --checkpoint")
    if cfg.labels and len(cfg.labels) != len(cfg.checkpoints):
        raise EvalError(f"{len(cfg.labels)} --label for {len(cfg.checkpoints)} --checkpoint")
    if unknown := set(cfg.metrics) - set(METRICS):
        raise EvalError(f"unknown metrics {sorted(unknown)}; known: {','.join(METRICS)}")
    if cfg.ch_protocol not in CH_PROTOCOLS:
        raise EvalError(f"--ch-protocol must be one of {CH_PROTOCOLS}, got {cfg.ch_protocol!r}")
    if cfg.iauc_max_batch < 1:
        raise EvalError(f"--iauc-max-batch must be >= 1, got {cfg.iauc_max_batch}")
    if "cgc" in cfg.metrics and cfg.batch_size < 2:
        raise EvalError("the CGC loss needs --batch-size >= 2 (the other images are the negatives)")


# ---------------------------------------------------------------- checkpoints (Ray-free)

@dataclass
class Checkpoint:
    uri: str
    meta: dict
    model: nn.Module

    @property
    def layer(self) -> str:
        return self.meta.get("layer", "layer4")


def load_checkpoint(uri: str, storage: StorageOptions = StorageOptions(), device="cpu") -> Checkpoint:
    """A training checkpoint (state.pt + meta.json, local or s3://) as an eval-mode model."""
    try:
        model, meta = load_model(uri, storage)
    except OSError as e:
        raise EvalError(f"--checkpoint {uri}: cannot read the checkpoint ({e})") from e
    except (KeyError, ValueError, RuntimeError) as e:  # meta.json and state.pt disagree, or are not ours
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EvalError(f"--checkpoint {uri}: state.pt does not fit its meta.json ({first})") from e
    return Checkpoint(uri, meta, model.to(device).eval())


def usable_checkpoints(cfg: EvalConfig, manifest: Manifest, present: set[int]):
    """The checkpoints that can be evaluated on these images: (cfg narrowed to
    them, them loaded, their class sets, the skipped ones with the reason).
    A bad checkpoint is an error, or with --skip-bad a warning."""
    kept, loaded, sets, skipped = [], [], [], []
    for k, uri in enumerate(cfg.checkpoints):
        try:
            ck = load_checkpoint(uri, cfg.storage())
            try:
                sets.append(class_sets(cfg.dataset, manifest.classes, ck.meta["classes"], present))
            except EvalError as e:
                raise EvalError(f"--checkpoint {uri}: {e}") from e
        except EvalError as e:
            if not cfg.skip_bad:
                raise
            log.warning("skipping %s", e)
            print(f"skipped: {e}", flush=True)
            skipped.append({"checkpoint": uri, "reason": str(e)})
            continue
        kept.append(k)
        loaded.append(ck)
    if not kept:
        raise EvalError("no --checkpoint can be evaluated: " + "; ".join(s["reason"] for s in skipped))
    narrowed = dataclasses.replace(cfg, checkpoints=tuple(cfg.checkpoints[k] for k in kept),
                                   labels=tuple(cfg.labels[k] for k in kept) if cfg.labels else ())
    return narrowed, loaded, sets, skipped


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


def class_sets(dataset: str, data_classes: list[str], model_classes: list[str], labels=None) -> list[list[int]]:
    """Per data-set class, the model classes that count as that class; every
    class in `labels` (indices; default: all) must have at least one."""
    needed = None if labels is None else {data_classes[i] for i in labels}
    if dataset == "unrel":
        try:
            return unrel.class_sets(data_classes, model_classes, needed)
        except ValueError as e:
            raise EvalError(str(e)) from e
    index = {c: i for i, c in enumerate(model_classes)}
    if missing := [c for c in data_classes if c not in index and (needed is None or c in needed)]:
        raise EvalError(f"the checkpoint's classes lack {len(missing)} of the data set's, e.g. {missing[:3]}")
    return [[index[c]] if c in index else [] for c in data_classes]


def default_label(meta: dict) -> str:
    """"baseline", or the recipe and its lambda: "official (lambda 1)"."""
    recipe, lam = meta.get("recipe", "?"), meta.get("lam")
    if recipe == "baseline" or not isinstance(lam, (int, float)):
        return str(recipe)
    return f"{recipe} (lambda {lam:g})"


def method_labels(cfg: EvalConfig, metas: list[dict]) -> list[str]:
    labels = list(cfg.labels) or [default_label(m) for m in metas]
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label} #{seen[label]}"
    return labels


# ---------------------------------------------------------------- per-batch metrics (Ray-free)

def _boxes(value) -> np.ndarray | None:
    """A row's boxes as a float (n, 4) array; None where it has none."""
    if value is None or len(value) == 0:
        return None
    return np.stack([np.asarray(b, dtype=np.float64) for b in value]).reshape(-1, 4)


def predictions(logits: torch.Tensor, allowed: torch.Tensor):
    """Top-1 and top-5 hits (B,) and the Grad-CAM class (B,): the allowed class
    scored highest (the label itself where one class is allowed); allowed: (B, C) bool."""
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    top1 = allowed.gather(1, logits.argmax(1, keepdim=True))[:, 0]
    target = logits.masked_fill(~allowed, float("-inf")).argmax(1)
    return top1, allowed.gather(1, top5).any(1), target


class BatchMetrics:
    """Per-image metrics of one batch under every checkpoint (Ray-free): the
    callable class of the metric actors, so each loads the checkpoints once.

    part "batches" returns columns index, uri, label, has_boxes, no_usable_box, clamped and,
    per checkpoint k, top1_k, top5_k (0/1), iauc_k, cgc_k (NaN: not computed;
    cgc_k holds the batch's loss in its first row, and only for a full batch);
    part "ch" (images with boxes) returns index and ch_k.
    """

    def __init__(self, cfg: EvalConfig, sets: list[list[list[int]]], device: str | None = None,
                 part: str = "batches"):
        self.cfg, self.part = cfg, part
        self.device = torch.device(device or ("cuda" if cfg.use_gpu else "cpu"))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.models = [load_checkpoint(uri, cfg.storage(), self.device) for uri in cfg.checkpoints]
        self.allowed = []
        for ck, per_class in zip(self.models, sets):
            mask = torch.zeros(len(per_class), len(ck.meta["classes"]), dtype=torch.bool)
            for label, members in enumerate(per_class):
                mask[label, members] = True
            self.allowed.append(mask.to(self.device))

    def __call__(self, batch: dict) -> dict:
        images = [np.array(im) for im in batch["image"]]
        boxes = [_boxes(b) for b in batch["boxes"]]
        labels = torch.tensor(np.asarray(batch["label"]), dtype=torch.long, device=self.device)
        if self.part == "ch":
            return {"index": np.asarray(batch["index"]),
                    **{f"ch_{k}": self._ch(ck, self.allowed[k][labels], images, boxes)
                       for k, ck in enumerate(self.models)}}
        out = {"index": np.asarray(batch["index"]), "uri": np.asarray(batch["uri"]),
               "label": np.asarray(batch["label"]), "has_boxes": np.array([b is not None for b in boxes]),
               "no_usable_box": np.array([b is not None and not usable(b, *im.shape[:2])
                                          for b, im in zip(boxes, images)]),
               "clamped": np.array([0 if b is None else clamp_boxes(b, *im.shape[:2])[1]
                                    for b, im in zip(boxes, images)])}
        crops = self._crops(images)
        for k, ck in enumerate(self.models):
            for name, values in self._one(ck, self.allowed[k][labels], images, crops, out["index"], out["uri"]).items():
                out[f"{name}_{k}"] = values
        return out

    def _crops(self, images) -> torch.Tensor:
        return torch.stack([preprocess(im, geometry(*im.shape[:2], "center_crop"), self.device) for im in images])

    def _one(self, ck: Checkpoint, allowed, images, crops, index, uris) -> dict[str, np.ndarray]:
        """The metric columns of one checkpoint; allowed: (B, C) the classes that count per row."""
        cfg, n = self.cfg, len(images)
        res = {m: np.full(n, np.nan) for m in report.METRICS if m != "ch"}
        logits = None
        if "cgc" in cfg.metrics and n == cfg.batch_size:
            res["cgc"][0], logits = self._cgc(ck, crops, uris)
        if logits is None:
            with evaluating(ck.model), torch.no_grad():
                logits = ck.model(crops)
        top1, top5, target = (t.cpu().numpy() for t in predictions(logits.detach(), allowed))
        if "top1" in cfg.metrics:
            res["top1"], res["top5"] = top1.astype(float), top5.astype(float)
        limit = cfg.iauc_limit if cfg.iauc_limit is not None else np.inf
        if "iauc" in cfg.metrics and (sel := [i for i in range(n) if index[i] < limit]):
            x = torch.stack([preprocess(images[i], geometry(*images[i].shape[:2], "squash")) for i in sel])
            res["iauc"][sel] = insertion_auc(ck.model, x, torch.as_tensor(target[sel]), layer=ck.layer,
                                             step=cfg.iauc_step, batch_size=cfg.batch_size,
                                             max_batch=cfg.iauc_max_batch,
                                             bn_train_mode_for_maps=cfg.iauc_bn_train).auc.numpy()
        return res

    def _ch(self, ck: Checkpoint, allowed, images, boxes) -> np.ndarray:
        """CH of images that all have boxes, for the class Grad-CAM explains:
        the label's class, or where several count (UnRel) the one the centre
        crop scores highest, as in the first pass."""
        if bool((allowed.sum(1) == 1).all()):
            target = allowed.int().argmax(1)
        else:
            with evaluating(ck.model), torch.no_grad():
                target = predictions(ck.model(self._crops(images)), allowed)[2]
        cfg = self.cfg
        return content_heatmap(ck.model, images, boxes, target.cpu().numpy(), layer=ck.layer,
                               protocol=cfg.ch_protocol, short_side=cfg.short_side,
                               batch_size=cfg.batch_size).ch.numpy()

    def _cgc(self, ck: Checkpoint, query: torch.Tensor, uris) -> tuple[float, torch.Tensor]:
        """L_CGC of the batch (query = the centre crops, positive = T(query),
        negatives = the others) and the query's logits (eval mode: the top-1 logits)."""
        ts = [val_transform(str(u), query.shape[-1], self.cfg.seed) for u in uris]
        crop = torch.tensor([c for c, _ in ts], dtype=torch.int64)
        flip = torch.tensor([f for _, f in ts], dtype=torch.bool)
        aug = crop_resize_flip(query, crop, flip)
        objective = CGCConfig(tau=float(ck.meta.get("tau", 0.5)), layer=ck.layer)  # official arrangement
        with evaluating(ck.model), cam_net(ck.model, ck.layer) as net, \
                torch.set_grad_enabled(net.linear_head() is None):  # autograd Grad-CAM off a GAP+fc head
            q, a = net(query, aug)
            loss = heatmap_consistency(net, q, a, crop, flip, tuple(query.shape[-2:]), objective)
        return float(loss), q[0].detach()


# ---------------------------------------------------------------- Ray: moving rows and images

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
          .map_batches(BatchMetrics, batch_size=cfg.batch_size, batch_format="numpy",
                       fn_constructor_kwargs={"cfg": cfg, "sets": sets, "part": part},
                       compute=ray.data.ActorPoolStrategy(size=cfg.concurrency),
                       num_cpus=cfg.cpus_per_actor, num_gpus=1 if cfg.use_gpu else 0))
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


# ---------------------------------------------------------------- the driver

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
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"))
    ray.data.DataContext.get_current().enable_progress_bars = False
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
    if totals.no_usable_box:
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
        boxes = _boxes(row["boxes"])
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


# ---------------------------------------------------------------- command line

def parse(argv=None) -> EvalConfig:
    p = argparse.ArgumentParser(prog="evaluate.py", description="Evaluate CGC checkpoints: "
                                "Top-1, Content Heatmap, CGC loss, insertion AUC, Grad-CAM figures.")
    p.add_argument("--checkpoint", dest="checkpoints", action="append", required=True,
                   help="checkpoint folder (local or s3://); repeat")
    p.add_argument("--label", dest="labels", action="append", default=[],
                   help="table label per --checkpoint, in order")
    p.add_argument("--dataset", default=None, help="embedded (default without --data), imagenet (default "
                   "with --data), unrel, or another indexer")
    p.add_argument("--data", default=None, help="data root (local or s3://)")
    p.add_argument("--split", default=None, help="default: val (test for unrel)")
    p.add_argument("--manifest", default=None, help="manifest cache URI")
    p.add_argument("--out", default="eval", help="output folder or s3:// prefix")
    p.add_argument("--metrics", default=",".join(METRICS), help="comma list of " + ",".join(METRICS))
    p.add_argument("--ch-protocol", default="resize", choices=CH_PROTOCOLS)
    p.add_argument("--short-side", type=int, default=448, help="CH input short side (resize protocol)")
    p.add_argument("--iauc-limit", type=int, default=None, help="IAUC on the first N rows only")
    p.add_argument("--iauc-step", type=int, default=STEP, help="pixels per insertion step (RISE: 224*8)")
    p.add_argument("--iauc-max-batch", type=int, default=1024,
                   help="insertion canvases per forward (default: all 29 x 32 of a batch at once)")
    p.add_argument("--iauc-bn-train", action="store_true", help="the authors' IAUC maps: BatchNorm in train mode")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N manifest rows")
    p.add_argument("--figures", type=int, default=4, help="random figure images (seeded); 0: no figure")
    p.add_argument("--images", default="", help="comma list of figure images (URIs or file names)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32, help="metric batch = CGC-loss batch")
    p.add_argument("--decode-batch", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=1, help="metric actors")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per metric actor")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=None, help="torch threads per actor")
    p.add_argument("--skip-bad", action="store_true", help="skip checkpoints that cannot be evaluated and, for "
                   "CH, images without boxes (named in the log and results.json) instead of failing")
    p.add_argument("--s3-endpoint", default=None)
    p.add_argument("--s3-region", default=None)
    a = vars(p.parse_args(argv))
    a["dataset"] = default_dataset(a["dataset"], a["data"])
    a["split"] = a["split"] or ("test" if a["dataset"] == "unrel" else "val")
    for key in ("metrics", "images"):
        a[key] = tuple(v.strip() for v in a[key].split(",") if v.strip())
    a = absolute_paths(a, ("data", "manifest", "out"))
    checkpoints = tuple(absolute_paths({"c": c}, ("c",))["c"] for c in a["checkpoints"])
    return EvalConfig(**{**a, "checkpoints": checkpoints, "labels": tuple(a["labels"])})
