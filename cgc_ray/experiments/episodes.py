"""Training subsets as manifests (Ray-free): few-shot episodes and the
semi-supervised label split.

A few-shot episode takes `shots` images of every class from a manifest, drawn
with the episode's own seed; validation is every other image of those classes.
One seed draws one permutation per class and an episode keeps its first
`shots` entries, so the 1-shot episode of a seed is inside its 5-shot episode,
which is inside its 10-shot episode.

The semi-supervised split keeps ~`fraction` of each class's labels (at least
one image per class), drawn with a seed, or the images a split file names (one
relative path or URI a line, as the SwAV/SimCLR 1% files). The other images
stay in the training set unlabeled: their label is `UNLABELED` (-100, PyTorch
cross-entropy's default `ignore_index`), so cross-entropy counts only labeled
rows while the CGC term, which explains the class predicted on the image, uses
every row.

Everything is written with `cgc_ray.data.manifest.write`, so the training
service reads it through `TrainConfig.train_manifest` / `val_manifest`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..data.manifest import Manifest, write
from ..data.storage import StorageOptions, read_bytes, write_bytes
from ..errors import DataError, MissingData, UserError
from ..objective import UNLABELED


@dataclass
class Episode:
    train: Manifest
    val: Manifest
    shots: int
    seed: int


def subset(manifest: Manifest, rows, split: str, labels=None) -> Manifest:
    """The given rows (in manifest order) as a manifest of its own; `labels`
    replaces their labels (class_name becomes null where a label is UNLABELED)."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    table = manifest.table.take(pa.array(rows))
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int32)
        names = [manifest.classes[x] if x >= 0 else None for x in labels]
        table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, pa.int32()))
        table = table.set_column(table.schema.get_field_index("class_name"), "class_name", pa.array(names, pa.string()))
    return Manifest(table, list(manifest.classes), manifest.dataset, split, manifest.root)


def _per_class(manifest: Manifest) -> dict[int, np.ndarray]:
    labels = manifest.table.column("label").to_numpy()
    return {c: np.flatnonzero(labels == c) for c in range(len(manifest.classes))}


def _shuffled(manifest: Manifest, seed: int) -> dict[int, np.ndarray]:
    """Each class's rows in one seeded random order (classes in label order)."""
    rng = np.random.default_rng(seed)
    return {c: rng.permutation(rows) for c, rows in _per_class(manifest).items()}


def episode(manifest: Manifest, shots: int, seed: int) -> Episode:
    """`shots` training images per class, validation = the remaining images."""
    if shots < 1:
        raise UserError(f"shots must be >= 1, got {shots}")
    picked = []
    for c, rows in _shuffled(manifest, seed).items():
        if len(rows) <= shots:
            raise DataError(f"class {manifest.classes[c]!r} has {len(rows)} images in {manifest.split}; "
                             f"a {shots}-shot episode needs more than {shots}")
        picked.extend(rows[:shots])
    rest = np.setdiff1d(np.arange(len(manifest)), picked)
    name = f"{manifest.split}-{shots}shot-seed{seed}"
    return Episode(subset(manifest, picked, f"{name}-train"), subset(manifest, rest, f"{name}-val"), shots, seed)


def draw_labeled(manifest: Manifest, fraction: float = 0.01, seed: int = 0) -> np.ndarray:
    """Rows keeping their label: round(fraction x class size) per class, at least 1."""
    if not 0 < fraction <= 1:
        raise UserError(f"fraction must be in (0, 1], got {fraction}")
    keep = [rows[:max(1, round(fraction * len(rows)))]
            for rows in _shuffled(manifest, seed).values() if len(rows)]
    return np.sort(np.concatenate(keep))


def match_labeled(manifest: Manifest, lines: list[str]) -> np.ndarray:
    """Rows named by a split file: a line matches a row whose URI equals it or
    ends with "/" + the line (e.g. `n01440764_10026.JPEG` or `train/n01440764/...`)."""
    uris = manifest.table.column("uri").to_pylist()
    by_name: dict[str, list[int]] = {}
    for i, uri in enumerate(uris):
        by_name.setdefault(uri.rsplit("/", 1)[-1], []).append(i)
    rows, missing = [], []
    for line in (x.strip() for x in lines):
        if not line:
            continue
        rel = line.removeprefix("./")
        hits = [i for i in by_name.get(rel.rsplit("/", 1)[-1], []) if uris[i] == line or uris[i].endswith("/" + rel)]
        if len(hits) > 1:
            raise DataError(f"{line!r} matches {len(hits)} images of {manifest.dataset} {manifest.split}; "
                             "give a longer relative path")
        if hits:
            rows.append(hits[0])
        else:
            missing.append(line)
    if missing:
        raise DataError(f"{len(missing)} listed images are not in {manifest.dataset} {manifest.split}, "
                         f"e.g. {missing[:3]}")
    return np.unique(np.asarray(rows, dtype=np.int64))


def read_split_file(uri: str, options: StorageOptions = StorageOptions()) -> list[str]:
    """The lines of a label-split file (--labels-file); MissingData where there is none."""
    try:
        return read_bytes(uri, options).decode().splitlines()
    except FileNotFoundError:
        raise MissingData(f"--labels-file {uri}: no such file") from None


def write_split_file(manifest: Manifest, rows, uri: str, options: StorageOptions = StorageOptions()) -> None:
    """The labeled images' URIs, one a line (readable back with `match_labeled`)."""
    uris = manifest.table.column("uri").to_pylist()
    write_bytes(uri, "".join(uris[i] + "\n" for i in np.sort(rows)).encode(), options)


def semisup_train(manifest: Manifest, labeled, unlabeled_per_labeled: float | None = 1.0,
                  seed: int = 0) -> Manifest:
    """The labeled rows plus unlabeled rows (label UNLABELED) drawn with `seed`:
    `unlabeled_per_labeled` x as many as there are labeled rows (None: all).

    A ratio of 1 makes every batch about half labeled, like the authors'
    step of one labeled and one unlabeled batch of equal size, and a batch
    without any labeled row (whose cross-entropy would be 0/0) improbable:
    2^-b for b images per worker.
    """
    labeled = np.unique(np.asarray(labeled, dtype=np.int64))
    others = np.setdiff1d(np.arange(len(manifest)), labeled)
    if unlabeled_per_labeled is not None:
        n = min(len(others), round(unlabeled_per_labeled * len(labeled)))
        others = np.random.default_rng(seed).choice(others, n, replace=False)
    rows = np.concatenate([labeled, others])
    order = np.argsort(rows)
    base = manifest.table.column("label").to_numpy()
    labels = np.where(np.isin(rows, labeled), base[rows], UNLABELED)[order]
    return subset(manifest, rows[order], f"{manifest.split}-semisup", labels=labels)


def write_episode(ep: Episode, prefix: str, options: StorageOptions = StorageOptions()) -> tuple[str, str]:
    """Writes `<prefix>-train.parquet` and `<prefix>-val.parquet`; returns their URIs."""
    uris = f"{prefix}-train.parquet", f"{prefix}-val.parquet"
    write(ep.train, uris[0], options)
    write(ep.val, uris[1], options)
    return uris
