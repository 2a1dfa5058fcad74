"""The embedded default data set (generated on first use), indexed as ImageNet."""

from __future__ import annotations

from ..embedded import embedded_root
from ..manifest import Manifest
from ..storage import StorageOptions
from . import register
from .imagenet import index_imagenet


@register("embedded")
def index_embedded(root: str, split: str, options: StorageOptions = StorageOptions()) -> Manifest:
    return _index("embedded", root, split, options)


@register("embedded_context")
def index_embedded_context(root: str, split: str, options: StorageOptions = StorageOptions()) -> Manifest:
    """The variant with a class-correlated background cue (`embedded.render`)."""
    return _index("embedded_context", root, split, options)


def _index(dataset: str, root: str, split: str, options: StorageOptions) -> Manifest:
    manifest = index_imagenet(embedded_root(dataset, root), split, options)
    manifest.dataset = dataset
    return manifest
