"""Per-nucleus importance (Sureka et al., 2020, Sec. III-F, eq. 5): occlusion and attention."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_geometric")

from torch_geometric.data import Data  # noqa: E402
from torch_geometric.utils import k_hop_subgraph, subgraph  # noqa: E402

from histoview.explain.base import Explanation, NucleiPoints  # noqa: E402
from histoview.explain.graph import (  # noqa: E402
    attention_importance,
    explain_graph,
    hop_distances,
    occluded_graphs,
    occlusion_importance,
)
from histoview.models import create_model  # noqa: E402
from histoview.models.graph_nets import EDGE_FEATURES, NODE_FEATURES  # noqa: E402

TINY = ("test_rsf", "test_rsf_edge", "test_rsf_attention")
FULL = ("rsf", "rsf-edge", "rsf-attention")


# tiny graphs: one thread is faster and immune to a busy machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_graph(n: int = 40, *, radius: float = 0.22, seed: int = 0) -> Data:
    """Random geometric graph plus an isolated node and a separate 3-node chain."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 1, (n, 2))
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    src, dst = np.nonzero((d < radius) & ~np.eye(n, dtype=bool))
    chain = np.array([[n + 1, n + 2], [n + 2, n + 1], [n + 2, n + 3], [n + 3, n + 2]]).T
    src, dst = np.concatenate([src, chain[0]]), np.concatenate([dst, chain[1]])  # node n alone
    E, N = src.size, n + 4
    attr = rng.uniform(-1, 1, (E, EDGE_FEATURES))
    attr[:, 0] = rng.uniform(0, 1, E)
    return Data(
        x=torch.tensor(rng.normal(size=(N, NODE_FEATURES)), dtype=torch.float32),
        edge_index=torch.tensor(np.stack([src, dst]), dtype=torch.long),
        edge_attr=torch.tensor(attr, dtype=torch.float32),
    )


def sharpened(name: str, seed: int = 0, **kwargs):
    """An untrained model whose output moves a lot with its input, so scores are not tiny."""
    torch.manual_seed(seed)
    model = create_model(name, **kwargs).eval()
    with torch.no_grad():
        model.head[-1].weight.mul_(30.0)
        model.set_node_normalisation(
            torch.full((NODE_FEATURES,), 0.1), torch.full((NODE_FEATURES,), 0.8)
        )
    return model


def plain_occlusion(model, data: Data, k: int, target: int) -> np.ndarray:
    """Eq. 5 by definition: one forward pass per nucleus on the explicitly occluded graph."""
    with torch.no_grad():
        p = torch.softmax(model(data), -1)[0, target]
        scores = []
        for i in range(data.num_nodes):
            ball, _, _, _ = k_hop_subgraph(i, k, data.edge_index, num_nodes=data.num_nodes)
            keep = torch.ones(data.num_nodes, dtype=torch.bool)
            keep[ball] = False
            ei, ea = subgraph(
                keep, data.edge_index, data.edge_attr, relabel_nodes=True, num_nodes=data.num_nodes
            )
            g = Data(x=data.x[keep], edge_index=ei, edge_attr=ea)
            scores.append(float(p - torch.softmax(model(g), -1)[0, target]))
    return np.array(scores)


@pytest.mark.parametrize("name", TINY + ("rsf-attention",))
def test_occlusion_matches_plain_definition(name):
    model = sharpened(name)
    data = random_graph()
    with torch.no_grad():
        target = int(model(data).argmax())
    for k in (0, 1, 2, 3):
        expected = plain_occlusion(model, data, k, target)
        assert np.abs(expected).max() > 1e-3  # the check is not vacuous
        for method in ("incremental", "batched"):
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)  # the engine's check passes
                got = occlusion_importance(model, data, k=k, method=method, batch_size=11)
            assert got.shape == (data.num_nodes,) and got.dtype == np.float32
            np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"{method} k={k}")


