"""Oxford Flowers-102 as downloaded; the root holds:

- jpg/image_XXXXX.jpg (5-digit, 1-based image ids);
- imagelabels.mat: "labels", the class 1..102 of each image in id order;
- setid.mat: "trnid", "valid", "tstid", the image ids of each official split;
- optionally cat_to_name.json: {"1": name, ...}; otherwise names are class_001..class_102.

Read with scipy.io.loadmat. As in the paper, "train" = trnid + valid and
"test" = tstid; "val" is an alias of "test". No boxes.
"""

from __future__ import annotations

import io
import json

from ..manifest import Manifest, build
from ..storage import StorageOptions, exists, read_bytes
from . import child, register
from .cub import canonical_split

NUM_CLASSES = 102
SPLITS = {"train": ("trnid", "valid"), "test": ("tstid",)}


@register("flowers")
def index_flowers(root: str, split: str, options: StorageOptions = StorageOptions()) -> Manifest:
    want = canonical_split("flowers", split)
    try:
        from scipy.io import loadmat  # noqa: PLC0415: optional dependency
    except ImportError as e:
        raise ImportError("the flowers indexer reads imagelabels.mat / setid.mat with scipy: pip install scipy") from e
    import numpy as np  # noqa: PLC0415

    labels_uri, setid_uri = child(root, "imagelabels.mat"), child(root, "setid.mat")
    labels = np.atleast_1d(loadmat(io.BytesIO(read_bytes(labels_uri, options)), squeeze_me=True)["labels"])
    setid = loadmat(io.BytesIO(read_bytes(setid_uri, options)), squeeze_me=True)
    bad = [int(v) for v in labels if not 1 <= int(v) <= NUM_CLASSES]
    if bad:
        raise ValueError(f"{labels_uri}: labels {sorted(set(bad))[:5]} are not in 1..{NUM_CLASSES}")
    classes = _class_names(root, options)
    ids = sorted(int(i) for key in SPLITS[want] for i in np.atleast_1d(setid[key]))
    rows = []
    for image_id in ids:
        if not 1 <= image_id <= len(labels):
            raise ValueError(f"{setid_uri}: image id {image_id} has no label in imagelabels.mat ({len(labels)} labels)")
        rows.append({"uri": child(root, "jpg", f"image_{image_id:05d}.jpg"), "label": int(labels[image_id - 1]) - 1})
    return build(rows, classes, "flowers", split, root)


def _class_names(root: str, options: StorageOptions) -> list[str]:
    uri = child(root, "cat_to_name.json")
    if not exists(uri, options):
        return [f"class_{k:03d}" for k in range(1, NUM_CLASSES + 1)]
    names = json.loads(read_bytes(uri, options))
    missing = [k for k in range(1, NUM_CLASSES + 1) if str(k) not in names]
    if missing:
        raise ValueError(f"{uri}: no name for classes {missing[:5]}")
    return [str(names[str(k)]) for k in range(1, NUM_CLASSES + 1)]
