"""The evaluation job on a real local Ray cluster, against independent oracles:
the one-image-at-a-time core functions, a plain top-1 and a direct
heatmap_consistency on the same fixed batches, computed here image by image
from files decoded with PIL and preprocessed with torchvision."""

import csv
import dataclasses
import importlib.util
import io
import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image

from cgc_ray.data.embedded import CLASSES, ensure_embedded
from cgc_ray.data.indexers import load_or_build
from cgc_ray.data.manifest import build
from cgc_ray.data.manifest import read as read_manifest
from cgc_ray.data.manifest import write as write_manifest
from cgc_ray.data.storage import StorageOptions
from cgc_ray.data.pipeline import open_ledger
from cgc_ray.evaluation import content_heatmap_single, insertion_auc_single
from cgc_ray.evaluation import job
from cgc_ray.gradcam import CamNet
from cgc_ray.objective import CGCConfig, heatmap_consistency
from cgc_ray.transforms import crop_resize_flip, sample_crop_flip

WNIDS = [w for w, _ in CLASSES]
STEP = 224 * 56  # insertion steps of 224*56 pixels (5 canvases, not RISE's 29): the same code path, cheaper
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def save_checkpoint(directory, seed, classes, recipe="official", lam=1.0, tau=0.5):
    """A training checkpoint's layout (state.pt with "model", meta.json), random weights."""
    directory.mkdir(parents=True)
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=len(classes))
    torch.save({"model": model.state_dict(), "position": {"epoch": 1}}, directory / "state.pt")
    meta = {"arch": "resnet18", "classes": classes, "layer": "layer4", "recipe": recipe, "lam": lam,
            "tau": tau, "epoch": 1, "step_in_epoch": 0, "global_step": 10}
    (directory / "meta.json").write_text(json.dumps(meta))
    return str(directory)


def oracle_model(directory):
    state = torch.load(f"{directory}/state.pt", weights_only=False)["model"]
    model = torchvision.models.resnet18(num_classes=state["fc.weight"].shape[0])
    model.load_state_dict(state)
    return model.eval()


def read_image(path):
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


def as_float(image):
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


def center_crop(image):
    """Resize 256 + centre crop 224 + normalise, torchvision's functional ops."""
    return TF.normalize(TF.center_crop(TF.resize(as_float(image), 256, antialias=True), 224), MEAN, STD)


def squash(image):
    return TF.normalize(TF.resize(as_float(image), [224, 224], antialias=True), MEAN, STD)


def direct_cgc(model, images, uris, seed=0, tau=0.5):
    """L_CGC of one batch: centre crops, T drawn per image from (seed, crc32(uri)), official arrangement."""
    query = torch.stack([center_crop(im) for im in images])
    ts = [sample_crop_flip(224, 224, np.random.default_rng([seed, zlib.crc32(u.encode())])) for u in uris]
    crop = torch.tensor([c for c, _ in ts])
    flip = torch.tensor([f for _, f in ts])
    net = CamNet(model, "layer4")
    with torch.no_grad():
        q, a = net(query, crop_resize_flip(query, crop, flip))
        loss = heatmap_consistency(net, q, a, crop, flip, (224, 224), CGCConfig(tau=tau))
    net.remove()
    return float(loss)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {"base": save_checkpoint(root / "base", 0, WNIDS, "baseline", 0.0),
            "cgc": save_checkpoint(root / "cgc", 1, WNIDS)}


@pytest.fixture(scope="module")
def embedded_val():
    root = str(ensure_embedded())
    return load_or_build("embedded", root, "val")[0]


# ---------------------------------------------------------------- (a) distributed == one image at a time

@pytest.fixture(scope="module")
def small_set(tmp_path_factory, embedded_val):
    """9 embedded images and an unreadable file at row 2; row 4's box leaves its
    image; row 6's only box lies wholly right of its image (size unknown to the
    manifest, so only the decoded image shows it: no usable box)."""
    folder = tmp_path_factory.mktemp("small")
    rows = embedded_val.table.slice(0, 9).to_pylist()
    for r in rows:
        r["uri"] = shutil.copy(r["uri"], folder)
    bad = folder / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    rows.insert(2, {"uri": str(bad), "label": 3, "boxes": [[0, 0, 5, 5]]})
    h, w = read_image(rows[4]["uri"]).shape[:2]
    rows[4]["boxes"] = [[-10.0, -5.0, w + 7.0, 30.0], *rows[4]["boxes"]]
    w6 = read_image(rows[6]["uri"]).shape[1]
    rows[6].update(boxes=[[w6 + 3.0, 0.0, w6 + 20.0, 10.0]], width=None, height=None)
    return build(rows, WNIDS, "embedded", "val", str(folder))


