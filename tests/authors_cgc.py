"""An independent transcription of the authors' CGC step (UCDvision/CGC,
models/resnet_multigpu_cgc.py + models/utils.py), used as the oracle of the
contract test and as the "authors' code" line of the benchmark.

It keeps their algorithm as it was: Grad-CAM as the channel sum of
grad * activation from torch.autograd.grad(create_graph=True), the predicted
class read back to the host with numpy, a Python loop over the batch for the
heatmap transform, and the [positive, negatives] logit rows built by masking.
Not used by the package itself.
"""

import numpy as np
import torch
import torch.nn.functional as F


def _forward_with_feats(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    feats = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return model.fc(torch.flatten(model.avgpool(feats), 1)), feats


def _gradcam_mask(logits, feats, target, size):
    one_hot = torch.zeros_like(logits)
    one_hot[np.arange(logits.shape[0]), target] = 1
    score = (one_hot * logits).sum()
    grad, = torch.autograd.grad(score, feats, grad_outputs=torch.ones_like(score),
                                retain_graph=True, create_graph=True)
    cam = F.relu((grad * feats).sum(dim=1))
    cam = F.interpolate(cam.unsqueeze(1), size=size, mode="bilinear").squeeze(1)
    total = cam.sum(dim=[1, 2])[:, None, None]
    return cam / (total + 1e-8) + 1e-8


def _transform_masks(masks, crop, flip, size):
    out = torch.zeros_like(masks)
    for b, (i, j, h, w) in enumerate(crop.tolist()):
        m = masks[b, i:i + h, j:j + w][None, None]
        m = F.interpolate(m, size=size, mode="bilinear")[0, 0]
        out[b] = m.flip(-1) if bool(flip[b]) else m
    return out


def authors_step(model, batch, lam, tau):
    """Returns (total, xe_loss, sim_loss) as the authors computed them."""
    images, label = batch["image"], batch["label"]
    size = tuple(images.shape[-2:])
    xe_out = _forward_with_feats(model, batch["xe"])[0]
    img_out, img_feats = _forward_with_feats(model, images)
    target = np.argmax(img_out.detach().float().cpu().numpy(), axis=-1)
    orig_mask = _gradcam_mask(img_out, img_feats, target, size)
    aug_out, aug_feats = _forward_with_feats(model, batch["aug"])
    aug_mask = _gradcam_mask(aug_out, aug_feats, target, size)
    moved = _transform_masks(orig_mask, batch["crop"], batch["flip"], size)

    a = aug_mask.flatten(1)
    a = a / a.norm(2, dim=1, keepdim=True)
    t = moved.flatten(1)
    t = t / t.norm(2, dim=1, keepdim=True)
    xe = F.cross_entropy(xe_out, label) + F.cross_entropy(img_out, label) + F.cross_entropy(aug_out, label)
    bsize = a.shape[0]
    pos = (a * t).sum(1)
    neg = (a @ a.T)[(1 - torch.eye(bsize, device=a.device)).bool()].view(bsize, bsize - 1)
    rows = torch.cat((pos.view(bsize, 1), neg), dim=1) / tau
    sim = F.cross_entropy(rows, torch.zeros(bsize, dtype=torch.long, device=a.device))
    return xe + lam * sim, xe, sim
