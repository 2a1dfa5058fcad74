"""UnRel (Peyre, Sivic, Laptev, Schmid, ICCV 2017: images of unusual relations,
"a car in a tree") for evaluating ImageNet classifiers, and the table that maps
its object names to ImageNet classes.

THE TABLE IS OURS. UnRel names objects with the 100-word vocabulary of the
Visual Relationship Dataset; ImageNet-1k has no class for many of them (person,
giraffe, building, road, ...) and ImageNet's "kite" is the bird. `WNIDS` keeps
28 object names whose ImageNet-1k classes are unambiguous, each as the set of
wnids that count as a correct prediction:

    airplane bag ball bear bench bike boat bottle bus car cat chair clock
    computer cup dog elephant helmet horse laptop motorcycle phone pizza sofa
    table train truck umbrella

(`ALIASES` folds plane -> airplane, bicycle -> bike, motorbike -> motorcycle.)

The evaluation on UnRel: one row per (image, mapped object name in it), the
name's boxes as the row's boxes. A prediction counts when the model's top-1
(top-5) class is in the name's set. Grad-CAM (CH, insertion AUC, figures) is
taken for the class of the set that the model scores highest on the
centre-cropped image: the "ground-truth class" of a many-class label.

Raw layouts read, in this order:
- `<root>/annotations.mat` + `<root>/images/<filename>` (the UnRel download).
  `annotations` is an N x 1 cell array of 1 x 1 structs with fields
  `filename`, `im_id`, `relationships`, `objects`; `objects` is a K x 1 cell
  array of 1 x 1 structs with `category` (a VRD name, e.g. "plane") and `box`
  (1 x 4 double, [xmin ymin xmax ymax]); `relationships` (cells of structs
  `sub`, `obj`, `sub_box`, `obj_box`, `rels`) only repeats objects' boxes and
  is not read. Boxes are MATLAB's 1-based inclusive pixels (they reach the
  image's width and height, and start at 1), as in the VOC/ImageNet files.
  This layout follows public loaders of the file, not a specification:
  baldassarreFe/ws-vrd `src/xib/datasets/unrel/catalog.py` and
  `notebooks/UnRel/UnRel.ipynb` (field names, nesting, box order),
  princetonvisualai/ContextualBias `UnRel/data_process.py` and
  deeplab-ai/zs-vrd-bmvc20 `prerequisites/dataset_transformers/
  unrel_transformer_class.py` (field positions). Struct arrays instead of
  cells are read too. Needs scipy (the `unrel` extra).
- `<root>/annotations.csv` + `<root>/images/` (a documented simple layout):
  columns image, category, xmin, ymin, xmax, ymax; `image` relative to
  images/; boxes 1-based inclusive, one row per box.

A box listed twice for the same name and image counts once.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict

import numpy as np

from ...errors import MissingData
from ..manifest import Manifest, build, voc_to_edges
from ..storage import StorageOptions, exists, read_bytes
from . import child, register

# wnid ranges (inclusive, in the sorted order of ImageNet's class folders)
_DOGS = ("n02085620", "n02113978")   # Chihuahua .. Mexican hairless: classes 151-268
_CATS = ("n02123045", "n02124075")   # tabby .. Egyptian cat: 281-285
_BEARS = ("n02132136", "n02134418")  # brown bear .. sloth bear: 294-297

WNIDS: dict[str, tuple] = {
    "airplane": ("n02690373", "n04552348"),  # airliner, warplane
    "bag": ("n02769748", "n04026417", "n03709823"),  # backpack, purse, mailbag
    "ball": ("n02799071", "n02802426", "n03134739", "n03445777", "n03942813",  # baseball, basketball, croquet,
             "n04118538", "n04254680", "n04409515", "n04540053"),  # golf, ping-pong, rugby, soccer, tennis, volleyball
    "bear": _BEARS,
    "bench": ("n03891251",),  # park bench
    "bike": ("n02835271", "n03792782"),  # tandem, mountain bike
    "boat": ("n02951358", "n02981792", "n03095699", "n03344393", "n03447447", "n03662601",  # canoe, catamaran,
             "n03673027", "n03947888", "n04147183", "n04273569", "n04483307", "n04612504"),  # ..., yawl
    "bottle": ("n02823428", "n03937543", "n03983396", "n04557648", "n04591713"),  # beer, pill, pop, water, wine
    "bus": ("n03769881", "n04146614", "n04487081"),  # minibus, school bus, trolleybus
    "car": ("n02701002", "n02814533", "n02930766", "n03100240", "n03594945",  # ambulance, beach wagon, cab,
            "n03670208", "n03770679", "n03777568", "n04037443", "n04285008"),  # convertible, jeep, ..., sports car
    "cat": _CATS,
    "chair": ("n02791124", "n03376595", "n04099969", "n04429376"),  # barber, folding, rocking chair, throne
    "clock": ("n02708093", "n03196217", "n04548280"),  # analog, digital, wall clock
    "computer": ("n03180011", "n03642806", "n03832673", "n03485407"),  # desktop, laptop, notebook, hand-held
    "cup": ("n07930864", "n03063599"),  # cup, coffee mug
    "dog": _DOGS,
    "elephant": ("n01871265", "n02504013", "n02504458"),  # tusker, Indian, African elephant
    "helmet": ("n03127747", "n03379051"),  # crash helmet, football helmet
    "horse": ("n02389026",),  # sorrel
    "laptop": ("n03642806", "n03832673"),  # laptop, notebook
    "motorcycle": ("n03785016", "n03791053"),  # moped, motor scooter
    "phone": ("n02992529", "n03187595", "n03902125"),  # cellular, dial telephone, pay-phone
    "pizza": ("n07873807",),
    "sofa": ("n04344873",),  # studio couch
    "table": ("n03201208", "n03179701"),  # dining table, desk
    "train": ("n02917067", "n03272562", "n03393912",  # bullet train, electric locomotive, freight car,
              "n03895866", "n04310018"),  # passenger car, steam locomotive
    "truck": ("n03345487", "n03417042", "n03796401",  # fire engine, garbage truck, moving van,
              "n03930630", "n04461696", "n04467665"),  # pickup, tow truck, trailer truck
    "umbrella": ("n04507155",),
}
RANGES = {"dog", "cat", "bear"}
ALIASES = {"plane": "airplane", "aeroplane": "airplane", "bicycle": "bike", "motorbike": "motorcycle"}
CATEGORIES = sorted(WNIDS)


def category(name: str) -> str | None:
    """The table's name for an UnRel object name, or None if it is not mapped."""
    key = " ".join(str(name).lower().replace("_", " ").split())
    key = ALIASES.get(key, key)
    return key if key in WNIDS else None


