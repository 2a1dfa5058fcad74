"""Stanford Cars (196 classes); the root holds one of these layouts, tried in order:

1. CSV (no header): cars_train/ and cars_test/ image folders, anno_train.csv /
   anno_test.csv with rows "<file>,<x1>,<y1>,<x2>,<y2>,<class 1..196>" and
   names.csv, the class names one a line in label order.
2. cars_annos.mat (the full release, read with scipy): struct "annotations"
   (relative_im_path, bbox_x1..bbox_y2, class, test) and cell "class_names";
   images at <root>/<relative_im_path>.
3. The devkit: devkit/cars_meta.mat (class_names), devkit/cars_train_annos.mat
   and cars_test_annos_withlabels.mat (root or devkit/), structs with fname,
   bbox_x1..bbox_y2, class; images in cars_train/ and cars_test/.

Boxes are 1-based inclusive -> VOC edges. Splits "train" and "test"; "val" is
an alias of "test".
"""

from __future__ import annotations

import csv
import io

from ..manifest import Manifest, build, voc_to_edges
from ..storage import StorageOptions, exists, read_bytes
from . import child, register
from .cub import canonical_split, number

BOX = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")


@register("cars")
def index_cars(root: str, split: str, options: StorageOptions = StorageOptions()) -> Manifest:
    want = canonical_split("cars", split)
    if exists(child(root, f"anno_{want}.csv"), options):
        classes, records, ann_uri = _csv(root, want, options)
    elif exists(child(root, "cars_annos.mat"), options):
        classes, records, ann_uri = _full_mat(root, want, options)
    else:
        classes, records, ann_uri = _devkit(root, want, options)
    rows = []
    for uri, box, label in records:
        if not 1 <= label <= len(classes):
            raise ValueError(f"{ann_uri}: {uri} has class {label}, not one of the {len(classes)} class names")
        rows.append({"uri": uri, "label": label - 1, "boxes": [voc_to_edges(*box, where=f"{ann_uri} {uri}")]})
    return build(rows, classes, "cars", split, root)


def _csv(root, want, options):
    names_uri, ann_uri = child(root, "names.csv"), child(root, f"anno_{want}.csv")
    classes = [line.strip() for line in read_bytes(names_uri, options).decode("utf-8-sig").splitlines()
               if line.strip()]
    records = []
    for n, rec in enumerate(csv.reader(io.StringIO(read_bytes(ann_uri, options).decode("utf-8-sig"))), 1):
        if not rec:
            continue
        if len(rec) != 6:
            raise ValueError(f"{ann_uri}:{n}: expected file,x1,y1,x2,y2,class, got {rec}")
        box = [number(v, f"{ann_uri}:{n}") for v in rec[1:5]]
        records.append((child(root, f"cars_{want}", rec[0].strip()), box, number(rec[5], f"{ann_uri}:{n}", int)))
    return classes, records, ann_uri


def _loadmat(uri, options):
    try:
        from scipy.io import loadmat  # noqa: PLC0415: only for the .mat layouts
    except ImportError as e:
        raise ImportError(f"reading {uri} needs scipy (pip install scipy), or use the CSV layout") from e
    return loadmat(io.BytesIO(read_bytes(uri, options)), squeeze_me=True)


def _structs(mat, key, uri):
    import numpy as np  # noqa: PLC0415

    if key not in mat:
        raise ValueError(f"{uri}: no {key!r} variable")
    return np.atleast_1d(mat[key])


def _names(mat, uri):
    return [str(n) for n in _structs(mat, "class_names", uri)]


def _full_mat(root, want, options):
    uri = child(root, "cars_annos.mat")
    mat = _loadmat(uri, options)
    records = [(child(root, *str(a["relative_im_path"]).split("/")), [float(a[k]) for k in BOX], int(a["class"]))
               for a in _structs(mat, "annotations", uri) if bool(int(a["test"])) == (want == "test")]
    return _names(mat, uri), records, uri


def _devkit(root, want, options):
    meta = child(root, "devkit", "cars_meta.mat")
    if want == "train":
        uri = child(root, "devkit", "cars_train_annos.mat")
    else:
        uri = next((u for u in (child(root, "cars_test_annos_withlabels.mat"),
                                child(root, "devkit", "cars_test_annos_withlabels.mat")) if exists(u, options)),
                   child(root, "cars_test_annos_withlabels.mat"))
    if not exists(meta, options) or not exists(uri, options):
        raise FileNotFoundError(f"cars: {root} has neither anno_{want}.csv, cars_annos.mat nor {meta} + {uri}")
    structs = _structs(_loadmat(uri, options), "annotations", uri)
    if len(structs) and "class" not in structs.dtype.names:
        raise ValueError(f"{uri}: no 'class' field (the unlabelled test file? use cars_test_annos_withlabels.mat)")
    records = [(child(root, f"cars_{want}", str(a["fname"])), [float(a[k]) for k in BOX], int(a["class"]))
               for a in structs]
    return _names(_loadmat(meta, options), meta), records, uri
