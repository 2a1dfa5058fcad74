"""FGVC-Aircraft 2013b, variant level; the root is fgvc-aircraft-2013b/data.

- variants.txt: the 100 variant names, one a line; the line order is the label order.
- images_variant_trainval.txt / images_variant_test.txt: "<image id> <variant>"
  (the name may hold spaces); images are images/<image id>.jpg.
- images_box.txt: "<image id> xmin ymin xmax ymax", 1-based inclusive -> VOC edges.

As in the paper, "train" is the official trainval list and "test" the test
list; "val" is an alias of "test". (The official train-only / val-only lists,
images_variant_train.txt and images_variant_val.txt, are not exposed.)
"""

from __future__ import annotations

from ..manifest import Manifest, build, voc_to_edges
from ..storage import StorageOptions, exists, read_bytes
from . import child, register
from .cub import canonical_split, number, read_rows

LISTS = {"train": "images_variant_trainval.txt", "test": "images_variant_test.txt"}


@register("aircraft")
def index_aircraft(root: str, split: str, options: StorageOptions = StorageOptions()) -> Manifest:
    want = canonical_split("aircraft", split)
    variants_uri = child(root, "variants.txt")
    classes = [line.strip() for line in read_bytes(variants_uri, options).decode("utf-8-sig").splitlines()
               if line.strip()]
    if len(set(classes)) != len(classes):
        raise ValueError(f"{variants_uri}: repeated variant names")
    index = {c: k for k, c in enumerate(classes)}
    boxes = {}
    box_uri = child(root, "images_box.txt")
    if exists(box_uri, options):
        for image_id, *coords in read_rows(box_uri, options, 5):
            boxes[image_id] = [voc_to_edges(*(number(c, box_uri) for c in coords), where=f"{box_uri} {image_id}")]
    list_uri = child(root, LISTS[want])
    rows = []
    for image_id, variant in read_rows(list_uri, options, 2, 1):
        if variant not in index:
            raise ValueError(f"{list_uri}: image {image_id} has variant {variant!r}, not one of variants.txt")
        rows.append({"uri": child(root, "images", f"{image_id}.jpg"), "label": index[variant],
                     "boxes": boxes.get(image_id)})
    return build(rows, classes, "aircraft", split, root)
