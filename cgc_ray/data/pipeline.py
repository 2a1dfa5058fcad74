"""Ray Data input: manifest -> shuffled rows -> bytes from storage -> decoded views.

The rows are shuffled each epoch (every execution of the dataset) from a base
seed; a Ray Train `TorchTrainer` splits the dataset into equal shards per
worker (`get_dataset_shard`), so DDP ranks always see the same number of
batches. The augmentations of a decode batch are drawn from the seed and the
batch's images in order (`batch_rng`): the same seed, data and cluster give
the same views each epoch. With `deterministic` the execution also keeps the
order of its blocks, which makes Ray Data's split across workers
deterministic too (it ignores locality then): a run is repeatable.
Unreadable images are skipped, logged and counted in a ledger actor (each
distinct file once, however many epochs meet it); past `max_bad_images` the
epoch fails with a message that says so.

The object-store footprint is capped by `object_store_limit` (bytes) through
the execution options that Ray Train applies to the dataset shards
(`data_config`), and by the small uint8 blocks the views are stored as.
"""

from __future__ import annotations

import functools
import logging
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq
import ray
from ray.data import RandomSeedConfig

from ..errors import UserError
from ..transforms import draw_train_params
from .device_decode import device_ready
from .storage import StorageOptions, read_bytes, read_head, resolve
from .views import RECIPE_VIEWS, BadImage, decode_rgb, decode_train_views, open_image, val_transform, val_view

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSettings:
    image_size: int = 224
    resize_size: int = 256
    seed: int = 0
    decode_batch: int = 32           # rows per decode batch (and per output block)
    rows_per_task: int = 2048        # most rows one decode task works through
    read_threads: int = 16           # concurrent object reads per task
    max_bad_images: int | None = 1000  # skipped images allowed before the run fails (None: no limit)
    object_store_limit: int | None = None  # bytes; None = Ray Data's default share
    storage: StorageOptions = field(default_factory=StorageOptions)
    ledger: str | None = None        # name of the BadImageLedger actor (None: log only)
    gpu_decode: bool = False         # ship JPEG bytes; the training device decodes (device_decode.py)
    deterministic: bool = False      # keep block order: the same batches on the same rank in every run


class TooManyBadImages(UserError):
    """More distinct images could not be read than `max_bad_images` allows."""


@ray.remote(num_cpus=0)
class BadImageLedger:
    """Counts the distinct images that could not be read (a broken file is
    met again every epoch; it counts once) and remembers the first few."""

    def __init__(self):
        self.seen, self.examples = set(), []

    def record(self, items: list[tuple[str, str]]) -> int:
        for uri, reason in items:
            if uri not in self.seen:
                self.seen.add(uri)
                if len(self.examples) < 20:
                    self.examples.append((uri, reason))
        return len(self.seen)

    def summary(self) -> dict:
        return {"skipped_images": len(self.seen), "examples": list(self.examples)}


def too_many_bad_images(summary: dict, limit: int) -> TooManyBadImages:
    uri, reason = summary["examples"][-1] if summary["examples"] else ("?", "?")
    return TooManyBadImages(f"{summary['skipped_images']} images could not be read, more than "
                            f"--max-bad-images {limit} allows; e.g. {uri} ({reason})")


def open_ledger(name: str):
    return BadImageLedger.options(name=name, get_if_exists=True).remote()


def fetch_decode(uris, settings: DataSettings, decode=decode_rgb) -> tuple[list[int], list]:
    """The positions of the readable uris and decode(bytes) of each; the
    others are logged and counted (`record_bad_images`)."""
    def fetch(uri):
        try:
            return read_bytes(uri, settings.storage), None
        except OSError as e:
            return None, (uri, f"{type(e).__name__}: {e}")

    def convert(uri, fetched):
        data, error = fetched
        if error:
            return None, error
        try:
            return decode(data), None
        except BadImage as e:
            return None, (uri, f"{type(e).__name__}: {e}")

    # Reads wait on the network: many at once. Decoding is CPU work: in turn.
    with ThreadPoolExecutor(max(1, min(settings.read_threads, len(uris)))) as pool:
        fetched = list(pool.map(fetch, uris))
    results = [convert(u, f) for u, f in zip(uris, fetched)]
    bad = [r[1] for r in results if r[1] is not None]
    if bad:
        record_bad_images(bad, settings)
    keep = [i for i, r in enumerate(results) if r[1] is None]
    return keep, [results[i][0] for i in keep]


