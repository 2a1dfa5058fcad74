"""UnRel: the table of its object names to ImageNet classes, and the
`annotations.mat` reader on a file in the download's layout.

The layout is the one public loaders of the real file index into (see
`cgc_ray/data/indexers/unrel.py`): an N x 1 cell array of 1 x 1 structs
(filename, im_id, relationships, objects), objects and relationships K x 1
cell arrays of 1 x 1 structs, boxes 1 x 4 doubles [xmin ymin xmax ymax]
(1-based). The test first checks that the written file answers those
loaders' own index chains, then reads it with `index_unrel`."""

import numpy as np
import pytest

from cgc_ray.data.indexers import unrel

scipy_io = pytest.importorskip("scipy.io")


def cell(items):
    """A K x 1 MATLAB cell array (dicts are saved as 1 x 1 structs)."""
    out = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        out[i, 0] = item
    return out


def box(*xyxy):
    return np.array([xyxy], dtype=float)  # 1 x 4 double


def obj(category, *xyxy):
    return {"category": category, "box": box(*xyxy)}


def rel(sub, obj_, sub_box, obj_box, *rels):
    return {"sub": sub, "obj": obj_, "sub_box": box(*sub_box), "obj_box": box(*obj_box), "rels": cell(list(rels))}


# (filename, im_id, relationships, objects): the field order the positional loaders rely on
IMAGES = [
    ("46.jpg", 46, [rel("car", "tree", (187, 86, 458, 210), (23, 1, 511, 332), "in")],
     [obj("car", 187, 86, 458, 210), obj("tree", 23, 1, 511, 332), obj("person", 176, 330, 410, 797)]),
    ("663.jpg", 663, [rel("person", "car", (10, 75, 219, 443), (119, 271, 172, 297), "hold")],
     [obj("person", 10, 75, 219, 443), obj("car", 119, 271, 172, 297), obj("car", 299, 251, 372, 283),
      obj("car", 119, 271, 172, 297)]),  # a duplicate box: counts once
    ("1122.jpg", 1122, [rel("person", "plane", (237, 74, 502, 583), (247, 8, 381, 137), "hold", "carry")],
     [obj("plane", 247, 8, 381, 137)]),  # one object: a 1 x 1 cell
    ("292.jpg", 292, [], [obj("person", 50, 195, 198, 382), obj("refrigerator", 3, 1, 274, 419)]),
    ("202.jpg", 202, [rel("dog", "traffic light", (429, 25, 745, 609), (1, 1, 9, 9), "wear")],
     [obj("dog", 429, 25, 745, 609), obj("traffic light", 1, 1, 9, 9), obj("motorcycle", 1, 2, 30, 40)]),
]


def write_annotations(path):
    annotations = cell([{"filename": f, "im_id": float(i), "relationships": cell(r), "objects": cell(o)}
                        for f, i, r, o in IMAGES])
    scipy_io.savemat(path / "annotations.mat", {"annotations": annotations})


def test_fixture_answers_the_public_loaders(tmp_path):
    write_annotations(tmp_path)
    ann = scipy_io.loadmat(tmp_path / "annotations.mat")["annotations"]
    assert ann.shape == (len(IMAGES), 1)
    for i, (filename, im_id, rels, objects) in enumerate(IMAGES):
        # princetonvisualai/ContextualBias UnRel/data_process.py: positions 0 and 3
        assert ann[i][0][0][0][0][0] == filename
        assert [o[0][0][0][0][0] for o in ann[i][0][0][0][3]] == [o["category"] for o in objects]
        # deeplab-ai/zs-vrd-bmvc20 unrel_transformer_class.py: relationships at position 2
        got = [(r[0][0][0][0][0], r[0][0][0][1][0], list(r[0][0][0][2][0]), r[0][0][0][4][0][0][0])
               for r in ann[i][0][0][0][2]]
        assert got == [(r["sub"], r["obj"], list(r["sub_box"][0]), r["rels"][0, 0]) for r in rels]
        # baldassarreFe/ws-vrd catalog.py: by field name, .item() chains
        d = ann[i].squeeze(0).item()
        assert d["filename"].item().item() == filename and d["im_id"].item().item() == im_id
        boxes = [tuple(o.squeeze(0).item()["box"].squeeze(0).item().squeeze(0)) for o in d["objects"].item()]
        assert boxes == [tuple(o["box"][0]) for o in objects]


def test_index_unrel_reads_the_download_layout(tmp_path):
    write_annotations(tmp_path)
    m = unrel.index_unrel(str(tmp_path))
    rows = [(r["uri"].rsplit("/", 2)[1:], r["class_name"], r["label"], r["boxes"]) for r in m.table.to_pylist()]
    cat = unrel.CATEGORIES.index
    # names -> the table's categories (plane -> airplane; person, tree, refrigerator, traffic light unmapped);
    # 1-based inclusive [xmin ymin xmax ymax] -> 0-based edges [xmin-1, ymin-1, xmax, ymax]
    assert rows == [
        (["images", "1122.jpg"], "airplane", cat("airplane"), [[246, 7, 381, 137]]),
        (["images", "202.jpg"], "dog", cat("dog"), [[428, 24, 745, 609]]),
        (["images", "202.jpg"], "motorcycle", cat("motorcycle"), [[0, 1, 30, 40]]),
        (["images", "46.jpg"], "car", cat("car"), [[186, 85, 458, 210]]),
        (["images", "663.jpg"], "car", cat("car"), [[118, 270, 172, 297], [298, 250, 372, 283]]),
    ]
    assert m.classes == unrel.CATEGORIES and m.dataset == "unrel" and m.split == "test"


def test_struct_array_layout_is_read_too(tmp_path):
    """A 1 x N struct array with struct-array objects (as MATLAB saves `[s1 s2]`)."""
    objs = np.zeros((1, 2), dtype=[("category", object), ("box", object)])
    objs[0, 0] = ("bicycle", box(1, 1, 10, 10))
    objs[0, 1] = ("pizza", box(5, 6, 7, 8))
    ann = np.zeros((1, 1), dtype=[("filename", object), ("objects", object)])
    ann[0, 0] = ("x/a.jpg", objs)
    scipy_io.savemat(tmp_path / "annotations.mat", {"annotations": ann})
    rows = [(r["uri"].rsplit("/", 3)[1:], r["class_name"], r["boxes"]) for r in unrel.index_unrel(str(tmp_path)).table.to_pylist()]
    assert rows == [(["images", "x", "a.jpg"], "bike", [[0, 0, 10, 10]]), (["images", "x", "a.jpg"], "pizza", [[4, 5, 7, 8]])]


def test_unrel_table():
    assert len(unrel.WNIDS) == 28 and unrel.CATEGORIES == sorted(unrel.WNIDS)
    for name, wnids in unrel.WNIDS.items():
        assert all(len(w) == 9 and w.startswith("n") for w in wnids), name
    classes = ["n02085620", "n02099601", "n02114367", "n04507155", "n02690373"]  # 2 dogs, wolf, umbrella, airliner
    assert unrel.wnid_set("dog", classes) == [0, 1]
    assert unrel.class_sets(["umbrella", "airplane"], classes) == [[3], [4]]
    assert unrel.category("Plane") == "airplane" and unrel.category("person") is None
    with pytest.raises(ValueError, match="cat"):
        unrel.class_sets(["cat"], classes)
