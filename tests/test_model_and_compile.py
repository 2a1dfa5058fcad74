"""Initial weights from a path or S3, head replacement, and torch.compile of the
closed-form path against eager."""

import copy
import io

import pytest
import torch
import torchvision

from cgc_ray.data.storage import write_bytes
from cgc_ray.gradcam import CamNet
from cgc_ray.objective import cgc_objective
from cgc_ray.train.model import build_model
from test_objective import TinyNet, make_batch


def _save(state) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def test_weights_from_a_path_and_from_s3_with_a_new_head(tmp_path, s3_server):
    options, client = s3_server
    torch.manual_seed(0)
    source = torchvision.models.resnet18()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}  # a DDP-era checkpoint
    (tmp_path / "r18.pth").write_bytes(_save(wrapped))
    client.create_bucket(Bucket="weights")
    write_bytes("s3://weights/r18.pth", _save(source.state_dict()), options)
    for uri in (str(tmp_path / "r18.pth"), "s3://weights/r18.pth"):
        model = build_model("resnet18", 7, uri, options)
        assert model.fc.out_features == 7
        torch.testing.assert_close(model.layer3[0].conv1.weight, source.layer3[0].conv1.weight)


def test_weights_of_another_arch_are_refused(tmp_path):
    (tmp_path / "r50.pth").write_bytes(_save(torchvision.models.resnet50().state_dict()))
    with pytest.raises(ValueError, match="does not fit resnet18"):
        build_model("resnet18", 10, str(tmp_path / "r50.pth"))


def test_compiled_closed_form_step_equals_eager():
    torch.manual_seed(1)
    eager = TinyNet(classes=4)
    compiled_model = copy.deepcopy(eager)
    batch = make_batch(4, 16, 4, seed=2)
    ref = cgc_objective(eager, batch, lam=1.0, cam="closed_form")
    ref.loss.backward()
    net = torch.compile(CamNet(compiled_model))
    out = cgc_objective(net, batch, lam=1.0, cam="closed_form")
    out.loss.backward()
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(eager.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