HEADER_BYTES = 1 << 16  # enough for a JPEG header unless it carries a large EXIF/ICC block


def read_sizes(uris, settings: DataSettings) -> list[tuple[int, int] | None]:
    """(height, width) of each image from its header: the first 64 KiB, or the
    whole file where the header is longer; None where it cannot be read (the
    decoding pass that follows skips and counts it)."""
    def size(uri):
        try:
            head = read_head(uri, HEADER_BYTES, settings.storage)
            try:
                width, height = open_image(head).size
            except BadImage:
                if len(head) < HEADER_BYTES:  # that was the whole file
                    raise
                width, height = open_image(read_bytes(uri, settings.storage)).size
            return height, width
        except (OSError, BadImage):
            return None

    with ThreadPoolExecutor(max(1, min(settings.read_threads, len(uris)))) as pool:
        return list(pool.map(size, uris))


def record_bad_images(bad, settings: DataSettings):
    """Log unreadable images, count them in the ledger, fail past the limit."""
    for uri, reason in bad:
        log.warning("skipping unreadable image %s (%s)", uri, reason)
    if settings.ledger is None:
        return
    total = ray.get(ray.get_actor(settings.ledger).record.remote(bad))
    if settings.max_bad_images is not None and total > settings.max_bad_images:
        raise too_many_bad_images({"skipped_images": total, "examples": bad}, settings.max_bad_images)


def batch_rng(uris, seed: int) -> np.random.Generator:
    """The random stream of one decode batch's augmentations: a function of
    the seed and the batch's URIs in order, which the epoch's shuffle changes."""
    return np.random.default_rng([seed, zlib.crc32("\n".join(uris).encode())])


def _train_batch(batch: dict, recipe: str, settings: DataSettings) -> dict:
    if settings.gpu_decode:
        return _raw_batch(batch, recipe, settings)
    rng = batch_rng(batch["uri"], settings.seed)
    keep, views = fetch_decode(batch["uri"], settings, decode=functools.partial(
        decode_train_views, recipe=recipe, size=settings.image_size, resize=settings.resize_size, rng=rng))
    columns = _columns(RECIPE_VIEWS[recipe], recipe != "baseline", settings.image_size)
    return _stack(views, batch, keep, columns)


def _raw_batch(batch: dict, recipe: str, settings: DataSettings) -> dict:
    """JPEG bytes + the views' random parameters, for decoding on the device."""
    keep, ready = fetch_decode(batch["uri"], settings, decode=device_ready)
    rng = batch_rng(batch["uri"], settings.seed)
    rows = [{"jpeg": jpeg, **draw_train_params(h, w, recipe, settings.image_size, rng)} for jpeg, h, w in ready]
    columns = {"jpeg": ((), object), "xe_box": ((4,), np.int64), "xe_flip": ((), np.bool_)}
    if recipe != "baseline":
        columns.update(crop=((4,), np.int64), flip=((), np.bool_))
    return _stack(rows, batch, keep, columns)


def _val_batch(batch: dict, settings: DataSettings) -> dict:
    keep, images = fetch_decode(batch["uri"], settings)
    views = []
    for i, img in zip(keep, images):
        image, boxes = val_view(img, batch["boxes"][i], settings.resize_size, settings.image_size)
        crop, flip = val_transform(batch["uri"][i], settings.image_size, settings.seed)
        views.append({"image": image, "crop": np.asarray(crop, dtype=np.int64), "flip": flip, "boxes": boxes})
    columns = {**_columns(("image",), True, settings.image_size), "boxes": ((), object)}
    return _stack(views, batch, keep, columns)


def _columns(images: tuple[str, ...], with_t: bool, size: int) -> dict:
    """Column name -> (per-row shape, dtype)."""
    cols = {k: ((size, size, 3), np.uint8) for k in images}
    if with_t:
        cols.update(crop=((4,), np.int64), flip=((), np.bool_))
    return cols


def _stack(views: list[dict], batch: dict, keep: list[int], columns: dict) -> dict:
    """Columns of the kept rows; typed empty columns when every row was skipped."""
    out = {k: (_column([v[k] for v in views], dtype) if views else np.zeros((0, *shape), dtype))
           for k, (shape, dtype) in columns.items()}
    out["label"] = np.asarray(batch["label"], dtype=np.int64)[keep]
    out["uri"] = np.asarray(batch["uri"], dtype=object)[keep]
    return out


