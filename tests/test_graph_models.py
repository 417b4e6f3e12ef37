"""RSF, RSF+Edge and RSF+Attention (Sureka et al., 2020, Table I): sizes, shapes, edge cases, training."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_geometric")

from torch_geometric.data import Batch, Data  # noqa: E402

from histoview.models import create_model, get_model_config, list_models  # noqa: E402
from histoview.models.graph_nets import EDGE_FEATURES, NODE_FEATURES, RSFNet  # noqa: E402

FULL = ("rsf", "rsf-edge", "rsf-attention")
TINY = ("test_rsf", "test_rsf_edge", "test_rsf_attention")


# tiny graphs: one thread is faster and immune to a busy machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_graph(n: int, *, radius: float = 0.3, seed: int = 0, F=NODE_FEATURES, L=EDGE_FEATURES):
    """Random geometric graph in the unit square, both edge directions, L edge features."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 1, (n, 2))
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    src, dst = np.nonzero((d < radius) & ~np.eye(n, dtype=bool))
    attr = np.concatenate(
        [1 - d[src, dst, None] / radius, rng.uniform(-1, 1, (src.size, L - 1))], axis=1
    )
    return Data(
        x=torch.tensor(rng.normal(size=(n, F)), dtype=torch.float32),
        edge_index=torch.tensor(np.stack([src, dst]), dtype=torch.long),
        edge_attr=torch.tensor(attr, dtype=torch.float32),
    )


