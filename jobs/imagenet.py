"""Train a classifier with CGC. (Placeholder until the Ray Train service lands:
runs a few official-recipe steps of a small ResNet on the embedded data set.)"""

import random

import torch
import torchvision
import torchvision.transforms as T
from PIL import Image

from cgc_ray.data.embedded import CLASSES, ensure_embedded
from cgc_ray.objective import cgc_objective
from cgc_ray.transforms import crop_resize_flip, sample_crop_flip


def main(steps=5, batch_size=16, size=112):
    root = ensure_embedded()
    wnids = [w for w, _ in CLASSES]
    files = [(p, wnids.index(p.parent.name)) for p in sorted((root / "train").glob("*/*.JPEG"))]
    random.Random(0).shuffle(files)
    xe_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor()])
    img_tf = T.Compose([T.Resize(size * 8 // 7), T.CenterCrop(size), T.ToTensor()])
    model = torchvision.models.resnet18(num_classes=len(CLASSES))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    for step in range(steps):
        chunk = files[step * batch_size:(step + 1) * batch_size]
        images = [Image.open(p).convert("RGB") for p, _ in chunk]
        crops, flips = zip(*(sample_crop_flip(size, size) for _ in chunk))
        batch = {"xe": torch.stack([xe_tf(i) for i in images]),
                 "image": torch.stack([img_tf(i) for i in images]),
                 "crop": torch.tensor(crops), "flip": torch.tensor(flips),
                 "label": torch.tensor([y for _, y in chunk])}
        batch["aug"] = crop_resize_flip(batch["image"], batch["crop"], batch["flip"])
        out = cgc_objective(model, batch, lam=1.0, tau=0.5, recipe="official")
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        print(f"step {step}: loss {out.loss.item():.3f} ce {out.ce.item():.3f} cgc {out.cgc.item():.3f}")
    print(f"embedded data set: {root}")


if __name__ == "__main__":
    main()