def test_incremental_exact_on_one_way_and_repeated_edges():
    """Edges in one direction only, repeated edges and self-loops: the engine still gives
    the definition (hops counted along edges in either direction), for k up to the whole
    graph (empty occluded graphs)."""
    rng = np.random.default_rng(5)
    g = random_graph(60, seed=3)
    keep = torch.from_numpy(rng.uniform(size=g.num_edges) < 0.6)
    ei, ea = g.edge_index[:, keep], g.edge_attr[keep]
    again = torch.arange(0, ei.size(1), 7)
    loops = torch.arange(5).repeat(2, 1)
    ei = torch.cat([ei, ei[:, again], loops], 1)
    ea = torch.cat([ea, 0.5 * ea[again], torch.rand(5, EDGE_FEATURES)])
    data = Data(x=g.x, edge_index=ei, edge_attr=ea)
    for name in TINY:
        model = sharpened(name)
        for k in (1, 2, 9):
            expected = occlusion_importance(model, data, k=k, method="batched", target_class=1)
            assert np.abs(expected).max() > 1e-3
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                got = occlusion_importance(model, data, k=k, method="incremental", target_class=1)
            np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"{name} k={k}")


def test_sparse_product_ignores_what_its_output_held(monkeypatch):
    """The engine's sparse products write into uninitialised tensors (``addmm`` with
    beta=0): whatever the memory held before, NaN included, must not leak into the result."""
    from histoview.explain import occlusion
    from histoview.models.graph_layers import sparse_csr

    rng = np.random.default_rng(0)
    dense_op = rng.normal(size=(30, 40)) * (rng.uniform(size=(30, 40)) < 0.2)
    dense_op[7] = 0  # an empty row
    op = torch.tensor(dense_op, dtype=torch.float32).to_sparse_csr()
    op = sparse_csr(op.crow_indices(), op.col_indices(), op.values(), op.shape)
    b = torch.tensor(rng.normal(size=(40, 9)), dtype=torch.float32)
    real_new_empty = torch.Tensor.new_empty
    monkeypatch.setattr(
        torch.Tensor, "new_empty", lambda t, *a, **kw: real_new_empty(t, *a, **kw).fill_(np.nan)
    )
    got = occlusion._spmm(op, b)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.tensor(dense_op, dtype=torch.float32) @ b)


def test_edge_operators_sum_over_edges():
    """Both layouts of the engine's edge operators give sum_j e_ijl y_jl (rows with no
    edges included)."""
    from histoview.explain.occlusion import _edge_operator

    rng = np.random.default_rng(2)
    n_rows, n_cols, L, E = 7, 5, 3, 12
    rows = np.sort(rng.integers(0, n_rows, E))
    rows[rows == 3] = 4  # row 3 has no edges
    cols = rng.integers(0, n_cols, E)
    attr = rng.normal(size=(E, L)).astype(np.float32)
    y = torch.tensor(rng.normal(size=(n_cols, L, 6)), dtype=torch.float32)
    expected = torch.zeros(n_rows, L, 6)
    for r, c, a in zip(rows, cols, attr):
        expected[r] += torch.from_numpy(a)[:, None] * y[c]
    op = _edge_operator(rows, cols, attr, n_rows, n_cols)
    torch.testing.assert_close(op @ y.reshape(n_cols * L, 6), expected.sum(1))
    per = _edge_operator(rows, cols, attr, n_rows, n_cols, per_channel=True)
    for lane in range(L):
        got = (per @ y[:, lane]).view(L, n_rows, 6)[lane]
        torch.testing.assert_close(got, expected[:, lane])


def test_check_catches_a_modified_layer(monkeypatch):
    """A layer whose arithmetic differs from what the engine assumes (a vertex convolution
    made non-linear: the full graph still matches, since the engine runs the layer itself,
    but its linear updates of the occluded graphs do not) is caught on the occluded graphs
    checked: a warning, and the scores of the definition."""
    from histoview.explain import graph as graph_module
    from histoview.models.graph_layers import RSFConv

    model = sharpened("test_rsf_attention")
    data = random_graph()
    with torch.no_grad():
        target = int(model(data).argmax())
    linear = RSFConv.forward
    monkeypatch.setattr(
        RSFConv, "forward", lambda self, x, adj: 3 * torch.tanh(linear(self, x, adj))
    )
    expected = plain_occlusion(model, data, 1, target)
    checked = []
    real = graph_module._occluded_logits

    def spy(model, data, neighbours, centres, k, batch_size=128):
        checked.append(np.asarray(centres).tolist())
        return real(model, data, neighbours, centres, k, batch_size)

    monkeypatch.setattr(graph_module, "_occluded_logits", spy)
    with pytest.warns(RuntimeWarning, match="occluded graphs of nuclei"):
        got = occlusion_importance(model, data, k=1, target_class=target)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert 1 <= len(checked[0]) <= 3  # the nuclei checked; then the definition's chunks