def test_distributed_results_equal_the_one_image_core(ray_cluster, ckpts, small_set):
    cfg = job.EvalConfig(checkpoints=(ckpts["cgc"],), batch_size=4, iauc_limit=2, iauc_step=STEP,
                         short_side=224, threads=2)
    sets = [job.class_sets("embedded", small_set.classes, WNIDS)]
    ledger = open_ledger("test-eval-ledger")
    batches = list(job.result_batches(cfg, job.rows_table(small_set), sets, "test-eval-ledger"))
    got = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    assert ray.get(ledger.summary.remote())["skipped_images"] == 1
    ray.kill(ledger)

    kept = [i for i in range(10) if i != 2]
    assert got["index"].tolist() == kept  # manifest order, the unreadable image skipped
    model = oracle_model(ckpts["cgc"])
    rows = small_set.table.to_pylist()
    images = [read_image(rows[i]["uri"]) for i in kept]
    labels = [rows[i]["label"] for i in kept]
    with torch.no_grad():
        pred = model(torch.stack([center_crop(im) for im in images])).argmax(1)
    assert got["top1_0"].tolist() == (pred == torch.tensor(labels)).float().tolist()

    # CH: its own pass over the images with boxes, in input-shape order (see below)
    assert "ch_0" not in got
    ch_batches = list(job.result_batches(cfg, job.ch_rows(cfg, job.rows_table(small_set)), sets, part="ch"))
    ch_got = dict(zip(*(np.concatenate([b[k] for b in ch_batches]).tolist() for k in ("index", "ch_0"))))
    assert sorted(ch_got) == kept
    ch = [content_heatmap_single(model, im, rows[i]["boxes"], rows[i]["label"], short_side=224)
          for i, im in zip(kept, images)]
    np.testing.assert_allclose([ch_got[i] for i in kept], [c for c, _ in ch], rtol=0, atol=1e-5)
    assert got["clamped"].tolist() == [n for _, n in ch] == [0, 0, 0, 1, 0, 1, 0, 0, 0]  # manifest rows 4, 6
    assert np.isnan(ch_got[6]) and not np.isnan([ch_got[i] for i in kept if i != 6]).any()  # not CH 0
    assert got["no_usable_box"].tolist() == [i == 6 for i in kept]

    iauc = [insertion_auc_single(model, squash(im), y, step=STEP)[0] for im, y in zip(images[:2], labels[:2])]
    np.testing.assert_allclose(got["iauc_0"][:2], iauc, rtol=0, atol=1e-5)
    assert np.isnan(got["iauc_0"][2:]).all()  # --iauc-limit 2: manifest rows 0 and 1 only

    # CGC: batches of 4 consecutive decoded images; the last, partial batch has none.
    uris = [rows[i]["uri"] for i in kept]
    expected = [direct_cgc(model, images[s:s + 4], uris[s:s + 4]) for s in (0, 4)]
    np.testing.assert_allclose(got["cgc_0"][[0, 4]], expected, rtol=1e-5, atol=1e-5)
    assert np.isnan(np.delete(got["cgc_0"], [0, 4])).all()


