"""Explanation metrics of the CGC paper, Ray-free: Content Heatmap (CH) and
insertion AUC, each batched on the device next to a one-image-at-a-time
reference of the authors' protocol."""

from cgc_ray.evaluation.content_heatmap import (
    ContentHeatmapResult,
    content_heatmap,
    content_heatmap_single,
    geometry,
    preprocess,
)
from cgc_ray.evaluation.insertion import (
    InsertionResult,
    auc,
    blur,
    insertion_auc,
    insertion_auc_single,
    insertion_maps,
    insertion_order,
    rise_kernel,
)

__all__ = [
    "ContentHeatmapResult", "content_heatmap", "content_heatmap_single", "geometry", "preprocess",
    "InsertionResult", "auc", "blur", "insertion_auc", "insertion_auc_single", "insertion_maps",
    "insertion_order", "rise_kernel",
]
