"""Per-data-set indexers: raw layout in object storage -> Manifest.

An indexer is `fn(root_uri, split, options) -> Manifest`, registered by name
with `@register`; a new data set is one new module here (every module of
this package is imported when an indexer is looked up: no list to keep). `load_or_build` caches the manifest
next to the data (or at a path the user gives).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import pkgutil
from typing import Callable

from ...errors import DataError, MissingData, UserError
from ..manifest import FORMAT_VERSION, Manifest, counting_box_fixes, read, write
from ..storage import StorageOptions, exists, split_uri

log = logging.getLogger(__name__)
Indexer = Callable[[str, str, StorageOptions], Manifest]
INDEXERS: dict[str, Indexer] = {}


def register(name: str):
    def add(fn: Indexer) -> Indexer:
        INDEXERS[name] = fn
        return fn
    return add


def get_indexer(name: str) -> Indexer:
    for module in pkgutil.iter_modules(__path__):  # every module here registers its indexers
        importlib.import_module(f"{__name__}.{module.name}")
    if name not in INDEXERS:
        raise UserError(f"unknown data set kind {name!r}; known: {sorted(INDEXERS)}")
    return INDEXERS[name]


def default_dataset(dataset: str | None, data: str | None) -> str:
    """--dataset when given; else "imagenet" for a --data root and the
    embedded set without one: one meaning in training and evaluation."""
    return dataset or ("imagenet" if data else "embedded")


def default_manifest_uri(dataset: str, root: str, split: str) -> str:
    return f"{root.rstrip('/')}/_cgc_manifests/{dataset}-{split}.parquet"


def cache_uri(manifest_dir: str, dataset: str, root: str, split: str) -> str:
    """The manifest's place in a --manifest-dir shared by several data roots:
    the name carries a digest of the root, so two roots never share a file."""
    tag = hashlib.sha1(root.encode()).hexdigest()[:12]
    return f"{manifest_dir.rstrip('/')}/{dataset}-{split}-{tag}.parquet"


def load_or_build(dataset: str, root: str, split: str, manifest_uri: str | None = None,
                  options: StorageOptions = StorageOptions(), rebuild: bool = False) -> tuple[Manifest, str]:
    """The split's manifest and where it is stored: read if cached, else indexed and written.

    The default place is `<root>/_cgc_manifests/`; where the data is read-only
    the manifest goes to the local cache instead (CGC_RAY_CACHE or ~/.cache/cgc_ray).
    A cached manifest is used only if it was built from this data set, root and
    split (recorded in it); otherwise, or with `rebuild` (--reindex), the split
    is indexed again and the cache rewritten.
    """
    indexer = get_indexer(dataset)
    uri = manifest_uri or default_manifest_uri(dataset, root, split)
    if not rebuild and exists(uri, options):
        cached = read(uri, options)
        if (cached.dataset, cached.root, cached.split) != (dataset, root, split):
            log.warning("%s was built from %s %s %s, not %s %s %s: indexing again", uri, cached.dataset,
                        cached.root, cached.split, dataset, root, split)
        elif cached.format < FORMAT_VERSION:  # made before the box checks: boxes and their counts redone
            log.warning("%s is manifest format %d (this version writes %d): indexing again", uri, cached.format,
                        FORMAT_VERSION)
        else:
            return cached, uri
    with counting_box_fixes() as fixes:
        manifest = _index(indexer, dataset, root, split, options)
    manifest.notes.update(fixes)  # build's drops are there already; the reordered corners join them
    if manifest.notes:
        log.warning("indexed %s %s with box fixes: %s", dataset, split,
                    ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(manifest.notes.items())))
    try:
        write(manifest, uri, options)
    except OSError as e:
        if manifest_uri:
            raise OSError(f"cannot write the manifest to {manifest_uri}: {e}") from e
        uri = _local_fallback(dataset, root, split)
        log.warning("data at %s is not writable (%s); manifest cached at %s", root, e, uri)
        write(manifest, uri, options)
    log.info("indexed %s %s: %d images, %d classes -> %s", dataset, split, len(manifest),
             len(manifest.classes), uri)
    return manifest, uri


def _index(indexer: Indexer, dataset: str, root: str, split: str, options: StorageOptions) -> Manifest:
    """The indexer's manifest; what it refuses (a layout, a file, a field) is
    the user's data, so a `DataError` (`MissingData` for an absent file)."""
    try:
        return indexer(root, split, options)
    except DataError:
        raise
    except FileNotFoundError as e:
        raise MissingData(str(e)) from e
    except ValueError as e:
        raise DataError(str(e)) from e


def _local_fallback(dataset, root, split):
    base = os.environ.get("CGC_RAY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cgc_ray")
    tag = hashlib.sha1(root.encode()).hexdigest()[:12]
    return os.path.join(base, "manifests", f"{dataset}-{split}-{tag}.parquet")


def child(root: str, *parts: str) -> str:
    """`root` joined with relative parts, keeping its scheme."""
    scheme, _ = split_uri(root)
    return "/".join([root.rstrip("/"), *parts]) if scheme else os.path.join(root, *parts)