def test_ch_rows_by_input_shape_with_sizes_read_where_unknown(ray_cluster, ckpts, small_set, tmp_path):
    """The CH pass's order: by the protocol's input shape (from the full decode
    here), then manifest order; sizes the manifest lacks are read from the
    image headers (and stored in the cached manifest); the unreadable image,
    whose size cannot be known, last."""
    forget = np.isin(np.arange(len(small_set)), [0, 1, 5])
    forgot = small_set.table
    for name in ("width", "height"):
        values = [None if f else v for f, v in zip(forget, forgot.column(name).to_pylist())]
        forgot = forgot.set_column(forgot.schema.get_field_index(name), name, pa.array(values, pa.int32()))
    manifest = dataclasses.replace(small_set, table=forgot)
    table = job.rows_table(manifest)
    rows = table.to_pylist()
    readable = [i for i in range(table.num_rows) if i != 2]
    decoded = {i: read_image(rows[i]["uri"]).shape[:2] for i in readable}
    for short_side in (224, 100):
        cfg = job.EvalConfig(checkpoints=(ckpts["cgc"],), short_side=short_side)
        shape = {i: TF.resize(torch.zeros(1, *decoded[i]), short_side).shape[1:]
                 for i in readable}  # torchvision's Resize(short_side) output size
        expected = sorted(readable, key=lambda i: (tuple(shape[i]), i)) + [2]
        got = job.ch_rows(cfg, table)
        assert got.column("index").to_pylist() == expected
    assert [(r["height"], r["width"]) for r in got.to_pylist()] == [decoded.get(i, (None, None)) for i in expected]
    write_manifest(manifest, str(tmp_path / "m.parquet"))
    job.store_sizes(manifest, str(tmp_path / "m.parquet"), got, StorageOptions())
    stored = read_manifest(str(tmp_path / "m.parquet")).table
    assert list(zip(stored.column("height").to_pylist(), stored.column("width").to_pylist())) == [
        decoded.get(i, (None, None)) for i in range(table.num_rows)]
    crop = job.EvalConfig(checkpoints=(ckpts["cgc"],), ch_protocol="center_crop")
    assert job.ch_rows(crop, table).column("index").to_pylist() == list(range(table.num_rows))


# ---------------------------------------------------------------- (b) the job end to end, (c) its CGC column

