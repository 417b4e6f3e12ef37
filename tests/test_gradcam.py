"""Grad-CAM: equals the textbook full-backward computation, cleans up, localises; DT threshold."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import histoview.models.attention_cnns  # noqa: E402,F401
from histoview.explain.gradcam import (  # noqa: E402
    GradCAM,
    GradCAMPlusPlus,
    dynamic_threshold,
    explain_cnn,
)
from histoview.models import ModelConfig, create_model  # noqa: E402
from histoview.preprocessing.transforms import DIHEDRAL, dihedral, to_tensor  # noqa: E402


def naive_gradcam(model, x, target_class, layer_name):
    """Textbook Grad-CAM: full forward with autograd everywhere, full backward."""
    store = {}

    def hook(module, inputs, output):
        store["a"] = a = output.clone()
        a.retain_grad()
        return a * 1.0  # a fresh tensor: an in-place next layer must not change ``a``

    handle = model.get_submodule(layer_name).register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    logits[:, target_class].sum().backward()
    a = store["a"]
    cam = F.relu((a.grad.mean(dim=(2, 3))[:, :, None, None] * a).sum(1)).detach()
    return F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[
        :, 0
    ]


@pytest.mark.parametrize("name", ["test_cnn", "test_dalaresnet", "test_csp_fpn_se", "test_rmcg"])
def test_equals_naive_full_backward(name):
    torch.manual_seed(1)
    model = create_model(name).eval()
    x = torch.randn(2, 3, *model.model_config.input_size)
    fast = GradCAM(model)(x, target_class=1)
    naive = naive_gradcam(model, x, 1, model.model_config.target_layer)
    assert fast.cam.shape == (2, *model.model_config.input_size)
    assert torch.allclose(fast.cam, naive, rtol=1e-4, atol=1e-6 * float(naive.abs().max()))


def test_target_layer_followed_by_inplace_op():
    torch.manual_seed(2)
    model = RegionNet(region=None)
    model.act = nn.ReLU(inplace=True)  # modifies the hooked conv output in place
    x = torch.randn(2, 3, 32, 48)
    fast = GradCAM(model, "conv")(x, target_class=1).cam
    assert torch.allclose(fast, naive_gradcam(model, x, 1, "conv"), atol=1e-6)


def test_other_class_differs_and_nothing_is_left_behind():
    torch.manual_seed(0)
    model = create_model("test_cnn").eval()
    model.features.conv1.weight.requires_grad_(False)  # a frozen layer stays frozen
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.randn(1, 3, 32, 32)
    engine = GradCAM(model)
    hooked = engine.forward(x)
    assert hooked.activation.is_leaf  # the graph starts at the target layer: nothing earlier
    predicted = engine.compute(hooked)
    other = 1 - int(predicted.target)
    assert int(predicted.target) == int(predicted.logits.argmax())
    res = engine(x, target_class=other)
    assert int(res.target) == other and not torch.allclose(res.cam, predicted.cam)
    assert all(p.grad is None for p in model.parameters())  # no gradients into parameters
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.is_grad_enabled()
    with torch.no_grad():  # grad mode of the caller is restored, whatever it was
        engine(x)
        assert not torch.is_grad_enabled()


class Boom(nn.Module):
    """A model that fails after its target layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        self.conv(x)
        raise RuntimeError("boom")


def test_cleanup_when_forward_raises():
    model = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        GradCAM(model, "conv")(torch.randn(1, 3, 8, 8))
    assert not model.conv._forward_hooks
    assert all(p.requires_grad for p in model.parameters())
    assert torch.is_grad_enabled() and model.training


def test_unused_or_wrong_target_layer():
    model = create_model("test_cnn")
    with pytest.raises(KeyError):
        GradCAM(model, "no.such.layer")
    model.unused = nn.Identity()
    with pytest.raises(RuntimeError, match="not used"):
        GradCAM(model, "unused")(torch.randn(1, 3, 32, 32))
    assert not model.unused._forward_hooks


class RegionNet(nn.Module):
    """Its output depends only on pixels in rows r0:r1, cols c0:c1 of the input.

    The input is masked to the region, then convolved (no bias), rectified
    (target layer) and averaged; class 1's logit grows with the activations.
    """

    def __init__(self, size=(32, 48), region=(4, 12, 30, 44), bias=(0.0, 0.0)) -> None:
        super().__init__()
        mask = torch.ones(1, 1, 1, 1)  # region None: the whole image
        if region is not None:
            mask = torch.zeros(1, 1, *size)
            r0, r1, c0, c1 = region
            mask[..., r0:r1, c0:c1] = 1
        self.register_buffer("mask", mask)
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.act = nn.ReLU()
        self.fc = nn.Linear(8, 2)
        with torch.no_grad():
            self.fc.weight[0] = -1
            self.fc.weight[1] = 1
            self.fc.bias.copy_(torch.tensor(bias))
        self.model_config = ModelConfig(
            name="region_net", kind="image", input_size=size, target_layer="act", classifier="fc"
        )

    def forward(self, x):
        feats = self.act(self.conv(x * self.mask))
        return self.fc(feats.mean(dim=(2, 3)))


