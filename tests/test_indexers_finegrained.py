"""Fine-grained indexers (cub, aircraft, cars, flowers) on tiny hand-written raw layouts."""

import json
import os

import numpy as np
import pytest
import scipy.io as sio

from cgc_ray.data.indexers import INDEXERS, get_indexer, load_or_build
from conftest import jpeg, write


def rows(manifest):
    t = manifest.table.to_pydict()
    return list(zip(t["uri"], t["label"], t["class_name"], t["boxes"]))


def check_cached(name, root, split, manifest, raw_files):
    """The second call reads <root>/_cgc_manifests/<name>-<split>.parquet, not the raw files."""
    cached = os.path.join(str(root), "_cgc_manifests", f"{name}-{split}.parquet")
    assert os.path.isfile(cached)
    for f in raw_files:
        f.rename(f.with_name(f.name + ".gone"))
    again, uri = load_or_build(name, str(root), split)
    assert uri == cached
    assert rows(again) == rows(manifest) and again.classes == manifest.classes
    assert (again.dataset, again.split) == (name, split)
    for f in raw_files:
        f.with_name(f.name + ".gone").rename(f)


def test_registered():
    get_indexer("cub")
    assert {"cub", "aircraft", "cars", "flowers"} <= set(INDEXERS)


# --- CUB-200-2011 -----------------------------------------------------------------

CUB_IMAGES = {1: "001.Black_footed_Albatross/a_1.jpg", 2: "001.Black_footed_Albatross/a_2.jpg",
              3: "002.Laysan_Albatross/b_1.jpg", 4: "003.Sooty_Albatross/c_1.jpg",
              5: "003.Sooty_Albatross/c_2.jpg"}


def make_cub(root, labels=None):
    labels = labels or {1: 1, 2: 1, 3: 2, 4: 3, 5: 3}
    for rel in CUB_IMAGES.values():
        jpeg(root / "images" / rel)
    write(root / "classes.txt", "1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n3 003.Sooty_Albatross\n")
    write(root / "images.txt", "".join(f"{i} {r}\n" for i, r in CUB_IMAGES.items()))
    write(root / "image_class_labels.txt", "".join(f"{i} {c}\n" for i, c in labels.items()))
    write(root / "train_test_split.txt", "1 1\n2 0\n3 1\n4 0\n5 1\n")
    write(root / "bounding_boxes.txt", "1 1.0 2.0 5.0 4.0\n2 0.0 0.0 12.0 8.0\n3 3.5 1.5 2.0 2.5\n"
          "4 2.0 3.0 4.0 1.0\n")  # image 5 has no box


def test_cub(tmp_path):
    root = tmp_path / "CUB_200_2011"
    make_cub(root)
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    img = lambda i: str(root / "images" / CUB_IMAGES[i])  # noqa: E731
    train, uri = load_or_build("cub", str(root), "train")
    assert uri == str(root / "_cgc_manifests" / "cub-train.parquet")
    assert train.classes == classes and len(train) == 3 and train.has_boxes
    assert rows(train) == [(img(1), 0, classes[0], [[1.0, 2.0, 6.0, 6.0]]),
                           (img(3), 1, classes[1], [[3.5, 1.5, 5.5, 4.0]]),
                           (img(5), 2, classes[2], None)]
    test, _ = load_or_build("cub", str(root), "test")
    assert rows(test) == [(img(2), 0, classes[0], [[0.0, 0.0, 12.0, 8.0]]),
                          (img(4), 2, classes[2], [[2.0, 3.0, 6.0, 4.0]])]
    val, uri = load_or_build("cub", str(root), "val")  # alias of test
    assert rows(val) == rows(test) and uri.endswith("cub-val.parquet")
    check_cached("cub", root, "train", train, [root / "images.txt", root / "image_class_labels.txt"])


def test_cub_errors(tmp_path):
    root = tmp_path / "cub"
    make_cub(root, labels={1: 1, 2: 1, 3: 4, 4: 3, 5: 3})
    with pytest.raises(ValueError, match="image_class_labels.txt"):
        load_or_build("cub", str(root), "train")
    make_cub(root)
    write(root / "train_test_split.txt", "1 1\n2 0\n3 1\n4 0\n")  # image 5 missing
    with pytest.raises(ValueError, match="train_test_split.txt"):
        load_or_build("cub", str(root), "test")
    with pytest.raises(ValueError, match="'train' and 'test'"):
        load_or_build("cub", str(root), "trainval")


# --- FGVC-Aircraft ----------------------------------------------------------------

