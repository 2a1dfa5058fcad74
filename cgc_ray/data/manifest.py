"""A manifest: one split of a data set as a Parquet table, the only thing the
rest of the system reads.

Columns: uri (string), label (int32), class_name (string), boxes (list of
[x0, y0, x1, y1] float32, 0-based pixel edges, half-open, in the original
image; only the boxes of the image's own class; null where the set has none),
width/height (int32, from the annotation, null if unknown). The class list,
data set name, split and root are stored in the schema metadata.

A VOC/ImageNet XML box (xmin, ymin, xmax, ymax), 1-based and inclusive,
becomes [xmin - 1, ymin - 1, xmax, ymax]. Corners in the wrong order are put
in order; a box with no area inside its image (where the annotation gives the
image size) is dropped, and an image left with none has an empty box list:
"no usable box". `build` counts what it drops in `Manifest.notes`;
`load_or_build` adds the reordered corners counted while indexing.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from .storage import StorageOptions, read_bytes, write_bytes

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("uri", pa.string()),
    ("label", pa.int32()),
    ("class_name", pa.string()),
    ("boxes", pa.list_(pa.list_(pa.float32(), 4))),
    ("width", pa.int32()),
    ("height", pa.int32()),
])
FORMAT_VERSION = 2  # 2: boxes with no area inside the image dropped, box fixes counted in the notes
READABLE_FORMATS = (1, 2)


@dataclass
class Manifest:
    table: pa.Table
    classes: list[str]
    dataset: str
    split: str
    root: str
    notes: dict = field(default_factory=dict)  # box fixes made while indexing: {"boxes_reordered": n, ...}
    format: int = FORMAT_VERSION               # of the file it was read from (1: before the box checks)

    def __len__(self):
        return self.table.num_rows

    @property
    def has_boxes(self) -> bool:
        return self.table.column("boxes").null_count < self.table.num_rows


_box_fixes: ContextVar[Counter | None] = ContextVar("box_fixes", default=None)


@contextlib.contextmanager
def counting_box_fixes():
    """Counts `voc_to_edges`' reordered corners while an indexer runs (they
    happen before `build`, which counts its own drops in the notes): yields a
    Counter."""
    counts = Counter()
    token = _box_fixes.set(counts)
    try:
        yield counts
    finally:
        _box_fixes.reset(token)


def _count(kind: str) -> None:
    counts = _box_fixes.get()
    if counts is not None:
        counts[kind] += 1


def voc_to_edges(xmin, ymin, xmax, ymax, where: str = "<box>") -> list[float]:
    """A 1-based inclusive VOC box as 0-based edges. Raises ValueError naming
    `where` (the file and record) and the field for a missing or non-numeric
    coordinate; corners given in the wrong order are put in order, with a warning."""
    values = []
    for name, value in zip(("xmin", "ymin", "xmax", "ymax"), (xmin, ymin, xmax, ymax)):
        try:
            values.append(float(value))
        except (TypeError, ValueError):
            raise DataError(f"{where}: box field {name} is {value!r}, not a number") from None
    x0, y0, x1, y1 = values
    if x0 > x1 or y0 > y1:
        log.warning("%s: box corners in the wrong order %s, put in order", where, values)
        _count("boxes_reordered")
        (x0, x1), (y0, y1) = sorted((x0, x1)), sorted((y0, y1))
    return [x0 - 1, y0 - 1, x1, y1]


def build(rows: list[dict], classes: list[str], dataset: str, split: str, root: str) -> Manifest:
    """A manifest from row dicts (uri, label, and optionally boxes/width/height)."""
    if not rows:
        raise DataError(f"{dataset} {split}: no images found under {root}")
    for r in rows:
        if not 0 <= r["label"] < len(classes):
            raise DataError(f"{r['uri']}: label {r['label']} is not one of the {len(classes)} classes")
    dropped = Counter()
    columns = {
        "uri": [r["uri"] for r in rows],
        "label": [r["label"] for r in rows],
        "class_name": [classes[r["label"]] for r in rows],
        "boxes": [_inside(r, dropped) for r in rows],
        "width": [r.get("width") for r in rows],
        "height": [r.get("height") for r in rows],
    }
    return Manifest(pa.table(columns, schema=SCHEMA), list(classes), dataset, split, root, dict(dropped))


def has_area(box, width: int, height: int) -> bool:
    """Whether a box [x0, y0, x1, y1] (0-based edges) covers any area of a
    width x height image."""
    x0, y0, x1, y1 = box
    return min(x1, width) > max(x0, 0) and min(y1, height) > max(y0, 0)


def _inside(row: dict, dropped: Counter) -> list | None:
    """The row's boxes with area inside its image (all of them where the size
    is unknown); what is dropped is counted in `dropped`."""
    boxes, w, h = row.get("boxes"), row.get("width"), row.get("height")
    if boxes is None or not w or not h:
        return boxes
    kept = [b for b in boxes if has_area(b, w, h)]
    if len(kept) < len(boxes):
        log.warning("%s: %d of its %d boxes have no area inside the %dx%d image, dropped",
                    row["uri"], len(boxes) - len(kept), len(boxes), w, h)
        dropped["boxes_outside_image"] += len(boxes) - len(kept)
        dropped["images_without_usable_box"] += int(not kept)
    return kept


def write(manifest: Manifest, uri: str, options: StorageOptions = StorageOptions()) -> None:
    meta = {"classes": manifest.classes, "dataset": manifest.dataset, "split": manifest.split,
            "root": manifest.root, "format": FORMAT_VERSION, "notes": manifest.notes}
    table = manifest.table.replace_schema_metadata({"cgc_ray": json.dumps(meta)})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes(uri, buf.getvalue(), options)


def read(uri: str, options: StorageOptions = StorageOptions()) -> Manifest:
    table = pq.read_table(io.BytesIO(read_bytes(uri, options)))
    raw = (table.schema.metadata or {}).get(b"cgc_ray")
    if raw is None:
        raise DataError(f"{uri} is not a cgc_ray manifest (no 'cgc_ray' schema metadata)")
    meta = json.loads(raw)
    if meta.get("format") not in READABLE_FORMATS:
        raise DataError(f"{uri}: manifest format {meta.get('format')}, this version reads {READABLE_FORMATS}; "
                        "rebuild it")
    return Manifest(table.cast(SCHEMA), meta["classes"], meta["dataset"], meta["split"], meta["root"],
                    meta.get("notes", {}), meta["format"])