def test_check_catches_a_changed_node_stage(monkeypatch):
    """A model whose node stage no longer matches the engine (Vertex Conv 2 with a leaky
    ReLU) is caught on the full graph already."""
    import torch.nn.functional as F

    from histoview.models.graph_nets import RSFNet

    model = sharpened("test_rsf")
    data = random_graph()
    before = plain_occlusion(model, data, 1, 0)
    original = RSFNet.node_stage

    def node_stage(self, x, adj):
        out = original(self, x, adj)
        out["z"] = F.leaky_relu(self.conv2(out["h1"], adj), 0.3)
        return out

    monkeypatch.setattr(RSFNet, "node_stage", node_stage)
    expected = plain_occlusion(model, data, 1, 0)
    assert np.abs(expected - before).max() > 1e-3  # the change matters
    with pytest.warns(RuntimeWarning, match="on the full graph"):
        got = occlusion_importance(model, data, k=1, target_class=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_classwise_attention_occlusion_and_attention():
    """One attention branch per class: occlusion stays exact, attention follows the class."""
    model = sharpened("test_rsf_attention", num_classes=3, classwise_attention=True)
    data = random_graph(seed=2)
    with torch.no_grad():
        logits, att = model(data, return_attention=True)
    for target in range(3):
        expected = plain_occlusion(model, data, 1, target)
        got = occlusion_importance(model, data, k=1, target_class=target, batch_size=13)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    per_class = [attention_importance(model, data, target_class=c) for c in range(3)]
    for a in per_class:
        assert a.shape == (data.num_nodes,) and abs(a.sum() - 1) < 1e-5
    assert np.abs(per_class[0] - per_class[1]).max() > 1e-4  # each class has its own scores
    np.testing.assert_allclose(per_class[int(logits.argmax())], att.numpy(), atol=1e-7)


@pytest.mark.parametrize("classwise", [False, True])
def test_sigmoid_gate_occlusion_exact_and_gates_independent(classwise):
    """Sigmoid-gated attention (pooling averages the gated nuclei): occlusion stays exact and
    a nucleus's gate does not depend on nuclei outside its receptive field."""
    model = sharpened(
        "test_rsf_attention",
        num_classes=3,
        attention_gate="sigmoid",
        classwise_attention=classwise,
        attention_input="both" if classwise else "embedding",
    )
    data = random_graph(seed=4)
    with torch.no_grad():
        target = int(model(data).argmax())
    for k in (1, 2):
        expected = plain_occlusion(model, data, k, target)
        assert np.abs(expected).max() > 1e-3
        got = occlusion_importance(model, data, k=k, method="incremental", batch_size=9)
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"k={k}")
    gates = attention_importance(model, data)
    assert ((gates > 0) & (gates < 1)).all() and abs(gates.sum() - 1) > 1e-3
    # The isolated node (index 40) and the 3-node chain are far from the rest: dropping the
    # chain leaves the isolated node's gate exactly as it was (a softmax would renormalise).
    keep = torch.ones(data.num_nodes, dtype=torch.bool)
    keep[41:] = False
    ei, ea = subgraph(keep, data.edge_index, data.edge_attr, relabel_nodes=True)
    small = Data(x=data.x[keep], edge_index=ei, edge_attr=ea)
    if not classwise:
        assert attention_importance(model, small)[40] == pytest.approx(gates[40], abs=1e-6)


def test_attention_sparsity_penalty():
    """The L1 penalty on the sigmoid gates is what the training engine adds to the loss."""
    data = random_graph()
    model = create_model("test_rsf_attention", attention_gate="sigmoid", attention_sparsity=0.5)
    model.train()
    model(data)
    reg = model.regularization_loss()
    _, gates = model(data, return_attention=True)
    assert float(reg.detach()) == pytest.approx(0.5 * float(gates.detach().mean()), rel=1e-5)
    reg.backward()
    assert model.attention.score_lin.weight.grad.abs().sum() > 0  # it trains the gate
    assert create_model("test_rsf_attention").regularization_loss() == 0.0
    with pytest.raises(ValueError, match="sigmoid"):
        create_model("test_rsf_attention", attention_sparsity=0.5)  # softmax has no penalty
    with pytest.raises(ValueError, match="gate"):
        create_model("test_rsf_attention", attention_gate="relu")