def no_edges(n: int, seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    return Data(
        x=torch.randn(n, NODE_FEATURES, generator=g),
        edge_index=torch.zeros(2, 0, dtype=torch.long),
        edge_attr=torch.zeros(0, EDGE_FEATURES),
    )


def test_registry_configs():
    assert set(FULL) <= set(list_models("graph"))
    assert set(TINY) <= set(list_models("graph", include_test=True))
    assert not set(TINY) & set(list_models("graph"))
    for name in FULL + TINY:
        cfg = get_model_config(name)
        assert cfg.kind == "graph" and "Sureka et al." in cfg.paper
        assert cfg.explanation == ("attention" if "attention" in name else None)
        assert {"in_channels", "edge_dim"} <= set(cfg.defaults)


def test_default_inputs_match_graph_builder():
    from histoview.preprocessing.graph import EDGE_FEATURE_NAMES
    from histoview.preprocessing.nuclei import FEATURE_NAMES

    assert NODE_FEATURES == len(FEATURE_NAMES)
    assert EDGE_FEATURES == len(EDGE_FEATURE_NAMES)


@pytest.mark.parametrize("name", FULL)
def test_about_300k_parameters(name):
    # Sureka et al., 2020, Sec. IV-B: "All the models contained nearly 300,000 parameters."
    n = sum(p.numel() for p in create_model(name).parameters())
    assert 255_000 <= n <= 345_000, n


@pytest.mark.parametrize("name", FULL + TINY)
def test_forward_batch_of_varied_graphs(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    graphs = [random_graph(40, seed=1), random_graph(1), no_edges(5), random_graph(12, seed=2)]
    batch = Batch.from_data_list(graphs)
    with torch.no_grad():
        logits = model(batch)
        single = torch.cat([model(g) for g in graphs])
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    # Each graph of a batch is classified as if alone.
    torch.testing.assert_close(logits, single, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", FULL)
def test_one_node_zero_edge_and_empty_graphs(name):
    model = create_model(name).eval()
    empty = Data(
        x=torch.zeros(0, NODE_FEATURES),
        edge_index=torch.zeros(2, 0, dtype=torch.long),
        edge_attr=torch.zeros(0, EDGE_FEATURES),
    )
    with torch.no_grad():
        for g in (random_graph(1), no_edges(7), empty):
            out = model(g)
            assert out.shape == (1, 2) and torch.isfinite(out).all()
        # An empty graph is the head applied to an all-zero pooled graph.
        c1, h = model.clusters[0], model.conv2.out_channels
        zero = model.forward_head(torch.zeros(1, c1, h), torch.zeros(1, c1, c1, EDGE_FEATURES))
        torch.testing.assert_close(model(empty), zero)


def test_edge_attr_checks():
    model = create_model("test_rsf").eval()
    g = random_graph(10)
    with pytest.raises(ValueError, match="edge features"):
        model(Data(x=g.x, edge_index=g.edge_index, edge_attr=g.edge_attr[:, :2]))
    with pytest.raises(ValueError, match="no edge_attr"):
        model(Data(x=g.x, edge_index=g.edge_index))


@pytest.mark.parametrize("name", FULL)
def test_training_step_changes_parameters(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    batch = Batch.from_data_list([random_graph(30, seed=s) for s in range(4)])
    y = torch.tensor([0, 1, 0, 1])
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = torch.nn.functional.cross_entropy(model(batch), y)
    loss.backward()
    missing = [k for k, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    opt.step()
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)


def test_attention_readable_per_node():
    torch.manual_seed(0)
    model = create_model("rsf-attention").eval()
    identical = Data(
        x=torch.ones(4, NODE_FEATURES),
        edge_index=torch.zeros(2, 0, dtype=torch.long),
        edge_attr=torch.zeros(0, EDGE_FEATURES),
    )
    graphs = [random_graph(25, seed=3), random_graph(1), identical]
    batch = Batch.from_data_list(graphs)
    with torch.no_grad():
        logits, att = model(batch, return_attention=True)
    assert att.shape == (30,) and (att >= 0).all()
    assert torch.equal(model.last_attention, att)
    sums = torch.zeros(3).index_add_(0, batch.batch, att)
    torch.testing.assert_close(sums, torch.ones(3))
    # Identical isolated nuclei share the attention equally.
    torch.testing.assert_close(att[26:], torch.full((4,), 0.25))
    with pytest.raises(ValueError, match="no attention"):
        create_model("rsf").eval()(batch, return_attention=True)


def test_rsf_conv_is_eq2_and_matches_nnconv():
    """Eq. 2 is NNConv with a linear, bias-free edge network; both input forms agree."""
    from torch_geometric.nn import NNConv

    from histoview.models.graph_layers import RSFConv, rsf_adjacency

    torch.manual_seed(0)
    g = random_graph(20, F=5, L=3)
    conv = RSFConv(5, 7, edge_dim=3)
    torch.nn.init.normal_(conv.bias)
    edge_nn = torch.nn.Linear(3, 5 * 7, bias=False)
    ref = NNConv(5, 7, edge_nn, aggr="add", root_weight=True, bias=True)
    with torch.no_grad():  # NNConv's weight for edge e: sum_l e_l Theta_l, (in, out)
        edge_nn.weight.copy_(conv.lin_edge.weight.view(3, 7, 5).permute(2, 1, 0).reshape(35, 3))
        ref.lin.weight.copy_(conv.lin_root.weight)
        ref.bias.copy_(conv.bias)
    expected = ref(g.x, g.edge_index, g.edge_attr)
    adj = rsf_adjacency(g.edge_index, g.edge_attr, 20)
    torch.testing.assert_close(conv(g.x, adj), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(conv(g.x, g.edge_index, g.edge_attr), expected, atol=1e-5, rtol=1e-4)
    assert "RSFConv(5, 7, edge_dim=3)" == repr(conv)


def test_sparse_pooling_weights_features_and_relations():
    """Pooling 1 (eq. 3 with node weights w): V' = S^T diag(w) Z and A'_l = S^T diag(w) A_l S,
    so a nucleus without weight contributes neither its features nor its edges."""
    from histoview.models.graph_layers import rsf_adjacency, sparse_embed_pool

    g = random_graph(12, seed=4)
    n, L = g.num_nodes, EDGE_FEATURES
    torch.manual_seed(0)
    z, s = torch.randn(n, 5), torch.softmax(torch.randn(n, 3), -1)
    w = torch.softmax(torch.randn(n, 2), 0)
    w[0] = 0.0
    adj = rsf_adjacency(g.edge_index, g.edge_attr, n)
    batch = torch.zeros(n, dtype=torch.long)
    x1, a1 = sparse_embed_pool(z, s, w, adj, L, batch, 1)
    dense = torch.zeros(n, n, L)
    dense[g.edge_index[1], g.edge_index[0]] = g.edge_attr
    for k in range(2):
        ws = s * w[:, k : k + 1]
        torch.testing.assert_close(x1[0, k], ws.t() @ z)
        expected = torch.einsum("ip,ijl,jq->pql", ws, dense, s)
        torch.testing.assert_close(a1[0, k], expected)
    # A nucleus without weight contributes no features.
    z2 = z.clone()
    z2[0] += 10.0
    torch.testing.assert_close(sparse_embed_pool(z2, s, w, adj, L, batch, 1)[0], x1)


def test_dense_pooling_is_diffpool():
    from torch_geometric.nn import dense_diff_pool

    from histoview.models.graph_layers import dense_embed_pool

    torch.manual_seed(0)
    x, adj, s = torch.randn(2, 6, 4), torch.rand(2, 6, 6), torch.randn(2, 6, 3)
    out, out_adj = dense_embed_pool(x, adj.unsqueeze(-1), torch.softmax(s, -1))
    ref, ref_adj, _, _ = dense_diff_pool(x, adj, s)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out_adj.squeeze(-1), ref_adj)


def test_layers_reset_and_repr():
    model = create_model("rsf-edge")
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    text = repr(model)
    for part in ("RSFConv", "DenseRSFConv", "EdgeConv"):
        assert part in text
    assert "NodeAttention" in repr(create_model("rsf-attention"))


def test_rebuild_from_config_defaults():
    """Checkpoints store the factory kwargs; JSON turns tuples into lists."""
    import json

    model = create_model("rsf-attention", num_classes=3)
    kwargs = json.loads(json.dumps(model.model_config.defaults))
    again = create_model("rsf-attention", num_classes=3, **kwargs)
    assert isinstance(again, RSFNet)
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_node_normalisation_is_saved_and_applied():
    model = create_model("test_rsf").eval()
    g = random_graph(15)
    mean, std = torch.randn(NODE_FEATURES), torch.rand(NODE_FEATURES) + 0.5
    model.set_node_normalisation(mean, std)
    with torch.no_grad():
        out = model(g)
        model.set_node_normalisation(torch.zeros(NODE_FEATURES), torch.ones(NODE_FEATURES))
        ref = model(Data(x=(g.x - mean) / std, edge_index=g.edge_index, edge_attr=g.edge_attr))
    torch.testing.assert_close(out, ref)
    assert {"node_mean", "node_std"} <= set(model.state_dict())
    with pytest.raises(ValueError, match="13 means"):
        model.set_node_normalisation([0.0], [1.0])
