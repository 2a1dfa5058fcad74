"""Explanation metrics of the CGC paper, Ray-free: Content Heatmap (CH) and
insertion AUC, each batched on the device next to a one-image-at-a-time
reference of the authors' protocol; the evaluation's tables, figures and the
UnRel table. The Ray job that runs them is `cgc_ray.evaluation.job` (not
imported here, so this package stays Ray-free)."""

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
from cgc_ray.evaluation.figures import grid, heatmap_view, panel
from cgc_ray.evaluation.report import Totals, csv_text, markdown
from cgc_ray.data.indexers.unrel import WNIDS as UNREL_WNIDS
from cgc_ray.data.indexers.unrel import index_unrel

__all__ = [
    "ContentHeatmapResult", "content_heatmap", "content_heatmap_single", "geometry", "preprocess",
    "InsertionResult", "auc", "blur", "insertion_auc", "insertion_auc_single", "insertion_maps",
    "insertion_order", "rise_kernel",
    "grid", "heatmap_view", "panel", "Totals", "csv_text", "markdown", "UNREL_WNIDS", "index_unrel",
]
