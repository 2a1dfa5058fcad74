"""Few-shot episodes, the semi-supervised label split and the result tables (Ray-free)."""

import math

import numpy as np
import pytest

from cgc_ray.data.manifest import build, read, write
from cgc_ray.experiments import episodes, tables
from cgc_ray.experiments.tables import Stat, paired_diff, stat


def _manifest(per_class=(12, 9, 30, 5)):
    classes = [f"c{i}" for i in range(len(per_class))]
    rows = [{"uri": f"s3://b/train/{c}/{c}_{j}.JPEG", "label": i, "boxes": [[0, 0, 4, 4]] if j % 2 else None}
            for i, (c, n) in enumerate(zip(classes, per_class)) for j in range(n)]
    return build(rows, classes, "toy", "train", "s3://b")


def _uris(m):
    return m.table.column("uri").to_pylist()


def test_episode_has_n_per_class_no_overlap_and_is_reproducible(tmp_path):
    m = _manifest()
    ep = episodes.episode(m, 3, seed=7)
    labels = ep.train.table.column("label").to_numpy()
    assert np.bincount(labels, minlength=4).tolist() == [3, 3, 3, 3]
    assert not set(_uris(ep.train)) & set(_uris(ep.val))
    assert sorted(_uris(ep.train) + _uris(ep.val)) == sorted(_uris(m))  # validation: all remaining images
    assert ep.val.classes == m.classes == ep.train.classes
    again = episodes.episode(m, 3, seed=7)
    assert _uris(again.train) == _uris(ep.train) and _uris(again.val) == _uris(ep.val)
    others = [set(_uris(episodes.episode(m, 3, seed=s).train)) for s in range(8, 12)]
    assert all(o != set(_uris(ep.train)) for o in others)
    assert set(_uris(episodes.episode(m, 1, seed=7).train)) <= set(_uris(ep.train))  # nested shots
    train_uri, val_uri = episodes.write_episode(ep, str(tmp_path / "ep"))  # a manifest the service reads
    assert _uris(read(train_uri)) == _uris(ep.train) and read(val_uri).split.endswith("-val")
    with pytest.raises(ValueError, match="'c3' has 5 images"):
        episodes.episode(m, 5, seed=0)


def test_drawn_label_split_and_semisup_manifest(tmp_path):
    m = _manifest((200, 100, 30, 5))
    rows = episodes.draw_labeled(m, 0.01, seed=3)
    labels = m.table.column("label").to_numpy()[rows]
    assert np.bincount(labels, minlength=4).tolist() == [2, 1, 1, 1]  # ~1% per class, at least one
    assert rows.tolist() == episodes.draw_labeled(m, 0.01, seed=3).tolist()
    assert rows.tolist() != episodes.draw_labeled(m, 0.01, seed=4).tolist()
    # written as a split file and read back, as a user-given file would be
    episodes.write_split_file(m, rows, str(tmp_path / "labeled.txt"))
    lines = episodes.read_split_file(str(tmp_path / "labeled.txt"))
    assert episodes.match_labeled(m, lines).tolist() == rows.tolist()
    # SwAV/SimCLR style: bare file names or relative paths
    names = [_uris(m)[i].split("/", 3)[-1] for i in rows[:2]] + [_uris(m)[rows[2]].rsplit("/", 1)[-1]]
    assert episodes.match_labeled(m, names + [""]).tolist() == rows[:3].tolist()
    with pytest.raises(ValueError, match="1 listed images are not in toy train"):
        episodes.match_labeled(m, ["nope.JPEG"])

    semi = episodes.semisup_train(m, rows, unlabeled_per_labeled=2.0, seed=0)
    sl = semi.table.column("label").to_numpy()
    assert (sl >= 0).sum() == len(rows) and (sl == episodes.UNLABELED).sum() == 2 * len(rows)
    kept = dict(zip(_uris(semi), sl))
    assert all(kept[_uris(m)[i]] == m.table.column("label")[int(i)].as_py() for i in rows)
    write(semi, str(tmp_path / "semi.parquet"))
    back = read(str(tmp_path / "semi.parquet"))
    assert (back.table.column("label").to_numpy() == episodes.UNLABELED).sum() == 2 * len(rows)
    assert len(episodes.semisup_train(m, rows, unlabeled_per_labeled=None)) == len(m)


def test_cells_are_mean_and_sample_std():
    s = stat([70.0, 72.0, 77.0])
    assert s.mean == pytest.approx(73.0) and s.std == pytest.approx(math.sqrt(13.0)) and s.n == 3  # ddof = 1
    assert str(s) == "73.00 ± 3.61"
    assert str(stat([5.0])) == "5.00 ± n/a" and str(stat([])) == "—" and str(stat([None, float("nan")])) == "—"


