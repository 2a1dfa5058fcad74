"""A plain class-per-folder tree: <root>/<split>/<class>/<image>.

Classes are the sorted folder names of the split. An optional
<root>/<split>_boxes.csv (columns: path, xmin, ymin, xmax, ymax; path relative
to the split folder; VOC convention, 1-based inclusive; several rows per image
allowed) adds object boxes.
"""

from __future__ import annotations

import csv
import io

from ..manifest import Manifest, build, voc_to_edges
from ..storage import StorageOptions, exists, read_bytes
from . import child, register
from .imagenet import IMAGE_SUFFIXES, _class_folders, _folder_rows


@register("folder")
def index_folder(root: str, split: str, options: StorageOptions = StorageOptions()) -> Manifest:
    split_uri = child(root, split)
    classes = _class_folders(split_uri, options)
    rows = _folder_rows(split_uri, classes, options)
    boxes = _boxes(child(root, f"{split}_boxes.csv"), split_uri, options)
    for row in rows:
        row["boxes"] = boxes.pop(row["uri"], None)
    if boxes:
        raise ValueError(f"{split}_boxes.csv names images that are not in {split_uri}: {sorted(boxes)[:5]}")
    return build(rows, classes, "folder", split, root)


def _boxes(csv_uri: str, split_uri: str, options: StorageOptions) -> dict[str, list]:
    if not exists(csv_uri, options):
        return {}
    out: dict[str, list] = {}
    reader = csv.DictReader(io.StringIO(read_bytes(csv_uri, options).decode()))
    missing = sorted({"path", "xmin", "ymin", "xmax", "ymax"} - set(reader.fieldnames or ()))
    if missing:
        raise ValueError(f"{csv_uri}: no column {', '.join(missing)} (columns: path, xmin, ymin, xmax, ymax)")
    for rec in reader:
        uri = child(split_uri, *rec["path"].split("/"))
        out.setdefault(uri, []).append(voc_to_edges(rec.get("xmin"), rec.get("ymin"), rec.get("xmax"), rec.get("ymax"),
                                                    where=f"{csv_uri} path {rec.get('path')}"))
    return out


__all__ = ["index_folder", "IMAGE_SUFFIXES"]
