"""The contrastive Grad-CAM consistency loss (InfoNCE over heatmaps).

a_i: heatmap of the augmented image T_i(x_i); t_i: T_i applied to the heatmap
of the original image. Both are flattened and L2-normalised, so dot products
are cosine similarities. With s = similarity / tau, each row is a softmax
classification of the positive among the row's candidates:

- "official" (the authors' code): anchor a_i, positive t_i, negatives a_j;
- "paper" (the paper's equation): anchor t_i, positive a_i, negatives a_j.

Both are a cross-entropy over a (B, N) similarity matrix whose positive sits
on the diagonal of the rank's own block; negatives are the local batch, blocks
of k images (the authors' DataParallel on 4 GPUs: 64 per block at batch 256),
or the whole global batch across DDP ranks (a gradient-preserving all-gather).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ARRANGEMENTS = ("official", "paper")
NEGATIVES = ("local", "block", "global")


def _flat_unit(maps: torch.Tensor) -> torch.Tensor:
    return F.normalize(maps.flatten(1), dim=1)


def _gather_all(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows, differentiable w.r.t. this rank's rows; and this rank's offset."""
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    if not (dist.is_available() and dist.is_initialized()):
        return x, 0
    return torch.cat(all_gather(x), dim=0), dist.get_rank() * x.shape[0]


def info_nce(aug_maps: torch.Tensor, target_maps: torch.Tensor, tau: float = 0.5,
             arrangement: str = "official", negatives: str = "local",
             block_size: int | None = None) -> torch.Tensor:
    """Mean InfoNCE (van den Oord et al., 2018, Eq. 4; as CGC uses it,
    Pillai et al., CVPR 2022, Sec. 3) over this rank's rows.

    aug_maps, target_maps: float (B, H, W) heatmaps a_i and t_i (any scale:
    they are flattened and L2-normalised, so similarities are cosines). tau:
    temperature, > 0, dimensionless. arrangement, negatives, block_size: see
    the module docstring ("block" needs block_size dividing B; "global"
    gathers every rank's a_j, gradients kept). Returns a float scalar:
    cross-entropy of the positive among each row's candidates, logits =
    cosine / tau. Raises ValueError for an unknown arrangement or negatives,
    or a block size that does not divide B.
    """
    if arrangement not in ARRANGEMENTS:
        raise ValueError(f"arrangement must be one of {ARRANGEMENTS}, got {arrangement!r}")
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    a, t = _flat_unit(aug_maps), _flat_unit(target_maps)
    bank, offset = _gather_all(a) if negatives == "global" else (a, 0)
    anchor = a if arrangement == "official" else t
    sim = anchor @ bank.T  # (B, N)
    rows = torch.arange(a.shape[0], device=a.device)
    # The positive replaces the anchor's own column (for "official" that is
    # a_i . a_i = 1, which is not a negative).
    sim = sim.index_put((rows, rows + offset), (a * t).sum(1))
    if negatives == "block":
        sim = _mask_other_blocks(sim, block_size)
    return F.cross_entropy(sim / tau, rows + offset)


def _mask_other_blocks(sim: torch.Tensor, block_size: int | None) -> torch.Tensor:
    b = sim.shape[0]
    if not block_size or b % block_size:
        raise ValueError(f"negatives='block' needs a block_size dividing the batch {b}, got {block_size}")
    block = torch.arange(b, device=sim.device) // block_size
    return sim.masked_fill(block[:, None] != block[None, :], -math.inf)


def mse_consistency(aug_maps: torch.Tensor, target_maps: torch.Tensor) -> torch.Tensor:
    """Ablation without negatives (paper Table 5): MSE of the unit heatmaps."""
    return F.mse_loss(_flat_unit(aug_maps), _flat_unit(target_maps))