def _column(values: list, dtype) -> np.ndarray:
    if dtype is object:  # variable-length bytes
        col = np.empty(len(values), dtype=object)
        col[:] = values
        return col
    return np.stack(values).astype(dtype, copy=False)


def _rows(manifest_uri: str, settings: DataSettings, columns=("uri", "label"),
          part: tuple[int, int] | None = None) -> tuple[ray.data.Dataset, int]:
    """The manifest's rows (with `part` = (k, n): rows k, k + n, k + 2n, ...)
    and their count, read once here: an epoch then starts without listing and
    reading the Parquet file again."""
    fs, path = resolve(manifest_uri, settings.storage)
    table = pq.read_table(path, filesystem=fs, columns=list(columns))
    if part is not None:
        table = table.take(list(range(part[0], table.num_rows, part[1])))
    return ray.data.from_arrow(table), table.num_rows


def _decode_tasks(num_rows: int, settings: DataSettings) -> int:
    """Map tasks an epoch: a multiple of the cluster's CPUs, each of up to
    `rows_per_task` rows. Ray Data notices a finished task up to ~0.1 s late;
    over 32-image tasks (~0.15 s of work) that left the cores idle a third of
    the time (bench/data_pipeline.py)."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return cpus * max(1, -(-num_rows // (cpus * settings.rows_per_task)))


def _decoded(rows: ray.data.Dataset, num_rows: int, fn, settings: DataSettings, views: int, **kwargs):
    """rows split into `_decode_tasks` blocks, mapped by fn in batches of
    `decode_batch` rows; every batch leaves its task as a block of its own (the
    block-size target sits just under one batch), so the consumer sees the
    first views after one batch rather than after a task."""
    batch_bytes = settings.decode_batch * views * settings.image_size ** 2 * 3
    rows.context.target_max_block_size = max(1, int(0.75 * batch_bytes))
    return (rows.repartition(_decode_tasks(num_rows, settings))
            .map_batches(fn, batch_size=settings.decode_batch, fn_kwargs={"settings": settings, **kwargs}))


def train_dataset(manifest_uri: str, recipe: str, settings: DataSettings) -> ray.data.Dataset:
    """Shuffled (a new order each epoch, reproducible from the seed) training views."""
    if recipe not in RECIPE_VIEWS:
        raise ValueError(f"recipe must be one of {sorted(RECIPE_VIEWS)}, got {recipe!r}")
    rows, n = _rows(manifest_uri, settings)
    shuffled = rows.random_shuffle(seed=RandomSeedConfig(seed=settings.seed, reseed_after_execution=True))
    return _decoded(shuffled, n, _train_batch, settings, len(RECIPE_VIEWS[recipe]), recipe=recipe)


def val_dataset(manifest_uri: str, settings: DataSettings, part: tuple[int, int] | None = None) -> ray.data.Dataset:
    """Center-crop views in manifest order, with a fixed T per image and the
    boxes ((k, 4) float32 edges per row) mapped into the crop. `part` (k, n):
    rank k's share of n, every image in exactly one share (Ray Train's equal
    split would drop the remainder)."""
    rows, n = _rows(manifest_uri, settings, ("uri", "label", "boxes"), part)
    return _decoded(rows, n, _val_batch, settings, 1)


def data_config(settings: DataSettings) -> "ray.train.DataConfig":
    """Ray Train's dataset config: split every dataset equally, with the
    object-store cap applied to the shards' execution, and the block order
    kept with `deterministic` (Ray Data's split is then deterministic). The
    options are what the DataContext sets, as
    `DataConfig.default_ingest_options()` copies them, but the deprecated
    `exclude_resources` only where it was set (copying the default warns on
    every run)."""
    from ray.train import DataConfig  # noqa: PLC0415: Ray Train only where a trainer is built

    current = ray.data.DataContext.get_current().execution_options
    limits = current.resource_limits
    if settings.object_store_limit:
        limits = limits.copy(object_store_memory=settings.object_store_limit)
    # exclude_resources is deprecated (setting it warns): carried over only where someone set it
    excluded = current.exclude_resources
    kept = {"exclude_resources": excluded} if excluded != ray.data.ExecutionResources.zero() else {}
    options = ray.data.ExecutionOptions(resource_limits=limits,
                                        preserve_order=current.preserve_order or settings.deterministic,
                                        verbose_progress=current.verbose_progress,
                                        label_selector=current.label_selector, **kept)
    # validation shares are made per rank (val_dataset's `part`), not split by Ray Train
    return DataConfig(datasets_to_split=["train"], execution_options=options)