def wnid_set(name: str, wnids: list[str]) -> list[int]:
    """Indices in `wnids` (a classifier's classes) that count as `name`."""
    spec = WNIDS[name]
    if name in RANGES:
        lo, hi = spec
        return [i for i, w in enumerate(wnids) if lo <= w <= hi]
    index = {w: i for i, w in enumerate(wnids)}
    return [index[w] for w in spec if w in index]


def class_sets(categories: list[str], wnids: list[str], needed=None) -> list[list[int]]:
    """Per category (a manifest's classes), the classifier's classes that count;
    every category in `needed` (default: all) must have at least one."""
    sets = [wnid_set(c, wnids) for c in categories]
    empty = [c for c, s in zip(categories, sets) if not s and (needed is None or c in needed)]
    if empty:
        raise ValueError(f"the checkpoint has none of the ImageNet classes of UnRel categories {empty}; "
                         "UnRel needs a classifier over ImageNet wnids")
    return sets


@register("unrel")
def index_unrel(root: str, split: str = "test", options: StorageOptions = StorageOptions()) -> Manifest:
    """UnRel as a manifest: one row per (image, mapped object name), with that name's boxes."""
    if exists(child(root, "annotations.mat"), options):
        objects = _mat_objects(read_bytes(child(root, "annotations.mat"), options))
    elif exists(child(root, "annotations.csv"), options):
        objects = _csv_objects(read_bytes(child(root, "annotations.csv"), options).decode())
    else:
        raise MissingData(f"UnRel: neither annotations.mat nor annotations.csv in {root}")
    boxes: dict[tuple[str, str], list] = defaultdict(list)
    for image, name, box in objects:
        key, edges = (image, category(name)), voc_to_edges(*box)
        if key[1] is not None and edges not in boxes[key]:
            boxes[key].append(edges)
    rows = [{"uri": child(root, "images", *image.split("/")), "label": CATEGORIES.index(name), "boxes": b}
            for (image, name), b in sorted(boxes.items())]
    return build(rows, CATEGORIES, "unrel", split, root)


def _csv_objects(text: str) -> list[tuple[str, str, list[float]]]:
    return [(r["image"], r["category"], [float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")])
            for r in csv.DictReader(io.StringIO(text))]


def _mat_objects(data: bytes) -> list[tuple[str, str, list[float]]]:
    from scipy.io import loadmat  # noqa: PLC0415: only for the .mat layout

    mat = loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)
    return [(str(ann.filename), str(obj.category), [float(v) for v in np.ravel(obj.box)])
            for ann in _structs(mat["annotations"]) for obj in _structs(getattr(ann, "objects", None))]


def _structs(value) -> list:
    """The structs in a struct, a struct array or a cell array of them (any
    nesting), in MATLAB's order, as loadmat(squeeze_me=True,
    struct_as_record=False) returns them; [] for an empty or missing field."""
    from scipy.io.matlab import mat_struct  # noqa: PLC0415

    if isinstance(value, mat_struct):
        return [value]
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [s for v in value.ravel(order="F") for s in _structs(v)]
    return []
