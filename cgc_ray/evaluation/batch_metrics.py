"""Per-image metrics of one batch under every checkpoint (Ray-free): the
callable classes of the evaluation's metric actors. `BatchMetrics` (first
pass): top-1/top-5, insertion AUC and the CGC loss; `CHMetrics` (second
pass, images with boxes): Content Heatmap."""

from __future__ import annotations

import numpy as np
import torch

from ..data.views import val_transform
from ..objective import CGCConfig, heatmap_consistency
from ..transforms import crop_resize_flip
from . import report
from .checkpoints import Checkpoint, load_checkpoint
from .config import EvalConfig
from .content_heatmap import cam_net, clamp_boxes, content_heatmap, evaluating, geometry, preprocess, usable
from .insertion import insertion_auc


def boxes_array(value) -> np.ndarray | None:
    """A row's boxes as a float (n, 4) array; None where it has none."""
    if value is None or len(value) == 0:
        return None
    return np.stack([np.asarray(b, dtype=np.float64) for b in value]).reshape(-1, 4)


def predictions(logits: torch.Tensor, allowed: torch.Tensor):
    """Top-1 and top-5 hits (B,) and the Grad-CAM class (B,): the allowed class
    scored highest (the label itself where one class is allowed); allowed: (B, C) bool."""
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    top1 = allowed.gather(1, logits.argmax(1, keepdim=True))[:, 0]
    target = logits.masked_fill(~allowed, float("-inf")).argmax(1)
    return top1, allowed.gather(1, top5).any(1), target


class _Checkpoints:
    """Every checkpoint loaded once (per metric actor) on its device, with the
    (B, classes) masks of the model classes that count for each label."""

    def __init__(self, cfg: EvalConfig, sets: list[list[list[int]]], device: str | None = None):
        self.cfg = cfg
        self.device = torch.device(device or ("cuda" if cfg.use_gpu else "cpu"))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.models = [load_checkpoint(uri, cfg.storage(), self.device) for uri in cfg.checkpoints]
        self.allowed = []
        for ck, per_class in zip(self.models, sets):
            mask = torch.zeros(len(per_class), len(ck.meta["classes"]), dtype=torch.bool)
            for label, members in enumerate(per_class):
                mask[label, members] = True
            self.allowed.append(mask.to(self.device))

    def _crops(self, images) -> torch.Tensor:
        return torch.stack([preprocess(im, geometry(*im.shape[:2], "center_crop"), self.device) for im in images])