def test_paired_difference_and_layouts():
    rows = [{"method": "baseline", "dataset": "cub", "seed": 0, "top1": 70.0, "ch": 50.0},
            {"method": "baseline", "dataset": "cub", "seed": 1, "top1": 72.0, "ch": 52.0},
            {"method": "cgc", "dataset": "cub", "seed": 0, "top1": 71.0, "ch": 60.0},
            {"method": "cgc", "dataset": "cub", "seed": 1, "top1": 75.0, "ch": 58.0},
            {"method": "cgc", "dataset": "cub", "seed": 2, "top1": 99.0, "ch": 99.0},  # unpaired: not in Δ
            {"method": "baseline", "dataset": "flowers", "seed": 0, "top1": 90.0, "ch": None},
            {"method": "cgc", "dataset": "flowers", "seed": 0, "top1": 91.0, "ch": None}]
    d = paired_diff(rows[:5], "top1", ("seed",))  # diffs 1 and 3
    assert (d.mean, d.n) == (2.0, 2) and d.std == pytest.approx(math.sqrt(2.0))
    t6 = tables.finegrained_table(rows)
    assert t6.header[:4] == ["Dataset", "Baseline top-1", "CGC top-1", "Δ top-1"]
    cub, flowers = t6.rows
    assert [str(c) for c in cub] == ["cub", "71.00 ± 1.41", "81.67 ± 15.14", "2.00 ± 1.41",
                                     "51.00 ± 1.41", "72.33 ± 23.12", "8.00 ± 2.83"]
    assert [str(c) for c in flowers[4:]] == ["—", "—", "—"]  # no boxes, no CH
    md, csv = tables.to_markdown(t6), tables.to_csv(t6)
    assert "| cub | 71.00 ± 1.41 | 81.67 ± 15.14 | 2.00 ± 1.41 |" in md
    assert csv.splitlines()[0].startswith("Dataset,Baseline top-1 mean,Baseline top-1 std,Baseline top-1 n,")
    assert csv.splitlines()[1].startswith("cub,71.0000,1.4142,2,")

    shots = [{"method": m, "dataset": "cub", "shots": 5, "episode": e, "top1": v, "ch": None}
             for m, e, v in (("baseline", 0, 40.0), ("baseline", 1, 44.0), ("cgc", 0, 43.0), ("cgc", 1, 45.0))]
    t7 = tables.fewshot_table(shots)
    assert t7.header == ["Shots", "cub baseline", "cub CGC", "cub Δ"]
    assert [str(c) for c in t7.rows[0]] == ["5", "42.00 ± 2.83", "44.00 ± 1.41", "2.00 ± 1.41"]

    lam = [{"lam": 0.0, "tau": 0.5, "top1": 60.0, "ch": 40.0}, {"lam": 0.0, "tau": 0.5, "top1": 62.0, "ch": 42.0},
           {"lam": 1.0, "tau": 0.5, "top1": 59.0, "ch": 55.0}]
    t10 = tables.lambda_table(lam)
    assert t10.header == ["λ", "Top-1", "CH"]
    md = tables.to_markdown(t10)
    assert "| 0 | 61.00 ± 1.41 | 41.00 ± 1.41 |\n| 1 | 59.00 ± n/a | 55.00 ± n/a |" in md
    t9 = tables.semisup_table([{**r, "labels": "1%"} for r in rows[:4]])
    assert [str(c) for c in t9.rows[2]] == ["Δ CGC − baseline", "2.00 ± 1.41", "8.00 ± 2.83"]
    assert isinstance(t9.rows[0][1], Stat)


def test_class_halves_for_transfer(tmp_path):
    """Source: the first ceil(C/2) classes as they were; target: the others,
    labels renumbered from 0, every row's class_name still its own class."""
    from cgc_ray.experiments.transfer import split_classes

    m = _manifest((12, 9, 30, 5, 7))  # 5 classes: 3 + 2
    source, target = split_classes(m)
    assert source.classes == ["c0", "c1", "c2"] and target.classes == ["c3", "c4"]
    assert np.bincount(source.table.column("label").to_numpy()).tolist() == [12, 9, 30]
    assert np.bincount(target.table.column("label").to_numpy()).tolist() == [5, 7]
    for half in (source, target):
        names = half.table.column("class_name").to_pylist()
        assert names == [half.classes[x] for x in half.table.column("label").to_pylist()]
        assert all(u.split("/")[-2] == n for u, n in zip(_uris(half), names))  # the image's own folder
    assert sorted(_uris(source) + _uris(target)) == sorted(_uris(m))
    write(target, str(tmp_path / "t.parquet"))
    assert read(str(tmp_path / "t.parquet")).classes == ["c3", "c4"]
    with pytest.raises(ValueError, match="at least 2"):
        split_classes(_manifest((4,)))
