"""The embedded default data set (generated on first use), indexed as ImageNet."""

from __future__ import annotations

from ..embedded import ensure_embedded
from ..manifest import Manifest
from ..storage import StorageOptions
from . import register
from .imagenet import index_imagenet


@register("embedded")
def index_embedded(root: str, split: str, options: StorageOptions = StorageOptions()) -> Manifest:
    manifest = index_imagenet(str(ensure_embedded(root or None)), split, options)
    manifest.dataset = "embedded"
    return manifest
