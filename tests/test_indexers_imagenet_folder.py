"""The ImageNet indexer's other layouts (LOC_val_solution.csv, a validation-only
copy, valprep class folders) and the plain folder indexer with a boxes file, on
tiny hand-written trees; expected rows written out by hand."""

import pytest

from cgc_ray.data.indexers import load_or_build
from conftest import jpeg, write


def rows(manifest):
    t = manifest.table.to_pydict()
    return [(u.rsplit("/", 1)[1], lab, b, w, h)
            for u, lab, b, w, h in zip(t["uri"], t["label"], t["boxes"], t["width"], t["height"])]


def one_val_image(root, annotation: str) -> None:
    """An ImageNet tree with class n01 and one validation image, whose XML
    holds `annotation` inside <annotation>."""
    jpeg(root / "train" / "n01" / "a.JPEG")
    jpeg(root / "val" / "ILSVRC2012_val_00000001.JPEG")
    write(root / "val_xml" / "ILSVRC2012_val_00000001.xml", f"<annotation>{annotation}</annotation>")


def box_xml(xmin, ymin, xmax, ymax) -> str:
    return (f"<object><name>n01</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
            f"<ymax>{ymax}</ymax></bndbox></object>")


SIZE_20x10 = "<size><width>20</width><height>10</height></size>"


def test_val_only_copy_labelled_by_loc_val_solution(tmp_path):
    """No train/: the classes are LOC_synset_mapping.txt's wnids, sorted; labels
    and boxes from the CSV (1-based inclusive, as the XML); only the boxes of
    the image's own class; the CSV has no image sizes."""
    for n in (1, 2, 3):
        jpeg(tmp_path / "val" / f"ILSVRC2012_val_0000000{n}.JPEG")
    write(tmp_path / "LOC_synset_mapping.txt", "n03 three\nn01 one, uno\nn02 two\n")
    write(tmp_path / "LOC_val_solution.csv", "ImageId,PredictionString\n"
          "ILSVRC2012_val_00000001,n02 1 2 10 8 \n"
          "ILSVRC2012_val_00000002,n03 5 5 6 6 n01 1 1 3 3 n03 2 3 4 5\n"
          "ILSVRC2012_val_00000003,n01 3 1 12 8\n")
    manifest, _ = load_or_build("imagenet", str(tmp_path), "val")
    assert manifest.classes == ["n01", "n02", "n03"]
    assert rows(manifest) == [
        ("ILSVRC2012_val_00000001.JPEG", 1, [[0, 1, 10, 8]], None, None),
        ("ILSVRC2012_val_00000002.JPEG", 2, [[4, 4, 6, 6], [1, 2, 4, 5]], None, None),
        ("ILSVRC2012_val_00000003.JPEG", 0, [[2, 0, 12, 8]], None, None)]
    assert manifest.table.column("class_name").to_pylist() == ["n02", "n03", "n01"]


