"""Image CNNs: build, train one step, explain; offline ImageNet weights; RMCG pieces."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import histoview.models.attention_cnns  # noqa: E402,F401  (registers until models/__init__ does)
from histoview.explain.gradcam import explain_cnn  # noqa: E402
from histoview.explain.rmcg import explain_rmcg  # noqa: E402
from histoview.models import create_model, list_models  # noqa: E402
from histoview.models.pretrained import load_pretrained_backbone  # noqa: E402
from histoview.models.rmcg import mutual_information_graph  # noqa: E402

FULL_SIZE = {
    "resnet18",
    "resnet50",
    "vgg16",
    "customnet",
    "dalaresnet50",
    "cspresnet50_fpn_se",
    "rmcg",
    "alexnet",
    "resnet18-gcn",
    "ecc",
    "resnet18-gat",
    "gcnii",
}
IMAGE_MODELS = list_models(kind="image", include_test=True)


def _params(modules) -> list:
    modules = modules if isinstance(modules, (list, tuple)) else [modules]
    return [p for m in modules for p in m.parameters()]


def test_all_paper_models_registered():
    assert FULL_SIZE <= set(list_models(kind="image"))
    assert not {n for n in list_models(kind="image") if n.startswith("test_")}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in FULL_SIZE else n for n in IMAGE_MODELS],
)
def test_model_builds_trains_and_explains(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=2)
    config = model.model_config
    if name in FULL_SIZE and name != "customnet":  # full-size models at a small input
        size = (96, 96) if name == "rmcg" else (64, 64)
        model.model_config = config = dataclasses.replace(config, input_size=size)
    assert config.kind == "image" and config.target_layer and config.paper
    model.get_submodule(config.target_layer)
    model.get_submodule(config.classifier)

    # backbone (pretrained part) and head (new part) are disjoint and cover the classifier
    backbone = {id(p) for p in _params(model.backbone)}
    head = {id(p) for p in _params(model.head)}
    assert backbone and head and not backbone & head
    assert {id(p) for p in model.get_submodule(config.classifier).parameters()} <= head

    # timm-style API agrees with forward
    x = torch.randn(2, 3, *config.input_size)
    model.eval()
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 2)
        feats = model.forward_features(x)
        assert torch.allclose(model.forward_head(feats), logits, atol=1e-5)
        pre = model.forward_head(feats, pre_logits=True)
    assert pre.ndim == 2 and pre.shape[0] == 2
    if name == "cspresnet50_fpn_se":
        assert pre.shape[1] == 1536
    if config.explanation == "node_attention":
        att = model.last_node_attention
        assert att.shape[0] == 2 and att.ndim == 3
        assert torch.allclose(att.sum(dim=(1, 2)), torch.ones(2), atol=1e-5)

    # one optimizer step: gradients reach backbone and head, parameters change
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1]))
    if hasattr(model, "regularization_loss"):
        loss = loss + model.regularization_loss()
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in _params(model.backbone))
    opt.step()
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert changed > len(before) // 2

    # explanation of the right shape, in [0, 1]
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    exp = explain_cnn(model, image)
    assert exp.values.shape == tuple(config.input_size) and exp.values.dtype == np.float32
    assert np.isfinite(exp.values).all() and exp.values.min() >= 0 and exp.values.max() <= 1
    assert exp.image_shape == (50, 70) and exp.to_dense().shape == (50, 70)
    assert exp.model == name and exp.probabilities.sum() == pytest.approx(1, abs=1e-5)
    if config.explanation == "node_attention":
        exp = explain_rmcg(model, image)
        assert exp.method == "rmcg" and exp.values.shape == model.last_node_attention.shape[1:]
        assert exp.values.max() == pytest.approx(1.0)


def test_customnet_follows_table_iii():
    model = create_model("customnet").eval()
    assert model.model_config.input_size == (128, 128)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 128]
    x = torch.zeros(1, 3, 128, 128)
    feats = model.forward_features(x)
    assert feats.shape == (1, 128, 8, 8)  # Conv5 at 8 x 8
    assert model.fc1[1].in_features == 2048 and model.fc1[1].out_features == 1024
    assert model.forward_head(feats, pre_logits=True).shape == (1, 1024)


def test_pretrained_true_without_cache_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(RuntimeError, match="not available offline"):
        create_model("test_dalaresnet", pretrained=True)  # torchvision resnet18 weights
    with pytest.raises(RuntimeError, match="not available offline"):
        load_pretrained_backbone(torch.nn.Linear(1, 1), True, arch="cspresnet50")  # timm
    with pytest.raises(RuntimeError, match="no ImageNet weights"):
        create_model("test_csp_fpn_se", pretrained=True)


def test_pretrained_file_and_cache_load(tmp_path, monkeypatch):
    import torchvision
    from safetensors.torch import save_file

    imagenet = torchvision.models.resnet18(weights=None).state_dict()  # stands in for the real file
    imagenet = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in imagenet.items()}
    st = tmp_path / "resnet18.safetensors"
    save_file({f"module.{k}": v for k, v in imagenet.items()}, str(st))  # prefix stripped
    model = create_model("test_dalaresnet", pretrained=st)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, imagenet[k]), k
    # a pickle file is never loaded (pretrained=True from the hash-checked torch.hub cache:
    # tests/test_checkpoint_validation.py)
    pth = tmp_path / "resnet18.pth"
    torch.save(imagenet, pth)
    with pytest.raises(ValueError, match="must be a .safetensors file"):
        create_model("test_dalaresnet", pretrained=str(pth))

    # a file of another architecture is refused, naming the problem
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(RuntimeError, match="missing"):
        create_model("test_dalaresnet", pretrained=tmp_path / "bad.safetensors")
    with pytest.raises(ValueError):
        create_model("customnet", pretrained=True)


def test_mutual_information_graph():
    torch.manual_seed(0)
    nodes = torch.randn(2, 12, 16)
    edge_index, weight = mutual_information_graph(nodes, (3, 4), k=2)
    assert edge_index.shape[0] == 2 and edge_index.shape[1] == weight.shape[0]
    assert (edge_index[0] != edge_index[1]).all()  # no self loops
    assert ((edge_index[0] // 12) == (edge_index[1] // 12)).all()  # edges stay in their graph
    pairs = set(map(tuple, edge_index.T.tolist()))
    assert all((j, i) in pairs for i, j in pairs)  # symmetric
    assert (0, 1) in pairs and (0, 4) in pairs  # 4-connected lattice of the 3 x 4 grid
    assert weight.min() >= 0 and weight.max() == pytest.approx(1.0)
    # the strongest MI pair is an edge
    z = torch.nn.functional.normalize(nodes[0] - nodes[0].mean(1, keepdim=True), dim=1)
    rho = (z @ z.T).abs().fill_diagonal_(0)
    i, j = divmod(int(rho.argmax()), 12)
    assert (i, j) in pairs


def test_rmcg_regularization_is_l2_on_last_layer():
    model = create_model("test_rmcg", l2_lambda=0.1)
    w = model.classifier.weight
    assert model.regularization_loss().item() == pytest.approx(0.05 * float(w.square().sum()))
    model.regularization_loss().backward()
    assert w.grad is not None
    assert all(p.grad is None for p in model.backbone.parameters())