@pytest.fixture(scope="module")
def e2e(ray_cluster, ckpts, tmp_path_factory):
    spec = importlib.util.spec_from_file_location("evaluate_job", Path(__file__).parents[1] / "jobs" / "evaluate.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    out = tmp_path_factory.mktemp("eval") / "out"
    rc = entry.main(["--checkpoint", ckpts["base"], "--checkpoint", ckpts["cgc"], "--limit", "32",
                     "--iauc-limit", "1", "--iauc-step", str(STEP), "--ch-protocol", "center_crop",
                     "--figures", "2", "--out", str(out), "--threads", "2"])
    assert rc == 0
    return out


def test_job_writes_the_tables_and_the_figure(e2e):
    with open(e2e / "results.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["Method", "Top-1", "CH", "CGC loss", "IAUC"]
    assert [r[0] for r in table[1:]] == ["baseline", "official (lambda 1)"]
    for row in table[1:]:
        top1, ch, cgc, iauc = map(float, row[1:])
        assert 0 <= top1 <= 100 and 0 < ch < 100 and cgc > 0 and 0 <= iauc <= 1

    md = (e2e / "results.md").read_text()
    assert "| Method | Top-1 | CH | CGC loss | IAUC |" in md and "## Protocol" in md and "center_crop" in md
    summary = json.loads((e2e / "results.json").read_text())
    assert summary["data"]["images"] == 32 and summary["data"]["skipped_images"] == 0
    assert summary["data"]["cgc_batches"] == 1 and summary["data"]["cgc_images_dropped"] == 0
    assert summary["settings"]["ch_protocol"] == "center_crop" and summary["settings"]["limit"] == 32
    for r in summary["results"]:
        assert r["counts"] == {"top1": 32, "top5": 32, "ch": 32, "iauc": 1, "cgc": 1}

    with Image.open(e2e / "figures.png") as png:
        assert png.format == "PNG"
        assert png.size == (3 * 224, 24 + 2 * 224)  # image + 2 checkpoints, header + 2 images


def test_cgc_column_equals_heatmap_consistency_on_the_same_batch(e2e, ckpts, embedded_val):
    rows = embedded_val.table.slice(0, 32).to_pylist()  # --limit 32: one batch of 32
    images = [read_image(r["uri"]) for r in rows]
    summary = json.loads((e2e / "results.json").read_text())
    with open(e2e / "results.csv", newline="") as f:
        column = [float(r["CGC loss"]) for r in csv.DictReader(f)]
    for k, name in enumerate(("base", "cgc")):
        expected = direct_cgc(oracle_model(ckpts[name]), images, [r["uri"] for r in rows])
        assert summary["results"][k]["cgc"] == pytest.approx(expected, rel=1e-5, abs=1e-5)
        assert column[k] == pytest.approx(expected, abs=5e-5)  # 4 decimals


def test_flags_take_their_defaults_from_the_config_fields(tmp_path, monkeypatch):
    """One statement of each default (the EvalConfig field): the parsed command
    line without options equals the dataclass's defaults."""
    monkeypatch.chdir(tmp_path)
    got = job.parse(["--checkpoint", "c"])
    assert got == job.EvalConfig(checkpoints=(str(tmp_path / "c"),), out=str(tmp_path / "eval"))
    got = job.parse(["--checkpoint", "c", "--metrics", "top1, ch", "--no-skip-bad", "--short-side", "96",
                     "--dataset", "unrel", "--data", "/u"])
    assert (got.metrics, got.skip_bad, got.short_side, got.split) == (("top1", "ch"), False, 96, "test")


def test_figure_images_chosen_or_seeded(embedded_val):
    table = job.rows_table(embedded_val, 10)
    chosen = job.EvalConfig(checkpoints=("x",), images=("ILSVRC2012_val_00000012.JPEG", "ILSVRC2012_val_00000003.JPEG"))
    assert [r["uri"].rsplit("_", 1)[1] for r in job.figure_rows(chosen, embedded_val, table)] == [
        "00000012.JPEG", "00000003.JPEG"]  # given order, even past --limit
    seeded = job.EvalConfig(checkpoints=("x",), figures=3, seed=5)
    picks = job.figure_rows(seeded, embedded_val, table)
    assert picks == job.figure_rows(seeded, embedded_val, table) and len({r["uri"] for r in picks}) == 3
    assert {r["uri"] for r in picks} <= set(table.column("uri").to_pylist())
    with pytest.raises(job.EvalError, match="nope.jpg"):
        job.figure_rows(job.EvalConfig(checkpoints=("x",), images=("nope.jpg",)), embedded_val, table)


def test_unrel_accuracy_and_ch_with_s3_checkpoint_and_output(ray_cluster, s3_server, tmp_path, embedded_val):
    """The simple layout (images/ + annotations.csv): rows per mapped object, a
    prediction right when in the category's set, CH of the set's top class.
    The checkpoint is read from, and the tables written to, S3 (a local server)."""
    from conftest import upload_tree

    (tmp_path / "data" / "images").mkdir(parents=True)
    src = embedded_val.table.slice(0, 3).column("uri").to_pylist()
    for i, uri in enumerate(src):
        shutil.copy(uri, tmp_path / "data" / "images" / f"u{i}.jpg")
    (tmp_path / "data" / "annotations.csv").write_text(
        "image,category,xmin,ymin,xmax,ymax\n"
        "u0.jpg,dog,11,21,80,90\nu0.jpg,person,1,1,20,20\nu0.jpg,dog,50,10,100,40\n"
        "u1.jpg,umbrella,5,5,60,70\nu2.jpg,plane,30,30,90,100\nu2.jpg,giraffe,1,1,9,9\n")
    classes = ["n02085620", "n02099601", "n04507155", "n02690373", "n04552348", "n01440764"]
    ckpt = save_checkpoint(tmp_path / "ckpt", 2, classes)
    options, client = s3_server
    upload_tree(client, ckpt, "cgc-eval", "runs/unrel")
    cfg = job.EvalConfig(checkpoints=("s3://cgc-eval/runs/unrel",), dataset="unrel", data=str(tmp_path / "data"),
                         split="test", metrics=("top1", "ch"), short_side=224, figures=1, out="s3://cgc-eval/eval",
                         s3_endpoint=options.endpoint_url, s3_region=options.region, threads=2)
    summary = job.run(cfg)
    text = client.get_object(Bucket="cgc-eval", Key="eval/results.csv")["Body"].read().decode().splitlines()
    assert text[0] == "Method,Top-1,CH,CGC loss,IAUC" and text[1].startswith("official (lambda 1),")
    png = client.get_object(Bucket="cgc-eval", Key="eval/figures.png")["Body"].read()
    assert Image.open(io.BytesIO(png)).size == (2 * 224, 24 + 224)

    sets = {"dog": [0, 1], "umbrella": [2], "airplane": [3, 4]}
    truth = [("u0.jpg", "dog", [[10, 20, 80, 90], [49, 9, 100, 40]]), ("u1.jpg", "umbrella", [[4, 4, 60, 70]]),
             ("u2.jpg", "airplane", [[29, 29, 90, 100]])]
    model = oracle_model(ckpt)
    hits, chs = [], []
    for name, category, boxes in truth:
        image = read_image(tmp_path / "data" / "images" / name)
        with torch.no_grad():
            logits = model(center_crop(image)[None])[0]
        hits.append(int(logits.argmax()) in sets[category])
        target = sets[category][int(logits[sets[category]].argmax())]
        chs.append(content_heatmap_single(model, image, boxes, target, short_side=224)[0])
    result = summary["results"][0]
    assert summary["data"]["images"] == 3
    assert result["top1"] == pytest.approx(100 * np.mean(hits))
    assert result["ch"] == pytest.approx(100 * np.mean(chs), abs=1e-4)



# ---------------------------------------------------------------- (d) bad input: named, or skipped on request

@pytest.fixture(scope="module")
def unboxed(tmp_path_factory, embedded_val):
    """A manifest of 6 embedded images, rows 1 and 4 without boxes (their class
    absent from the annotation; row 4's only box lies outside the image size
    the annotation gives), row 3's only box outside its decoded image (size
    not in the manifest)."""
    rows = embedded_val.table.slice(0, 6).to_pylist()
    rows[1]["boxes"] = None
    rows[4].update(boxes=[[-30.0, 0.0, -1.0, 10.0]], width=rows[4]["width"] or 64, height=rows[4]["height"] or 64)
    rows[3].update(boxes=[[0.0, 1000.0, 10.0, 1010.0]], width=None, height=None)
    path = str(tmp_path_factory.mktemp("unboxed") / "val.parquet")
    write_manifest(build(rows, WNIDS, "embedded", "val", embedded_val.root), path)
    return path, [rows[i]["uri"] for i in (1, 4)]


@pytest.fixture(scope="module")
def misfits(tmp_path_factory, ckpts):
    """A checkpoint whose state.pt is for 5 classes while meta.json lists 10,
    and one whose classes lack the data set's."""
    root = tmp_path_factory.mktemp("misfits")
    wrong_size = save_checkpoint(root / "size", 3, WNIDS[:5])
    meta = json.loads((root / "size" / "meta.json").read_text())
    (root / "size" / "meta.json").write_text(json.dumps({**meta, "classes": WNIDS}))
    return wrong_size, save_checkpoint(root / "other", 4, [f"other{i}" for i in range(10)])


def test_bad_checkpoints_and_unboxed_images_are_named(ckpts, misfits, unboxed, tmp_path):
    manifest, missing = unboxed
    base = dict(manifest=manifest, figures=0, metrics=("top1",), out=str(tmp_path))
    with pytest.raises(job.EvalError, match=rf"--checkpoint {misfits[0]}: state.pt does not fit its meta.json "
                                            r"\(Error\(s\) in loading state_dict"):
        job.run(job.EvalConfig(checkpoints=(ckpts["cgc"], misfits[0]), **base))
    with pytest.raises(job.EvalError, match=rf"--checkpoint {misfits[1]}: the checkpoint's classes lack 6 of"):
        job.run(job.EvalConfig(checkpoints=(misfits[1],), **base))
    with pytest.raises(job.EvalError, match=rf"Content Heatmap needs boxes: 2 of 6 images have no usable box "
                                            r"for their class \(none annotated, or none with area inside the "
                                            rf"image\), e.g. {missing[0]}, {missing[1]}; pass --skip-bad"):
        job.run(job.EvalConfig(checkpoints=(ckpts["cgc"],), **{**base, "metrics": ("top1", "ch")}))


def test_skip_bad_evaluates_the_rest(ray_cluster, ckpts, misfits, unboxed, tmp_path):
    manifest, missing = unboxed
    summary = job.run(job.parse(["--checkpoint", misfits[0], "--checkpoint", ckpts["cgc"], "--checkpoint", misfits[1],
                                 "--label", "bad", "--label", "good", "--label", "other", "--manifest", manifest,
                                 "--metrics", "top1,ch", "--figures", "0", "--skip-bad", "--short-side", "160",
                                 "--out", str(tmp_path), "--threads", "2"]))
    assert [r["method"] for r in summary["results"]] == ["good"]
    assert [s["checkpoint"] for s in summary["data"]["skipped_checkpoints"]] == [misfits[0], misfits[1]]
    assert summary["data"]["ch_images_without_boxes"] == 2 and summary["data"]["ch_without_boxes_examples"] == missing
    assert summary["data"]["boxes_outside_image"] == 1  # row 4, dropped when the manifest was built
    assert summary["data"]["ch_images_without_usable_box"] == 1  # row 3, seen on the decoded image
    counts = summary["results"][0]["counts"]
    assert (counts["top1"], counts["ch"]) == (6, 3)
    with open(tmp_path / "results.csv", newline="") as f:
        assert [r["Method"] for r in csv.DictReader(f)] == ["good"]
