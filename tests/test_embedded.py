"""The embedded default data set: layout, boxes, determinism, self-repair."""

import xml.etree.ElementTree as ET

from PIL import Image

from cgc_ray.data.embedded import CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, ensure_embedded


def test_layout_and_boxes(tmp_path):
    root = ensure_embedded(tmp_path / "emb")
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(w for w, _ in CLASSES)
    assert len(list((root / "train").glob("*/*.JPEG"))) == TRAIN_PER_CLASS * len(CLASSES)
    vals = sorted((root / "val").glob("*.JPEG"))
    assert len(vals) == VAL_PER_CLASS * len(CLASSES)
    for img_path in vals[:20]:
        obj = ET.parse(root / "val_xml" / (img_path.stem + ".xml")).getroot()
        w, h = Image.open(img_path).size
        assert (int(obj.findtext("size/width")), int(obj.findtext("size/height"))) == (w, h)
        box = [int(obj.findtext(f"object/bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
        assert 1 <= box[0] < box[2] <= w and 1 <= box[1] < box[3] <= h
        assert obj.findtext("object/name") in dict(CLASSES)


def test_deterministic_and_repaired(tmp_path):
    a = ensure_embedded(tmp_path / "a")
    b = ensure_embedded(tmp_path / "b")
    some = sorted(a.glob("train/*/*.JPEG"))[::97]
    assert all(p.read_bytes() == (b / p.relative_to(a)).read_bytes() for p in some)
    victim = some[0]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])  # truncated
    (a / "val_xml" / "ILSVRC2012_val_00000003.xml").unlink()  # missing
    assert ensure_embedded(a) == a
    assert victim.read_bytes() == good
    assert (a / "val_xml" / "ILSVRC2012_val_00000003.xml").exists()