def test_val_without_train_or_class_list_is_named(tmp_path):
    jpeg(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(FileNotFoundError, match="neither train/<wnid>/ folders nor LOC_synset_mapping.txt"):
        load_or_build("imagenet", str(tmp_path), "val")


def test_valprep_class_folders_with_xml_boxes(tmp_path):
    """val/<wnid>/ labels the images; the XML adds boxes of that class (none
    when the XML only has another class) and the image size."""
    for w in ("n01", "n02"):
        (tmp_path / "train" / w).mkdir(parents=True)
    jpeg(tmp_path / "val" / "n01" / "ILSVRC2012_val_00000001.JPEG")
    jpeg(tmp_path / "val" / "n02" / "ILSVRC2012_val_00000002.JPEG")
    xml = ("<annotation><size><width>{w}</width><height>{h}</height></size><object><name>{n}</name><bndbox>"
           "<xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object></annotation>")
    write(tmp_path / "val_xml" / "ILSVRC2012_val_00000001.xml", xml.format(w=12, h=8, n="n01", b=(2, 3, 7, 8)))
    write(tmp_path / "val_xml" / "ILSVRC2012_val_00000002.xml", xml.format(w=12, h=8, n="n01", b=(1, 1, 2, 2)))
    manifest, _ = load_or_build("imagenet", str(tmp_path), "val")
    assert rows(manifest) == [("ILSVRC2012_val_00000001.JPEG", 0, [[1, 2, 7, 8]], 12, 8),
                              ("ILSVRC2012_val_00000002.JPEG", 1, None, 12, 8)]


def test_folder_tree_with_boxes_file(tmp_path):
    for rel in ("cat/a.jpg", "cat/b.png", "dog/c.jpeg"):
        jpeg(tmp_path / "train" / rel)
    write(tmp_path / "train_boxes.csv", "path,xmin,ymin,xmax,ymax\ncat/a.jpg,1,1,4,4\ncat/a.jpg,2,3,12,8\n"
                                        "dog/c.jpeg,5,2,6,7\n")
    manifest, _ = load_or_build("folder", str(tmp_path), "train")
    assert manifest.classes == ["cat", "dog"]
    assert [r[:3] for r in rows(manifest)] == [("a.jpg", 0, [[0, 0, 4, 4], [1, 2, 12, 8]]), ("b.png", 0, None),
                                               ("c.jpeg", 1, [[4, 1, 6, 7]])]
    write(tmp_path / "train_boxes.csv", "path,xmin,ymin,xmax,ymax\ncat/zzz.jpg,1,1,4,4\n")
    with pytest.raises(ValueError, match=r"train_boxes.csv names images that are not in .*\['.*cat/zzz.jpg'\]"):
        load_or_build("folder", str(tmp_path), "train", rebuild=True)


def test_any_fsspec_url_through_the_same_storage_code(tmp_path):
    """A memory:// tree (fsspec's in-process filesystem): indexed and read like s3:// or a local path."""
    import fsspec

    from cgc_ray.data.storage import read_bytes

    for rel in ("cat/a.jpg", "dog/c.jpeg"):
        jpeg(tmp_path / "train" / rel)
    write(tmp_path / "train_boxes.csv", "path,xmin,ymin,xmax,ymax\ndog/c.jpeg,5,2,6,7\n")
    mem = fsspec.filesystem("memory")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            mem.pipe(f"/tree/{path.relative_to(tmp_path).as_posix()}", path.read_bytes())
    manifest, uri = load_or_build("folder", "memory://tree", "train")
    assert uri.startswith("memory://tree/_cgc_manifests/")
    assert [r[:3] for r in rows(manifest)] == [("a.jpg", 0, None), ("c.jpeg", 1, [[4, 1, 6, 7]])]
    first = manifest.table.column("uri")[0].as_py()
    assert first.startswith("memory://") and read_bytes(first) == (tmp_path / "train" / "cat" / "a.jpg").read_bytes()


def test_a_shared_manifest_cache_never_hands_one_root_anothers_images(tmp_path):
    """--manifest-dir shared by two roots of one kind, and a root whose files changed."""
    from cgc_ray.data.indexers import cache_uri, load_or_build

    for root, classes, per in (("A", ("cat", "dog"), 16), ("B", ("cat", "dog", "owl"), 16)):
        for c in classes:
            for i in range(per):
                jpeg(tmp_path / root / "train" / c / f"{i}.jpg")
    cache = str(tmp_path / "cache")
    got = {}
    for root in ("A", "B"):
        r = str(tmp_path / root)
        got[root] = load_or_build("folder", r, "train", cache_uri(cache, "folder", r, "train"))[0]
    assert (len(got["A"]), got["A"].classes) == (32, ["cat", "dog"])
    assert (len(got["B"]), got["B"].classes, got["B"].root) == (48, ["cat", "dog", "owl"], str(tmp_path / "B"))
    # one file given for both roots (an old cache name): B is indexed again, not served A's rows
    shared = str(tmp_path / "one.parquet")
    load_or_build("folder", str(tmp_path / "A"), "train", shared)
    assert len(load_or_build("folder", str(tmp_path / "B"), "train", shared)[0]) == 48
    # files added to A: the cache keeps the old count until --reindex (rebuild=True)
    for i in range(8):
        jpeg(tmp_path / "A" / "train" / "cat" / f"new{i}.jpg")
    where = cache_uri(cache, "folder", str(tmp_path / "A"), "train")
    assert len(load_or_build("folder", str(tmp_path / "A"), "train", where)[0]) == 32
    assert len(load_or_build("folder", str(tmp_path / "A"), "train", where, rebuild=True)[0]) == 40


@pytest.mark.parametrize("bndbox,message", [
    ("", r"val_xml/ILSVRC2012_val_00000001.xml: an <object> without <bndbox>"),
    ("<bndbox><xmin>1</xmin><ymin></ymin><xmax>5</xmax><ymax>6</ymax></bndbox>",
     r"ILSVRC2012_val_00000001.xml <object> n01: box field ymin is '', not a number"),
    ("<bndbox><xmin>1</xmin><ymin>x</ymin><xmax>5</xmax><ymax>6</ymax></bndbox>",
     r"ILSVRC2012_val_00000001.xml <object> n01: box field ymin is 'x', not a number"),
])
def test_broken_box_files_are_named_with_the_field(tmp_path, bndbox, message):
    one_val_image(tmp_path, f"<object><name>n01</name>{bndbox}</object>")
    with pytest.raises(ValueError, match=message):
        load_or_build("imagenet", str(tmp_path), "val")


def test_box_corners_in_the_wrong_order_are_put_in_order(tmp_path):
    one_val_image(tmp_path, box_xml(9, 2, 3, 7))
    manifest, uri = load_or_build("imagenet", str(tmp_path), "val")
    assert manifest.table.column("boxes").to_pylist() == [[[2.0, 1.0, 9.0, 7.0]]]  # VOC 3..9 x 2..7, 0-based edges
    assert manifest.notes == {"boxes_reordered": 1}
    assert load_or_build("imagenet", str(tmp_path), "val", uri)[0].notes == {"boxes_reordered": 1}  # from the cache


def test_a_box_with_no_area_inside_its_image_is_dropped_and_counted(tmp_path):
    """Issue 14.6: the XML gives the image size (20 x 10); a box wholly
    outside it, or touching it only along an edge, is no usable box."""
    jpeg(tmp_path / "train" / "n01" / "a.JPEG")
    objects = {1: [(3, 2, 9, 7), (25, 2, 30, 7)],   # one inside, one right of the image
               2: [(21, 1, 30, 5)],                 # 0-based x from 20: only outside
               3: [(1, 11, 5, 15)]}                 # below the image
    for n, boxes in objects.items():
        jpeg(tmp_path / "val" / f"ILSVRC2012_val_0000000{n}.JPEG")
        write(tmp_path / "val_xml" / f"ILSVRC2012_val_0000000{n}.xml",
              f"<annotation>{SIZE_20x10}{''.join(box_xml(*b) for b in boxes)}</annotation>")
    manifest, _ = load_or_build("imagenet", str(tmp_path), "val")
    assert manifest.table.column("boxes").to_pylist() == [[[2.0, 1.0, 9.0, 7.0]], [], []]
    assert manifest.notes == {"boxes_outside_image": 3, "images_without_usable_box": 2}


def test_folder_boxes_file_without_a_column_is_named(tmp_path):
    jpeg(tmp_path / "train" / "cat" / "a.jpg")
    write(tmp_path / "train_boxes.csv", "path,xmin,ymin,xmax\ncat/a.jpg,1,1,4\n")
    with pytest.raises(ValueError, match=r"train_boxes.csv: no column ymax"):
        load_or_build("folder", str(tmp_path), "train")


def test_a_cache_from_before_the_box_checks_is_indexed_again(tmp_path):
    """A format-1 manifest (written before boxes outside the image were
    dropped and counted) is rebuilt, not served with its silent zero counts."""
    import json

    import pyarrow.parquet as pq

    one_val_image(tmp_path, SIZE_20x10 + box_xml(25, 2, 30, 7))
    _, uri = load_or_build("imagenet", str(tmp_path), "val")
    table = pq.read_table(uri)
    meta = json.loads(table.schema.metadata[b"cgc_ray"])
    pq.write_table(table.replace_schema_metadata({"cgc_ray": json.dumps({**meta, "format": 1, "notes": {}})}), uri)
    assert load_or_build("imagenet", str(tmp_path), "val", uri)[0].format == 2  # read back: rebuilt
    again, _ = load_or_build("imagenet", str(tmp_path), "val", uri)
    assert again.format == 2 and again.notes == {"boxes_outside_image": 1, "images_without_usable_box": 1}
