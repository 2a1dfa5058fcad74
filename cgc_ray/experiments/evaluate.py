"""CH of a trained checkpoint on a bounded set of validation images (Ray-free).

A sweep trial scores Content Heatmap (`cgc_ray.evaluation.content_heatmap`,
the authors' protocol by default) on at most `limit` validation images that
have boxes, taken evenly spread over the manifest (which is in class order),
so the same images are scored for every trial of a sweep.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.manifest import Manifest, read
from ..data.storage import StorageOptions, read_bytes
from ..data.views import BadImage, decode_rgb
from ..evaluation.content_heatmap import content_heatmap
from ..train.checkpoint import load_model


def boxed_rows(manifest: Manifest, limit: int | None) -> list[int]:
    """Up to `limit` rows with boxes, evenly spread over the manifest."""
    boxes = manifest.table.column("boxes").to_pylist()
    rows = [i for i, b in enumerate(boxes) if b]
    if limit is None or len(rows) <= limit:
        return rows
    return [rows[k * len(rows) // limit] for k in range(limit)]


def checkpoint_ch(checkpoint_uri: str, manifest_uri: str, *, limit: int | None = 500, short_side: int = 448,
                  protocol: str = "resize", storage: StorageOptions = StorageOptions(), device=None) -> dict:
    """{"ch": mean CH in percent (None without boxed images), "ch_images": images scored}."""
    manifest = read(manifest_uri, storage)
    rows = boxed_rows(manifest, limit)
    if not rows:
        return {"ch": None, "ch_images": 0}
    model, meta = load_model(checkpoint_uri, storage)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    table = manifest.table.take(rows).to_pydict()
    images, boxes, labels = [], [], []
    for uri, b, label in zip(table["uri"], table["boxes"], table["label"]):
        try:
            images.append(np.array(decode_rgb(read_bytes(uri, storage))))
        except (OSError, BadImage):
            continue  # unreadable: the training log already names it
        boxes.append(np.asarray(b, dtype=np.float64))
        labels.append(label)
    if not images:
        return {"ch": None, "ch_images": 0}
    result = content_heatmap(model, images, boxes, labels, layer=meta.get("layer", "layer4"),
                             protocol=protocol, short_side=short_side)
    return {"ch": result.mean_percent, "ch_images": len(images)}
