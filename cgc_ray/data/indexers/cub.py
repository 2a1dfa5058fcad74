"""CUB-200-2011 as downloaded; the root is the CUB_200_2011 folder.

- classes.txt: "<class id> <name>", ids 1..200 (names as written, e.g.
  "001.Black_footed_Albatross").
- images.txt: "<image id> <relpath>", images under images/<relpath>.
- image_class_labels.txt: "<image id> <class id>".
- train_test_split.txt: "<image id> <1 = train | 0 = test>".
- bounding_boxes.txt: "<image id> <x> <y> <width> <height>" (floats, 0-based
  pixel origin as in the CUB toolkit) -> box [x, y, x + width, y + height].

Splits: "train" and "test"; "val" is accepted as an alias of "test" (CUB has no
separate validation set). The helpers below are shared by the other
fine-grained indexers (aircraft, cars, flowers).
"""

from __future__ import annotations

from ..manifest import Manifest, build
from ..storage import StorageOptions, exists, read_bytes
from . import child, register


def canonical_split(dataset: str, split: str) -> str:
    """'train' or 'test'; 'val' is an alias of 'test' for the fine-grained sets."""
    if split in ("train", "test"):
        return split
    if split == "val":
        return "test"
    raise ValueError(f"{dataset} has splits 'train' and 'test' ('val' = 'test'), not {split!r}")


def read_rows(uri: str, options: StorageOptions, fields: int, maxsplit: int | None = None) -> list[list[str]]:
    """Non-blank lines of a whitespace-separated text file, each split into `fields` parts."""
    rows = []
    for n, line in enumerate(read_bytes(uri, options).decode("utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(None, maxsplit if maxsplit is not None else -1)
        if len(parts) != fields:
            raise ValueError(f"{uri}:{n}: expected {fields} fields, got {line!r}")
        rows.append([p.strip() for p in parts])
    return rows


def number(text: str, uri: str, kind=float):
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{uri}: {text!r} is not a number") from None


@register("cub")
def index_cub(root: str, split: str, options: StorageOptions = StorageOptions()) -> Manifest:
    want = canonical_split("cub", split)
    files = {k: child(root, f"{k}.txt") for k in
             ("classes", "images", "image_class_labels", "train_test_split", "bounding_boxes")}
    class_rows = read_rows(files["classes"], options, 2, 1)
    if [r[0] for r in class_rows] != [str(i) for i in range(1, len(class_rows) + 1)]:
        raise ValueError(f"{files['classes']}: class ids are not 1..{len(class_rows)} in order")
    classes = [r[1] for r in class_rows]
    labels = {i: number(c, files["image_class_labels"], int)
              for i, c in read_rows(files["image_class_labels"], options, 2)}
    is_train = {i: s for i, s in read_rows(files["train_test_split"], options, 2)}
    boxes = {}
    if exists(files["bounding_boxes"], options):
        for i, *xywh in read_rows(files["bounding_boxes"], options, 5):
            x, y, w, h = (number(v, files["bounding_boxes"]) for v in xywh)
            boxes[i] = [[x, y, x + w, y + h]]
    rows = []
    for image_id, rel in read_rows(files["images"], options, 2, 1):
        for key, table in (("image_class_labels", labels), ("train_test_split", is_train)):
            if image_id not in table:
                raise ValueError(f"{files[key]}: no entry for image {image_id} ({rel})")
        if is_train[image_id] not in ("0", "1"):
            raise ValueError(f"{files['train_test_split']}: image {image_id} has flag {is_train[image_id]!r}, not 0/1")
        if not 1 <= labels[image_id] <= len(classes):
            raise ValueError(f"{files['image_class_labels']}: image {image_id} has label {labels[image_id]}, "
                             f"not one of the {len(classes)} classes of classes.txt")
        if (is_train[image_id] == "1") != (want == "train"):
            continue
        rows.append({"uri": child(root, "images", *rel.split("/")), "label": labels[image_id] - 1,
                     "boxes": boxes.get(image_id)})
    return build(rows, classes, "cub", split, root)
