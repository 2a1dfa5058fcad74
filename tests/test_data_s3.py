"""Indexing and streaming from a real S3-protocol server on 127.0.0.1, through
the same pyarrow client code production uses; odd and broken files; sharding."""

import io
import re
import threading
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from cgc_ray.data import storage
from cgc_ray.data.embedded import CLASSES, ensure_embedded
from cgc_ray.data.indexers import load_or_build
from conftest import upload_tree

BUCKET = "data"
PER_CLASS = 6  # training images per class uploaded
N_VAL = 40


def _subset(rel):
    m = re.match(r"train/n\d+/n\d+_(\d+)\.JPEG$", rel)
    if m:
        return int(m.group(1)) < PER_CLASS
    m = re.match(r"val(?:_xml)?/ILSVRC2012_val_(\d+)\.", rel)
    return bool(m) and int(m.group(1)) <= N_VAL or rel == "LOC_synset_mapping.txt"


@pytest.fixture(scope="module")
def bucket(s3_server, tmp_path_factory):
    options, client = s3_server
    local = ensure_embedded(tmp_path_factory.mktemp("emb") / "embedded")
    upload_tree(client, local, BUCKET, "imagenet", only=_subset)
    return options, client, local


def test_s3_settings_follow_the_aws_variables(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://general:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific:2")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    kw = storage.s3_settings(storage.StorageOptions())
    assert (kw["endpoint_override"], kw["scheme"], kw["region"]) == ("s3-specific:2", "http", "eu-west-3")
    kw = storage.s3_settings(storage.StorageOptions(endpoint_url="https://given:3", region="us-east-2"))
    assert (kw["endpoint_override"], kw["scheme"], kw["region"]) == ("given:3", "https", "us-east-2")


def test_index_imagenet_val_from_s3_against_the_xml_files(bucket):
    options, _, local = bucket
    manifest, uri = load_or_build("imagenet", f"s3://{BUCKET}/imagenet", "val", options=options)
    assert uri == f"s3://{BUCKET}/imagenet/_cgc_manifests/imagenet-val.parquet"
    assert storage.exists(uri, options)
    rows = {r["uri"]: r for r in manifest.table.to_pylist()}
    assert len(rows) == N_VAL and manifest.classes == sorted(w for w, _ in CLASSES)
    for n in (1, 7, N_VAL):
        stem = f"ILSVRC2012_val_{n:08d}"
        xml = ET.parse(local / "val_xml" / f"{stem}.xml").getroot()
        row = rows[f"s3://{BUCKET}/imagenet/val/{stem}.JPEG"]
        assert row["class_name"] == xml.findtext("object/name")
        assert row["label"] == manifest.classes.index(xml.findtext("object/name"))
        xmin, ymin, xmax, ymax = (int(xml.findtext(f"object/bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
        assert row["boxes"] == [[xmin - 1, ymin - 1, xmax, ymax]]
    # a second call reads the cached manifest instead of indexing again
    client = bucket[1]
    client.delete_object(Bucket=BUCKET, Key="imagenet/val_xml/ILSVRC2012_val_00000001.xml")
    again, _ = load_or_build("imagenet", f"s3://{BUCKET}/imagenet", "val", options=options)
    assert again.table.equals(manifest.table)


def test_listing_pages_past_1000_objects(s3_server):
    options, client = s3_server
    client.create_bucket(Bucket="many")
    for i in range(1100):
        client.put_object(Bucket="many", Key=f"train/n1/{i:05d}.JPEG", Body=b"x")
    client.put_object(Bucket="many", Key="train/n2/a.JPEG", Body=b"x")
    got = storage.list_files("s3://many/train", (".jpeg",), options)
    assert len(got) == 1101 and got[0] == "s3://many/train/n1/00000.JPEG"


def test_unknown_label_fails_at_indexing_naming_the_file(s3_server, tmp_path):
    options, client = s3_server
    client.create_bucket(Bucket="badlabel")
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg, "JPEG")
    client.put_object(Bucket="badlabel", Key="in/train/n1/a.JPEG", Body=jpeg.getvalue())
    client.put_object(Bucket="badlabel", Key="in/val/ILSVRC2012_val_00000001.JPEG", Body=jpeg.getvalue())
    client.put_object(Bucket="badlabel", Key="in/val_xml/ILSVRC2012_val_00000001.xml",
                      Body=b"<annotation><object><name>n999</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                           b"<xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>")
    with pytest.raises(ValueError, match=r"ILSVRC2012_val_00000001.JPEG: label 'n999' is not a class"):
        load_or_build("imagenet", "s3://badlabel/in", "val", options=options)


ODD_KEYS = ["photo #1.jpg", "img?v=2.jpg", "50%.jpg", "a+b;c.jpg", "café ñ.jpg", "plain.jpg"]


def test_keys_with_url_characters_read_back_as_themselves(s3_server):
    """'#', '?', '%', '+', ';', spaces and non-ASCII are part of an S3 key, in a
    file name and in a class folder: every listed key indexes under its own
    class and reads back byte for byte."""
    from cgc_ray.data.views import decode_rgb

    options, client = s3_server
    client.create_bucket(Bucket="oddkeys")
    sent = {}
    for k, cls in enumerate(["plain", "type#2", "q?x", "50% off"]):
        for name in ODD_KEYS:
            body = io.BytesIO()
            Image.new("RGB", (16, 12), (40 * k, 100, 7)).save(body, "JPEG")
            key = f"set/train/{cls}/{name}"
            client.put_object(Bucket="oddkeys", Key=key, Body=body.getvalue())
            sent[f"s3://oddkeys/{key}"] = (cls, body.getvalue())
    manifest, _ = load_or_build("folder", "s3://oddkeys/set", "train", options=options)
    assert manifest.classes == sorted(["plain", "type#2", "q?x", "50% off"])
    rows = manifest.table.to_pylist()
    assert sorted(r["uri"] for r in rows) == sorted(sent)  # nothing dropped, nothing renamed
    for r in rows:
        cls, body = sent[r["uri"]]
        assert r["class_name"] == cls
        assert storage.read_bytes(r["uri"], options) == body
        assert decode_rgb(storage.read_bytes(r["uri"], options)).size == (16, 12)


def _odd_files():
    """Odd but valid files and broken ones, named like ImageNet training images."""
    good = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(good, "JPEG")
    truncated = good.getvalue()[: len(good.getvalue()) // 2]
    png, grey, cmyk = io.BytesIO(), io.BytesIO(), io.BytesIO()
    Image.new("RGB", (30, 40), (0, 0, 255)).save(png, "PNG")
    Image.new("L", (30, 30), 128).save(grey, "JPEG")
    Image.new("CMYK", (30, 30), (0, 255, 0, 0)).save(cmyk, "JPEG")
    files = {"odd_png.JPEG": png.getvalue(), "odd_grey.JPEG": grey.getvalue(), "odd_cmyk.JPEG": cmyk.getvalue(),
             "bad_empty.JPEG": b"", "bad_truncated.JPEG": truncated, "bad_garbage.JPEG": b"\x00garbage" * 10,
             "bad_missing.JPEG": good.getvalue()}
    return files


def _bad_objects(client, prefix):
    files = _odd_files()
    for name, body in files.items():
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/train/{CLASSES[0][0]}/{name}", Body=body)
    return files


@pytest.fixture(scope="module")
def odd_manifest(bucket):
    options, client, local = bucket
    upload_tree(client, local, BUCKET, "odd", only=_subset)
    files = _bad_objects(client, "odd")
    manifest, uri = load_or_build("imagenet", f"s3://{BUCKET}/odd", "train", options=options)
    client.delete_object(Bucket=BUCKET, Key=f"odd/train/{CLASSES[0][0]}/bad_missing.JPEG")  # gone after indexing
    return options, manifest, uri, files


def _rows(ds):
    return [r for b in ds.iter_batches(batch_size=16, batch_format="numpy") for r in zip(b["uri"], b["label"])]


def test_stream_an_epoch_skipping_and_counting_broken_files(ray_cluster, odd_manifest):
    import ray

    from cgc_ray.data.pipeline import DataSettings, open_ledger, train_dataset

    options, manifest, uri, files = odd_manifest
    settings = DataSettings(image_size=48, resize_size=56, storage=options, ledger="ledger-odd", decode_batch=8)
    ledger = open_ledger("ledger-odd")
    ds = train_dataset(uri, "official", settings)
    expected = {r["uri"]: r["label"] for r in manifest.table.to_pylist() if "/bad_" not in r["uri"]}
    assert len(expected) == PER_CLASS * len(CLASSES) + 3
    for _ in range(2):  # two epochs: every good row once each, right label
        rows = _rows(ds)
        assert len(rows) == len(expected) and dict(rows) == expected
    summary = ray.get(ledger.summary.remote())
    assert summary["skipped_images"] == 4  # distinct files: met twice, counted once
    assert {u.rsplit("/", 1)[1] for u, _ in summary["examples"]} == {n for n in files if n.startswith("bad_")}


def test_image_sizes_from_headers_over_s3(s3_server):
    """read_sizes against full decodes: odd formats, a header longer than the
    64 KiB first read (a large ICC profile), broken and missing objects."""
    from cgc_ray.data.pipeline import HEADER_BYTES, DataSettings, read_sizes

    options, client = s3_server
    client.create_bucket(Bucket="sizes")
    files = {name: body for name, body in _odd_files().items() if name != "bad_missing.JPEG"}
    big_icc = io.BytesIO()
    Image.new("RGB", (57, 31), (9, 9, 9)).save(big_icc, "JPEG", icc_profile=bytes(2 * HEADER_BYTES))
    files["big_icc.JPEG"] = big_icc.getvalue()
    for name, body in files.items():
        client.put_object(Bucket="sizes", Key=name, Body=body)
    names = [*files, "bad_missing.JPEG"]
    got = dict(zip(names, read_sizes([f"s3://sizes/{n}" for n in names], DataSettings(storage=options))))
    for name in ("odd_png.JPEG", "odd_grey.JPEG", "odd_cmyk.JPEG", "big_icc.JPEG"):
        assert got[name] == np.asarray(Image.open(io.BytesIO(files[name])).convert("RGB")).shape[:2], name
    bad = ("bad_empty.JPEG", "bad_garbage.JPEG", "bad_missing.JPEG", "bad_truncated.JPEG")  # cut before its scan
    assert [got[n] for n in bad] == [None] * 4
    assert storage.read_head("s3://sizes/big_icc.JPEG", 100, options) == files["big_icc.JPEG"][:100]


def test_too_many_broken_files_fail_clearly(ray_cluster, odd_manifest):
    from cgc_ray.data.pipeline import DataSettings, open_ledger, train_dataset

    options, _, uri, _ = odd_manifest
    settings = DataSettings(image_size=48, resize_size=56, storage=options, ledger="ledger-strict",
                            max_bad_images=2, decode_batch=8)
    ledger = open_ledger("ledger-strict")  # noqa: F841 (kept alive: a named actor dies with its last handle)
    with pytest.raises(Exception, match=r"[34] images could not be read, more than --max-bad-images 2 allows; "
                                        r"e.g. s3://\S+/bad_"):
        _rows(train_dataset(uri, "official", settings))


def test_data_config_keeps_the_data_context_and_adds_the_cap(ray_cluster):
    import ray
    from ray.data import DataContext, ExecutionResources

    from cgc_ray.data.pipeline import DataSettings, data_config

    ctx = DataContext.get_current()
    saved = ctx.execution_options
    try:
        ctx.execution_options = ray.data.ExecutionOptions(resource_limits=ExecutionResources(cpu=3),
                                                          exclude_resources=ExecutionResources(gpu=1))
        options = data_config(DataSettings(object_store_limit=2**30))._user_execution_options
        assert (options.resource_limits.cpu, options.resource_limits.object_store_memory) == (3, 2**30)
        assert options.exclude_resources.gpu == 1
    finally:
        ctx.execution_options = saved


def test_shards_cover_every_image_once_each_epoch(ray_cluster, bucket):
    """Two shards, two epochs: each image once per epoch, none on both shards.
    (That epochs reshuffle is `test_same_seed_same_order`'s, in a fixed order.)"""
    from cgc_ray.data.pipeline import DataSettings, train_dataset

    options = bucket[0]
    manifest, uri = load_or_build("imagenet", f"s3://{BUCKET}/imagenet", "train", options=options)
    settings = DataSettings(image_size=32, resize_size=36, storage=options, seed=7, decode_batch=8)
    shards = train_dataset(uri, "baseline", settings).streaming_split(2, equal=True)
    for _ in range(2):
        got = [[], []]

        def consume(k):
            for b in shards[k].iter_batches(batch_size=4, batch_format="numpy"):
                got[k].extend(b["uri"])

        threads = [threading.Thread(target=consume, args=(k,)) for k in (0, 1)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert len(got[0]) == len(got[1]) == len(manifest) // 2
        assert not set(got[0]) & set(got[1])
        assert set(got[0]) | set(got[1]) == set(manifest.table.column("uri").to_pylist())


def test_same_seed_same_order(ray_cluster, bucket):
    import ray

    from cgc_ray.data.pipeline import DataSettings, train_dataset

    options = bucket[0]
    _, uri = load_or_build("imagenet", f"s3://{BUCKET}/imagenet", "train", options=options)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    try:
        def order(seed):
            """Two epochs of one dataset, in order: the reshuffle is all that can change it."""
            ds = train_dataset(uri, "baseline", DataSettings(image_size=32, resize_size=36, storage=options, seed=seed))
            return [[u for u, _ in _rows(ds)] for _ in range(2)]
        (first, second), again, (other, _) = order(3), order(3), order(4)
    finally:
        ctx.execution_options.preserve_order = False
    assert [first, second] == again and first != other and sorted(first) == sorted(other) == sorted(second)
    assert np.mean([a == b for a, b in zip(first, other)]) < 0.2
    assert np.mean([a == b for a, b in zip(first, second)]) < 0.2  # each epoch its own order


def test_validation_views_carry_boxes_mapped_into_the_crop(ray_cluster, bucket):
    from cgc_ray.data.pipeline import DataSettings, val_dataset
    from cgc_ray.data.views import decode_rgb

    options = bucket[0]
    manifest, uri = load_or_build("imagenet", f"s3://{BUCKET}/imagenet", "val", options=options)
    rows = [r for b in val_dataset(uri, DataSettings(image_size=64, resize_size=72, storage=options))
            .iter_batches(batch_size=8, batch_format="numpy") for r in zip(b["uri"], b["boxes"], b["image"])]
    assert len(rows) == N_VAL
    by_uri = {r["uri"]: r for r in manifest.table.to_pylist()}
    for uri_, boxes, image in rows[:5]:
        # hand mapping: Resize(72) of the short side, then the 64 center crop
        img = decode_rgb(storage.read_bytes(uri_, options))
        w, h = img.size
        nw, nh = (72, int(72 * h / w)) if w <= h else (int(72 * w / h), 72)
        left, top = round((nw - 64) / 2), round((nh - 64) / 2)
        x0, y0, x1, y1 = by_uri[uri_]["boxes"][0]
        expected = np.clip([x0 * nw / w - left, y0 * nh / h - top, x1 * nw / w - left, y1 * nh / h - top], 0, 64)
        np.testing.assert_allclose(boxes[0], expected, rtol=1e-5, atol=1e-4)
        assert image.shape == (64, 64, 3)