AIRCRAFT_VARIANTS = ["707-320", "A300B4", "F-16A/B", "Cessna 172"]


def make_aircraft(root, test_list="0000004 Cessna 172\n0000005 F-16A/B\n"):
    for i in range(1, 7):
        jpeg(root / "images" / f"{i:07d}.jpg")
    write(root / "variants.txt", "\n".join(AIRCRAFT_VARIANTS) + "\n")
    write(root / "images_variant_trainval.txt", "0000001 A300B4\n0000002 Cessna 172\n0000003 707-320\n")
    write(root / "images_variant_train.txt", "0000001 A300B4\n0000002 Cessna 172\n")
    write(root / "images_variant_val.txt", "0000003 707-320\n")
    write(root / "images_variant_test.txt", test_list)
    write(root / "images_box.txt", "0000001 1 1 12 8\n0000002 3 2 10 7\n0000003 5 5 6 6\n"
          "0000004 2 3 4 5\n0000005 10 1 12 2\n")


def test_aircraft(tmp_path):
    root = tmp_path / "fgvc-aircraft-2013b" / "data"
    make_aircraft(root)
    img = lambda i: str(root / "images" / f"{i:07d}.jpg")  # noqa: E731
    train, _ = load_or_build("aircraft", str(root), "train")  # = trainval
    assert train.classes == AIRCRAFT_VARIANTS
    assert rows(train) == [(img(1), 1, "A300B4", [[0.0, 0.0, 12.0, 8.0]]),
                           (img(2), 3, "Cessna 172", [[2.0, 1.0, 10.0, 7.0]]),
                           (img(3), 0, "707-320", [[4.0, 4.0, 6.0, 6.0]])]
    test, _ = load_or_build("aircraft", str(root), "test")
    assert rows(test) == [(img(4), 3, "Cessna 172", [[1.0, 2.0, 4.0, 5.0]]),
                          (img(5), 2, "F-16A/B", [[9.0, 0.0, 12.0, 2.0]])]
    assert rows(load_or_build("aircraft", str(root), "val")[0]) == rows(test)
    check_cached("aircraft", root, "test", test, [root / "images_variant_test.txt", root / "variants.txt"])


def test_aircraft_unknown_variant(tmp_path):
    make_aircraft(tmp_path, test_list="0000004 Cessna 172\n0000006 Boeing 747-400\n")
    with pytest.raises(ValueError, match=r"images_variant_test\.txt.*Boeing 747-400"):
        load_or_build("aircraft", str(tmp_path), "test")


# --- Stanford Cars ----------------------------------------------------------------

CAR_NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "BMW M3 Coupe 2012"]


def make_cars_csv(root, train_csv="00001.jpg,1,2,10,8,3\n00002.jpg,4,4,12,6,1\n"):
    for name in ("00001.jpg", "00002.jpg"):
        jpeg(root / "cars_train" / name)
    jpeg(root / "cars_test" / "00001.jpg")
    write(root / "names.csv", "\n".join(CAR_NAMES) + "\n")
    write(root / "anno_train.csv", train_csv)
    write(root / "anno_test.csv", "00001.jpg,2,3,5,7,2\n")


def test_cars_csv(tmp_path):
    make_cars_csv(tmp_path)
    train, _ = load_or_build("cars", str(tmp_path), "train")
    assert train.classes == CAR_NAMES
    assert rows(train) == [(str(tmp_path / "cars_train" / "00001.jpg"), 2, CAR_NAMES[2], [[0.0, 1.0, 10.0, 8.0]]),
                           (str(tmp_path / "cars_train" / "00002.jpg"), 0, CAR_NAMES[0], [[3.0, 3.0, 12.0, 6.0]])]
    test, _ = load_or_build("cars", str(tmp_path), "test")
    assert rows(test) == [(str(tmp_path / "cars_test" / "00001.jpg"), 1, CAR_NAMES[1], [[1.0, 2.0, 5.0, 7.0]])]
    check_cached("cars", tmp_path, "train", train, [tmp_path / "anno_train.csv", tmp_path / "names.csv"])


def test_cars_unknown_class(tmp_path):
    make_cars_csv(tmp_path, train_csv="00001.jpg,1,2,10,8,3\n00002.jpg,4,4,12,6,4\n")
    with pytest.raises(ValueError, match=r"anno_train\.csv.*00002\.jpg"):
        load_or_build("cars", str(tmp_path), "train")


def struct_array(records, fields):
    out = np.zeros((1, len(records)), dtype=[(f, "O") for f in fields])
    for k, rec in enumerate(records):
        out[0, k] = tuple(rec)
    return out