class BatchMetrics(_Checkpoints):
    """First pass, over all rows in manifest order: columns index, uri, label,
    has_boxes, no_usable_box, clamped and, per checkpoint k, top1_k, top5_k
    (0/1), iauc_k, cgc_k (NaN: not computed; cgc_k holds the batch's loss in
    its first row, and only for a full batch of cfg.batch_size)."""

    def __call__(self, batch: dict) -> dict:
        images = [np.array(im) for im in batch["image"]]
        boxes = [boxes_array(b) for b in batch["boxes"]]
        labels = torch.tensor(np.asarray(batch["label"]), dtype=torch.long, device=self.device)
        out = {"index": np.asarray(batch["index"]), "uri": np.asarray(batch["uri"]),
               "label": np.asarray(batch["label"]), "has_boxes": np.array([b is not None for b in boxes]),
               "no_usable_box": np.array([b is not None and not usable(b, *im.shape[:2])
                                          for b, im in zip(boxes, images)]),
               "clamped": np.array([0 if b is None else clamp_boxes(b, *im.shape[:2])[1]
                                    for b, im in zip(boxes, images)])}
        crops = self._crops(images)
        for k, ck in enumerate(self.models):
            for name, values in self._one(ck, self.allowed[k][labels], images, crops, out["index"], out["uri"]).items():
                out[f"{name}_{k}"] = values
        return out

    def _one(self, ck: Checkpoint, allowed, images, crops, index, uris) -> dict[str, np.ndarray]:
        """The metric columns of one checkpoint; allowed: (B, C) the classes that count per row."""
        cfg, n = self.cfg, len(images)
        res = {m: np.full(n, np.nan) for m in report.METRICS if m != "ch"}
        logits = None
        if "cgc" in cfg.metrics and n == cfg.batch_size:
            res["cgc"][0], logits = self._cgc(ck, crops, uris)
        if logits is None:
            with evaluating(ck.model), torch.no_grad():
                logits = ck.model(crops)
        top1, top5, target = (t.cpu().numpy() for t in predictions(logits.detach(), allowed))
        if "top1" in cfg.metrics:
            res["top1"], res["top5"] = top1.astype(float), top5.astype(float)
        limit = cfg.iauc_limit if cfg.iauc_limit is not None else np.inf
        if "iauc" in cfg.metrics and (sel := [i for i in range(n) if index[i] < limit]):
            x = torch.stack([preprocess(images[i], geometry(*images[i].shape[:2], "squash")) for i in sel])
            res["iauc"][sel] = insertion_auc(ck.model, x, torch.as_tensor(target[sel]), layer=ck.layer,
                                             step=cfg.iauc_step, batch_size=cfg.batch_size,
                                             max_batch=cfg.iauc_max_batch,
                                             bn_train_mode_for_maps=cfg.iauc_bn_train).auc.numpy()
        return res

    def _cgc(self, ck: Checkpoint, query: torch.Tensor, uris) -> tuple[float, torch.Tensor]:
        """L_CGC of the batch (query = the centre crops, positive = T(query),
        negatives = the others) and the query's logits (eval mode: the top-1 logits)."""
        ts = [val_transform(str(u), query.shape[-1], self.cfg.seed) for u in uris]
        crop = torch.tensor([c for c, _ in ts], dtype=torch.int64)
        flip = torch.tensor([f for _, f in ts], dtype=torch.bool)
        aug = crop_resize_flip(query, crop, flip)
        objective = CGCConfig(tau=float(ck.meta.get("tau", 0.5)), layer=ck.layer)  # official arrangement
        with evaluating(ck.model), cam_net(ck.model, ck.layer) as net, \
                torch.set_grad_enabled(net.linear_head() is None):  # autograd Grad-CAM off a GAP+fc head
            q, a = net(query, aug)
            loss = heatmap_consistency(net, q, a, crop, flip, tuple(query.shape[-2:]), objective)
        return float(loss), q[0].detach()


class CHMetrics(_Checkpoints):
    """Second pass, over the images with boxes: columns index and, per
    checkpoint k, ch_k (CH in [0, 1]; NaN where no box has area inside the image)."""

    def __call__(self, batch: dict) -> dict:
        images = [np.array(im) for im in batch["image"]]
        boxes = [boxes_array(b) for b in batch["boxes"]]
        labels = torch.tensor(np.asarray(batch["label"]), dtype=torch.long, device=self.device)
        return {"index": np.asarray(batch["index"]),
                **{f"ch_{k}": self._ch(ck, self.allowed[k][labels], images, boxes)
                   for k, ck in enumerate(self.models)}}

    def _ch(self, ck: Checkpoint, allowed, images, boxes) -> np.ndarray:
        """CH of images that all have boxes, for the class Grad-CAM explains:
        the label's class, or where several count (UnRel) the one the centre
        crop scores highest, as in the first pass."""
        if bool((allowed.sum(1) == 1).all()):
            target = allowed.int().argmax(1)
        else:
            with evaluating(ck.model), torch.no_grad():
                target = predictions(ck.model(self._crops(images)), allowed)[2]
        cfg = self.cfg
        return content_heatmap(ck.model, images, boxes, target.cpu().numpy(), layer=ck.layer,
                               protocol=cfg.ch_protocol, short_side=cfg.short_side,
                               batch_size=cfg.batch_size).ch.numpy()
