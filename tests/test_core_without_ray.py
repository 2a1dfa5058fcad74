"""The Ray-free core imports and runs with `ray` unimportable: the objective,
Grad-CAM, the metrics, the data views and the experiments' table math never
reach for Ray (Ray code lives in pipeline/loop/service/job/runner only)."""

import subprocess
import sys

CORE = ["cgc_ray.objective", "cgc_ray.gradcam", "cgc_ray.contrastive", "cgc_ray.transforms",
        "cgc_ray.evaluation", "cgc_ray.evaluation.content_heatmap", "cgc_ray.evaluation.insertion",
        "cgc_ray.data.views", "cgc_ray.data.manifest", "cgc_ray.data.embedded", "cgc_ray.experiments.tables",
        "cgc_ray.experiments.episodes"]

SCRIPT = f"""
import importlib, sys

class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("ray is unimportable here: " + name)

sys.meta_path.insert(0, NoRay())
for module in {CORE!r}:
    importlib.import_module(module)

import torch, torchvision
from cgc_ray.objective import cgc_objective
model = torchvision.models.resnet18(num_classes=4)
x = torch.rand(4, 3, 64, 64)
batch = {{"xe": x, "image": x, "aug": x.flip(-1), "label": torch.tensor([0, 1, 2, 3]),
          "crop": torch.tensor([[0, 0, 64, 64]] * 4), "flip": torch.ones(4, dtype=torch.bool)}}
out = cgc_objective(model, batch)
out.loss.backward()
assert torch.isfinite(out.loss) and out.cgc > 0
print("core ok;", "ray" in sys.modules)
"""


def test_the_core_runs_with_ray_unimportable():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "core ok; False"


def test_the_guard_would_catch_a_ray_import():
    """The same guard fails a module that does import Ray (so the test above can fail)."""
    script = SCRIPT.split("for module")[0] + "import cgc_ray.train.service\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "ray is unimportable here" in proc.stderr