@pytest.mark.parametrize("name", FULL)
def test_full_size_models_exact(name):
    model = sharpened(name, seed=1)
    data = random_graph(30, seed=3)
    expected = plain_occlusion(model, data, 1, 1)
    got = occlusion_importance(model, data, k=1, target_class=1)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_target_class_and_auto_method():
    model = sharpened("test_rsf")
    data = random_graph(seed=5)
    s0 = occlusion_importance(model, data, target_class=0)
    s1 = occlusion_importance(model, data, target_class=1)
    np.testing.assert_allclose(s0, -s1, atol=1e-6)  # two classes: p1 = 1 - p0
    with pytest.raises(ValueError, match="target_class"):
        occlusion_importance(model, data, target_class=2)
    with pytest.raises(ValueError, match="method"):
        occlusion_importance(model, data, method="fast")


def test_isolated_node_k1_removes_only_itself():
    data = random_graph()
    lonely = data.num_nodes - 4  # random_graph's isolated node
    dist = hop_distances(data.edge_index, data.num_nodes, [lonely, lonely + 1], 3)
    assert (dist[0] <= 1).nonzero().view(-1).tolist() == [lonely]
    assert (dist[1] <= 1).nonzero().view(-1).tolist() == [lonely + 1, lonely + 2]
    assert (dist[1] == 2).nonzero().view(-1).tolist() == [lonely + 3]
    batch = occluded_graphs(data, dist > 1)
    assert batch.num_graphs == 2
    nodes = torch.bincount(batch.batch, minlength=2).tolist()
    edges = torch.bincount(batch.batch[batch.edge_index[0]], minlength=2).tolist()
    assert nodes == [data.num_nodes - 1, data.num_nodes - 2]
    assert edges == [data.num_edges, data.num_edges - 4]
    assert batch.edge_attr.shape == (batch.num_edges, EDGE_FEATURES)
    # Its score is the drop without that node alone.
    model = sharpened("test_rsf_edge")
    keep = torch.ones(data.num_nodes, dtype=torch.bool)
    keep[lonely] = False
    ei, ea = subgraph(keep, data.edge_index, data.edge_attr, relabel_nodes=True)
    with torch.no_grad():
        p = torch.softmax(model(data), -1)[0, 0]
        q = torch.softmax(model(Data(x=data.x[keep], edge_index=ei, edge_attr=ea)), -1)[0, 0]
    score = occlusion_importance(model, data, k=1, target_class=0)[lonely]
    assert score == pytest.approx(float(p - q), abs=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_node_whose_removal_changes_nothing_scores_zero(name):
    # Identical isolated nuclei: removing one leaves the pooled graph (a mean) unchanged.
    data = Data(
        x=torch.ones(6, NODE_FEATURES) * 0.5,
        edge_index=torch.zeros(2, 0, dtype=torch.long),
        edge_attr=torch.zeros(0, EDGE_FEATURES),
    )
    scores = occlusion_importance(sharpened(name), data, k=1)
    np.testing.assert_allclose(scores, 0.0, atol=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_single_node_graph_uses_empty_graph(name):
    model = sharpened(name)
    one = Data(
        x=torch.randn(1, NODE_FEATURES, generator=torch.Generator().manual_seed(1)),
        edge_index=torch.zeros(2, 0, dtype=torch.long),
        edge_attr=torch.zeros(0, EDGE_FEATURES),
    )
    empty = Data(
        x=torch.zeros(0, NODE_FEATURES), edge_index=one.edge_index, edge_attr=one.edge_attr
    )
    with torch.no_grad():
        p = torch.softmax(model(one), -1)[0]
        q = torch.softmax(model(empty), -1)[0]
    target = int(p.argmax())
    for method in ("incremental", "batched"):
        got = occlusion_importance(model, one, method=method)
        assert got[0] == pytest.approx(float(p[target] - q[target]), abs=1e-6)


def test_attention_importance():
    model = sharpened("rsf-attention")
    data = random_graph()
    att = attention_importance(model, data)
    assert att.shape == (data.num_nodes,) and (att >= 0).all()
    assert att.sum() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="no attention layer"):
        attention_importance(create_model("rsf"), data)


def test_model_mode_restored():
    model = create_model("test_rsf").train()
    occlusion_importance(model, random_graph())
    assert model.training


def test_torch_thread_count_unchanged(monkeypatch):
    """Occlusion never changes torch's process-wide thread settings, even when it fails."""
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    monkeypatch.setattr(torch, "set_num_interop_threads", lambda n: calls.append(n))
    before = torch.get_num_threads()
    model, data = create_model("test_rsf"), random_graph()
    occlusion_importance(model, data, method="incremental")
    occlusion_importance(model, data, method="batched")
    with pytest.raises(ValueError, match="out of range"):
        occlusion_importance(model, data, method="incremental", target_class=7)
    assert calls == [] and torch.get_num_threads() == before


class _Graph:
    """Stand-in with the NucleiGraph fields explain_graph reads."""

    def __init__(self, data: Data, seed: int = 0):
        rng = np.random.default_rng(seed)
        n = data.num_nodes
        self.centroids = rng.uniform(0, 200, (n, 2))
        self.node_features = data.x.numpy()
        self.feature_names = tuple(f"f{i}" for i in range(NODE_FEATURES))
        self.edge_index = data.edge_index.numpy()
        self.edge_weight = data.edge_attr[:, 0].numpy()
        self._data = data

    def to_pyg(self):
        return self._data


@pytest.mark.parametrize("importance", ["attention", "occlusion"])
def test_explain_graph(importance):
    model = sharpened("test_rsf_attention")
    data = random_graph()
    graph = _Graph(data)
    exp = explain_graph(
        model,
        graph,
        importance=importance,
        k=2,
        classes=("in situ", "invasive"),
        image_shape=(256, 256),
        synthetic=True,
    )
    assert isinstance(exp, Explanation) and exp.method == "graph"
    assert exp.model == "test_rsf_attention"
    assert isinstance(exp.geometry, NucleiPoints)
    assert exp.values.shape == (data.num_nodes,) and exp.values.dtype == np.float32
    assert exp.probabilities.shape == (2,)
    assert exp.probabilities.sum() == pytest.approx(1.0)
    assert exp.target_class == exp.predicted_class
    assert exp.extra == {
        "importance": importance,
        "attention_gate": "softmax" if importance == "attention" else None,
        "k": 2 if importance == "occlusion" else None,
        "num_nuclei": data.num_nodes,
        "num_edges": data.num_edges,
    }
    geo = exp.geometry
    assert geo.image_shape == (256, 256) and geo.edge_index.shape == (2, data.num_edges)
    np.testing.assert_array_equal(geo.features["f3"], graph.node_features[:, 3])
    assert exp.to_dense((32, 32)).shape == (32, 32)
    assert exp.summary()["importance"] == importance
    if importance == "occlusion":
        expected = occlusion_importance(model, data, k=2, target_class=exp.target_class)
        np.testing.assert_allclose(exp.values, expected)


def test_explain_graph_with_nuclei_graph():
    from histoview.preprocessing.graph import build_nuclei_graph
    from histoview.preprocessing.nuclei import FEATURE_NAMES

    rng = np.random.default_rng(0)
    graph = build_nuclei_graph(
        rng.uniform(0, 300, (50, 2)),
        pixel_size_um=0.5,
        features=rng.normal(size=(50, 13)),
        feature_names=FEATURE_NAMES,
    )
    exp = explain_graph(create_model("test_rsf"), graph, importance="occlusion", target_class=1)
    assert exp.target_class == 1 and exp.values.shape == (50,)
    assert set(exp.geometry.features) == set(FEATURE_NAMES)
    assert exp.geometry.image_shape[0] >= int(graph.centroids[:, 0].max())
    with pytest.raises(ValueError, match="no attention layer"):
        explain_graph(create_model("test_rsf"), graph, importance="attention")


def test_empty_graph_and_batches():
    from torch_geometric.data import Batch

    model = create_model("test_rsf")
    empty = Data(
        x=torch.zeros(0, NODE_FEATURES),
        edge_index=torch.zeros(2, 0, dtype=torch.long),
        edge_attr=torch.zeros(0, EDGE_FEATURES),
    )
    assert occlusion_importance(model, empty).shape == (0,)
    g = random_graph(10)
    one = Batch.from_data_list([g])
    np.testing.assert_allclose(occlusion_importance(model, one), occlusion_importance(model, g))
    with pytest.raises(ValueError, match="one graph at a time"):
        occlusion_importance(model, Batch.from_data_list([g, g]))