def test_cars_full_mat(tmp_path):
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    anns = [("car_ims/000001.jpg", 1, 1, 12, 8, 2, 0), ("car_ims/000002.jpg", 2, 3, 4, 5, 3, 1),
            ("car_ims/000003.jpg", 5, 1, 9, 2, 1, 0)]
    for rec in anns:
        jpeg(tmp_path / rec[0])
    sio.savemat(tmp_path / "cars_annos.mat", {"annotations": struct_array(anns, fields),
                                              "class_names": np.array([CAR_NAMES], dtype=object)})
    train, _ = load_or_build("cars", str(tmp_path), "train")
    assert train.classes == CAR_NAMES
    assert rows(train) == [(str(tmp_path / "car_ims" / "000001.jpg"), 1, CAR_NAMES[1], [[0.0, 0.0, 12.0, 8.0]]),
                           (str(tmp_path / "car_ims" / "000003.jpg"), 0, CAR_NAMES[0], [[4.0, 0.0, 9.0, 2.0]])]
    test, _ = load_or_build("cars", str(tmp_path), "test")
    assert rows(test) == [(str(tmp_path / "car_ims" / "000002.jpg"), 2, CAR_NAMES[2], [[1.0, 2.0, 4.0, 5.0]])]


def test_cars_devkit(tmp_path):
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    (tmp_path / "devkit").mkdir()
    sio.savemat(tmp_path / "devkit" / "cars_meta.mat", {"class_names": np.array([CAR_NAMES], dtype=object)})
    sio.savemat(tmp_path / "devkit" / "cars_train_annos.mat",
                {"annotations": struct_array([(1, 2, 3, 4, 3, "00001.jpg")], fields)})
    sio.savemat(tmp_path / "cars_test_annos_withlabels.mat",
                {"annotations": struct_array([(5, 6, 7, 8, 1, "00001.jpg"), (1, 1, 2, 2, 9, "00002.jpg")], fields)})
    train, _ = load_or_build("cars", str(tmp_path), "train")
    assert rows(train) == [(str(tmp_path / "cars_train" / "00001.jpg"), 2, CAR_NAMES[2], [[0.0, 1.0, 3.0, 4.0]])]
    with pytest.raises(ValueError, match=r"cars_test_annos_withlabels\.mat.*00002\.jpg"):
        load_or_build("cars", str(tmp_path), "test")


# --- Oxford Flowers-102 -----------------------------------------------------------

def make_flowers(root, labels=(5, 1, 102, 5, 40, 1, 77)):
    for i in range(1, len(labels) + 1):
        jpeg(root / "jpg" / f"image_{i:05d}.jpg")
    sio.savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    sio.savemat(root / "setid.mat", {"trnid": np.array([[6, 1]], dtype=np.uint16),
                                     "valid": np.array([[3]], dtype=np.uint16),
                                     "tstid": np.array([[7, 2, 4, 5]], dtype=np.uint16)})


def test_flowers(tmp_path):
    make_flowers(tmp_path)
    img = lambda i: str(tmp_path / "jpg" / f"image_{i:05d}.jpg")  # noqa: E731
    train, _ = load_or_build("flowers", str(tmp_path), "train")  # trnid + valid
    assert len(train.classes) == 102 and train.classes[0] == "class_001" and train.classes[101] == "class_102"
    assert not train.has_boxes
    assert rows(train) == [(img(1), 4, "class_005", None), (img(3), 101, "class_102", None),
                           (img(6), 0, "class_001", None)]
    test, _ = load_or_build("flowers", str(tmp_path), "test")
    assert [(u, lab) for u, lab, _, _ in rows(test)] == [(img(2), 0), (img(4), 4), (img(5), 39), (img(7), 76)]
    assert rows(load_or_build("flowers", str(tmp_path), "val")[0]) == rows(test)
    check_cached("flowers", tmp_path, "test", test, [tmp_path / "imagelabels.mat", tmp_path / "setid.mat"])


def test_flowers_names_and_errors(tmp_path):
    make_flowers(tmp_path)
    (tmp_path / "cat_to_name.json").write_text(json.dumps({str(k): f"flower {k}" for k in range(1, 103)}))
    train, _ = load_or_build("flowers", str(tmp_path), "train")
    assert train.classes[4] == "flower 5" and rows(train)[0][2] == "flower 5"
    bad = tmp_path / "bad"
    make_flowers(bad, labels=(5, 1, 103, 5, 40, 1, 77))
    with pytest.raises(ValueError, match=r"imagelabels\.mat"):
        load_or_build("flowers", str(bad), "train")
