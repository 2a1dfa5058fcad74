"""ImageNet ILSVRC-2012 as downloaded.

- Classes: the sorted wnids of train/<wnid>/ (the standard order), or where
  the root has no train/ (a validation-only copy, for evaluation) the sorted
  wnids of LOC_synset_mapping.txt; names from that file where present.
- train: train/<wnid>/*.JPEG.
- val: either val/<wnid>/*.JPEG (after the usual valprep), or flat
  val/*.JPEG labelled by the per-image VOC XML files (ILSVRC2012_bbox_val_v3,
  in val_xml/, bbox/val/, Annotations/CLS-LOC/val/ or beside the images) or by
  LOC_val_solution.csv. Boxes of the image's class come from the XML or CSV.
"""

from __future__ import annotations

import csv
import io
import posixpath
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import pyarrow.fs as pafs

from ..manifest import Manifest, build, voc_to_edges
from ..storage import StorageOptions, exists, list_dir, list_files, read_bytes, split_uri
from . import child, register

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
XML_DIRS = ("val_xml", "bbox/val", "Annotations/CLS-LOC/val", "val")


@register("imagenet")
def index_imagenet(root: str, split: str, options: StorageOptions = StorageOptions()) -> Manifest:
    wnids = _classes(root, split, options)
    if split == "train":
        rows = _folder_rows(child(root, "train"), wnids, options)
    elif split == "val":
        rows = _val_rows(root, wnids, options)
    else:
        raise ValueError(f"imagenet has splits 'train' and 'val', not {split!r}")
    return build(rows, wnids, "imagenet", split, root)


def class_names(root: str, options: StorageOptions) -> dict[str, str]:
    """wnid -> readable name, from LOC_synset_mapping.txt if the root has it."""
    uri = child(root, "LOC_synset_mapping.txt")
    if not exists(uri, options):
        return {}
    lines = read_bytes(uri, options).decode().splitlines()
    return dict(line.split(" ", 1) for line in lines if line.strip())


def _classes(root: str, split: str, options: StorageOptions) -> list[str]:
    if split == "train" or exists(child(root, "train"), options):
        return _class_folders(child(root, "train"), options)
    if names := class_names(root, options):
        return sorted(names)
    raise FileNotFoundError(f"no class list: {root} has neither train/<wnid>/ folders nor LOC_synset_mapping.txt")


def _class_folders(uri: str, options: StorageOptions) -> list[str]:
    try:
        infos = list_dir(uri, options)
    except (FileNotFoundError, OSError) as e:
        raise FileNotFoundError(f"no class folders: cannot list {uri} ({e})") from e
    wnids = sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory)
    if not wnids:
        raise FileNotFoundError(f"no class folders in {uri}")
    return wnids


def _folder_rows(uri: str, classes: list[str], options: StorageOptions) -> list[dict]:
    index = {c: k for k, c in enumerate(classes)}
    rows = []
    for file_uri in list_files(uri, IMAGE_SUFFIXES, options):
        folder = posixpath.basename(posixpath.dirname(split_uri(file_uri)[1]))
        if folder not in index:
            raise ValueError(f"{file_uri}: folder {folder!r} is not a class of the training set")
        rows.append({"uri": file_uri, "label": index[folder]})
    return rows


def _val_rows(root: str, wnids: list[str], options: StorageOptions) -> list[dict]:
    val = child(root, "val")
    subdirs = [i for i in list_dir(val, options) if i.type == pafs.FileType.Directory]
    rows = _folder_rows(val, wnids, options) if subdirs else [
        {"uri": u} for u in list_files(val, IMAGE_SUFFIXES, options)]
    annotations = _xml_annotations(root, options) or _csv_annotations(root, options)
    index = {w: k for k, w in enumerate(wnids)}
    for row in rows:
        stem = posixpath.splitext(posixpath.basename(row["uri"]))[0]
        ann = annotations.get(stem)
        if "label" not in row:
            if ann is None:
                raise ValueError(f"{row['uri']}: no label (no XML box file and no LOC_val_solution.csv entry)")
            if ann["wnid"] not in index:
                raise ValueError(f"{row['uri']}: label {ann['wnid']!r} is not a class of the training set")
            row["label"] = index[ann["wnid"]]
        if ann is not None:
            own = wnids[row["label"]]
            row["boxes"] = [b for w, b in ann["objects"] if w == own] or None
            row.update(width=ann.get("width"), height=ann.get("height"))
    return rows


def _xml_annotations(root: str, options: StorageOptions) -> dict[str, dict]:
    for rel in XML_DIRS:
        uri = child(root, *rel.split("/"))
        if not exists(uri, options):
            continue
        files = list_files(uri, (".xml",), options)
        if files:
            with ThreadPoolExecutor(32) as pool:
                parsed = list(pool.map(lambda u: (u, read_bytes(u, options)), files))
            return {posixpath.splitext(posixpath.basename(u))[0]: parse_voc_xml(data, u) for u, data in parsed}
    return {}


def parse_voc_xml(data: bytes, uri: str = "<xml>") -> dict:
    """wnid of the first object, every (wnid, box) and the image size of a VOC XML file."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise ValueError(f"{uri}: not a valid box XML file ({e})") from e
    objects = []
    for obj in root.iter("object"):
        bb, name = obj.find("bndbox"), (obj.findtext("name") or "").strip()
        if bb is None or not name:
            raise ValueError(f"{uri}: an <object> without {'<bndbox>' if bb is None else '<name>'}")
        objects.append((name, voc_to_edges(*(bb.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")),
                                           where=f"{uri} <object> {name}")))
    if not objects:
        raise ValueError(f"{uri}: no <object> in the box file")
    size = root.find("size")
    dims = {k: int(size.findtext(k)) for k in ("width", "height")} if size is not None else {}
    return {"wnid": objects[0][0], "objects": objects, **dims}


def _csv_annotations(root: str, options: StorageOptions) -> dict[str, dict]:
    """LOC_val_solution.csv: ImageId, "wnid xmin ymin xmax ymax wnid ..." (same numbers as the XML)."""
    uri = child(root, "LOC_val_solution.csv")
    if not exists(uri, options):
        return {}
    out = {}
    for rec in csv.DictReader(io.StringIO(read_bytes(uri, options).decode())):
        parts = rec["PredictionString"].split()
        where = f"{uri} ImageId {rec['ImageId']}"
        if not parts or len(parts) % 5:
            raise ValueError(f"{where}: PredictionString holds {len(parts)} fields, not groups of 5 (wnid + box)")
        objects = [(parts[i], voc_to_edges(*parts[i + 1:i + 5], where=where)) for i in range(0, len(parts), 5)]
        out[rec["ImageId"]] = {"wnid": objects[0][0], "objects": objects}
    return out