def test_cam_peaks_in_the_region_the_model_looks_at():
    torch.manual_seed(0)
    model = RegionNet()
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    exp = explain_cnn(model, image, target_class=1)
    assert exp.values.shape == (32, 48)
    r, c = np.unravel_index(np.argmax(exp.values), exp.values.shape)
    assert 3 <= r < 13 and 29 <= c < 45
    inside = exp.values[4:12, 30:44].mean()
    outside = exp.values.copy()
    outside[2:14, 28:46] = np.nan  # leave the upsampling border aside
    assert inside > 0.2 and np.nanmax(outside) == 0
    dense = exp.to_dense()  # stretched over the 64 x 96 image
    r, c = np.unravel_index(np.argmax(dense), dense.shape)
    assert 6 <= r < 26 and 58 <= c < 90


def test_tta_maps_back_to_the_image_frame():
    """A rotation-equivariant model (red-pixel detector, global mean): with 8-fold TTA
    every augmented map is mapped back, so the average still peaks on the red patch."""
    model = RegionNet(size=(32, 48), region=None)
    with torch.no_grad():
        model.conv.weight.zero_()
        model.conv.weight[:, 0, 1, 1] = 1  # red channel, centre tap: equivariant under D4
    image = np.zeros((32, 48, 3), np.uint8)
    image[2:8, 36:44, 0] = 255
    exp = explain_cnn(model, image, target_class=1, tta=True)
    assert exp.extra["tta"] and exp.values.shape == (32, 48)
    r, c = np.unravel_index(np.argmax(exp.values), exp.values.shape)
    assert 1 <= r < 9 and 35 <= c < 45
    # probabilities are the mean over the 8 transforms
    x = to_tensor(image, model.model_config.mean, model.model_config.std, (32, 48))
    with torch.no_grad():
        probs = np.mean(
            [torch.softmax(model(dihedral(x, k, f)[None]), 1)[0].numpy() for k, f in DIHEDRAL], 0
        )
    np.testing.assert_allclose(exp.probabilities, probs, atol=1e-5)


def test_operating_threshold_decides_binary_prediction():
    model = RegionNet(bias=(1.0, 0.0))  # P(class 1) well below 0.5
    image = np.full((32, 48, 3), 10, np.uint8)
    plain = explain_cnn(model, image)
    assert plain.target_class == 0 and "operating_threshold" not in plain.extra
    meta = {"classes": ["B", "M"], "threshold": 0.01, "weights_sha256": "abc", "synthetic": True}
    exp = explain_cnn(model, image, checkpoint_meta=meta)
    assert exp.probabilities[1] < 0.5 and exp.target_class == 1
    assert exp.extra["operating_threshold"] == 0.01
    assert exp.extra["predicted_class_at_operating_threshold"] == "M"
    assert exp.classes == ("B", "M") and exp.checkpoint_sha256 == "abc" and exp.synthetic
    assert exp.extra["target_layer"] == "act"


def test_dt_gradcam_and_gradcam_plus_plus():
    torch.manual_seed(0)
    model = RegionNet()
    image = np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    dt = explain_cnn(model, image, method="dt-gradcam", target_class=1)
    assert dt.method == "dt-gradcam" and 0 < dt.threshold < 1
    assert (dt.values[dt.values > 0] > dt.threshold).all()
    assert dt.extra["threshold_method"] == "otsu"
    pp = explain_cnn(model, image, method="gradcam++", target_class=1)
    assert pp.values.max() == pytest.approx(1.0) and pp.values.min() >= 0
    res = GradCAMPlusPlus(model)(to_tensor(image, size=(32, 48))[None], 1)
    assert res.cam.shape == (1, 32, 48) and (res.cam >= 0).all()
    with pytest.raises(ValueError):
        explain_cnn(model, image, method="lime")


def test_dynamic_threshold_separates_modes():
    rng = np.random.default_rng(0)
    cam = rng.normal(0.15, 0.03, (40, 40))
    cam[10:20, 5:25] = rng.normal(0.8, 0.05, (10, 20))
    out, thr = dynamic_threshold(cam)
    high = np.zeros(cam.shape, bool)
    high[10:20, 5:25] = True
    assert cam[~high].max() <= thr < cam[high].min()  # Otsu's threshold lies between the modes
    assert (out[10:20, 5:25] > 0).all()
    assert (out[cam <= thr] == 0).all() and np.count_nonzero(out) == 200
    np.testing.assert_array_equal(out[out > 0], cam[out > 0].astype(np.float32))
    out, thr = dynamic_threshold(cam, method="percentile", percentile=90)
    assert np.count_nonzero(out) == pytest.approx(160, abs=2)
    out, thr = dynamic_threshold(np.full((4, 4), 0.5))
    assert not out.any()
    with pytest.raises(ValueError):
        dynamic_threshold(cam, method="magic")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    model = create_model("test_cnn").eval()
    x = torch.randn(2, 3, 32, 32)
    cpu = GradCAM(model)(x, 1).cam
    gpu = GradCAM(model.cuda())(x.cuda(), 1).cam
    assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, atol=1e-5)
