r"""Exact incremental occlusion importance for the RSF nuclei-graph networks.

Occlusion importance (Sureka, Patil, Anand and Sethi, "Visualization for Histopathology
Images using Graph Convolutional Neural Networks", arXiv:2006.09464, 2020, Sec. III-F,
eq. 5) is :math:`\mathrm{score}_i = p(M(G)) - p(M(G_i))`, where :math:`G_i` is the graph
without nucleus i, its k-hop neighbours and their edges: one prediction per nucleus, each
on a different graph. The public entry point is
:func:`histoview.explain.graph.occlusion_importance`; it runs this module's engine for
:class:`~histoview.models.graph_nets.RSFNet` models on the CPU, checks it against the
definition (the model's forward pass on a PyG ``Batch`` of occluded graphs) on every call,
and uses the definition everywhere else.

The engine gives the model's logits on every occluded graph from cached activations of the
full graph. In an RSF network everything before Pooling 1 is local and Pooling 1's outputs
are sums over nuclei of local terms (eq. 3,
:func:`~histoview.models.graph_layers.sparse_embed_pool`). With d the hop distance from the
occluded nucleus (removed: d <= k):

* Vertex Conv 1 changes only on the ring d = k + 1, which loses the removed neighbours;
* Vertex Conv 2, the assignment S and the attention change only for k < d <= k + 2. Their
  pre-activations are linear in Vertex Conv 1's output (eq. 2), so the new ones are the
  cached ones, minus what the removed neighbours sent, plus the convolution of the ring's
  changes;
* the rows of :math:`A_l S` change only for k < d <= k + 3;
* each occluded graph's pooled sums are the cached ones minus the old terms of its nuclei
  within k + 2 (k + 3 for :math:`A_l S`) hops plus their new terms. The layers after
  Pooling 1 run on the pooled graphs of a chunk of occluded graphs at once.

The convolutions are the model's own layers (``forward`` on the full graph, the linear maps
of ``RSFConv.transform`` for the changes), and so are the attention scoring and the layers
after Pooling 1. The work per occluded graph is proportional to its (k + 3)-hop ball (about
80 nuclei at k = 1 with 10 neighbours each) instead of the whole graph. Index bookkeeping
is NumPy (faster than torch for small 1-D integer operations); the arithmetic is torch, on
the calling thread and torch's own intra-op threads.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["IncrementalOcclusion", "Neighbours", "supports_incremental"]

FAR = 255  # hop distance of nodes beyond the range asked for


class Neighbours:
    """Undirected neighbour lists (CSR) of a graph with N nodes, for breadth-first search.

    Args:
        edge_index: (2, E) int64, edges source -> target (either direction counts).
        num_nodes: N.
    """

    def __init__(self, edge_index: Tensor, num_nodes: int):
        ei = edge_index.cpu().numpy().astype(np.int64)
        n = max(num_nodes, 1)
        key = np.unique(np.concatenate([ei[0] * n + ei[1], ei[1] * n + ei[0]]))
        row, self.idx = key // n, key % n
        self.ptr = np.zeros(num_nodes + 1, np.int64)
        self.ptr[1:] = np.cumsum(np.bincount(row, minlength=num_nodes))
        self.num_nodes = num_nodes

    def local_order(self) -> np.ndarray:
        """The nodes in reverse Cuthill-McKee order: consecutive nodes are close in the graph,
        so a chunk of them touches overlapping rows of the cached tensors."""
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import reverse_cuthill_mckee

        n = self.num_nodes
        graph = csr_matrix((np.ones(self.idx.size, np.int8), self.idx, self.ptr), shape=(n, n))
        return np.asarray(reverse_cuthill_mckee(graph, symmetric_mode=True), np.int64)

    def balls(self, centres, max_hops: int) -> tuple[np.ndarray, ...]:
        """All (copy, node) pairs within ``max_hops`` of ``centres[copy]``.

        Returns:
            copy, node, hop distance: three (P,) int64 arrays sorted by (copy, node); and
            the (C, N) uint8 distance table (``FAR`` beyond ``max_hops``), C = len(centres).
        """
        N = self.num_nodes
        fj = np.asarray(centres, np.int64).reshape(-1)
        C = fj.size
        table = np.full(C * N, FAR, np.uint8)
        fc = np.arange(C)
        table[fc * N + fj] = 0
        for hop in range(1, max_hops + 1):  # expand every copy's frontier at once
            start = self.ptr[fj]
            deg = self.ptr[fj + 1] - start
            eid = _ranges(start, deg)
            if eid.size == 0:
                break
            key = np.repeat(fc * N, deg) + self.idx[eid]
            table[key[table[key] == FAR]] = hop
            fc, fj = np.divmod(np.flatnonzero(table == hop), N)
        pairs = np.flatnonzero(table <= max_hops)
        copy = pairs // max(N, 1)
        return copy, pairs - copy * N, table[pairs].astype(np.int64), table.reshape(C, N)


def _ranges(start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(start[i], start[i] + length[i])`` over i."""
    offset = np.cumsum(length) - length
    return np.repeat(start - offset, length) + np.arange(int(length.sum()))


def supports_incremental(model) -> bool:
    """Whether the engine handles ``model``: an RSF network with its weights on the CPU."""
    from histoview.models.graph_nets import RSFNet

    return isinstance(model, RSFNet) and all(p.device.type == "cpu" for p in model.parameters())


class IncrementalOcclusion:
    """Logits of an :class:`~histoview.models.graph_nets.RSFNet` on occluded graphs.

    Construction runs the model's layers before Pooling 1 on the full graph once and
    caches, per node: the pre-activations and outputs of Vertex Conv 1 and 2 and of the
    assignment, what each node sends along its edges (``RSFConv.transform``), the rows of
    :math:`A S`, the pooling weights and the node's terms of Pooling 1's sums;
    ``full_logits`` (classes,) is the model's output on the full graph computed from them.
    :meth:`logits` then gives the output on the graphs without the k-hop ball of each of a
    chunk of centres. Call both under ``torch.no_grad()`` with the model in evaluation
    mode.

    Args:
        model: an RSFNet on the CPU (:func:`supports_incremental`).
        data: one graph, PyG ``Data`` with x (N, F), edge_index (2, E), edge_attr (E, L).
    """

    def __init__(self, model, data):
        from histoview.models.graph_layers import channel_blocks, rsf_adjacency
        from histoview.models.graph_nets import edge_features

        self.model = model
        self.L = L = model.edge_dim
        x = data.x.float()
        self.N = N = x.size(0)
        edge_attr = edge_features(data, L).float()
        adj = rsf_adjacency(data.edge_index, edge_attr, N)
        self.neighbours = Neighbours(data.edge_index, N)
        # In-edges of every node (CSR by target): their sources and features.
        src, dst = data.edge_index.cpu().numpy().astype(np.int64)
        order = np.argsort(dst, kind="stable")
        self.in_src, self.in_attr = src[order], edge_attr.cpu().numpy()[order]
        self.in_ptr = np.zeros(N + 1, np.int64)
        self.in_ptr[1:] = np.cumsum(np.bincount(dst, minlength=N))

        c1, c2, sa = model.conv1, model.conv2, model.assign1
        self.H, self.C1 = H, C1 = c2.out_channels, sa.out_channels
        self.K = model.branches if model.attention is not None else 1
        self.xn = model.normalise_nodes(x)
        self.pre1 = c1(self.xn, adj)
        self.h1 = torch.relu(self.pre1)
        self.pre2 = torch.cat([c2(self.h1, adj), sa(self.h1, adj)], 1)  # (N, H + C1)
        self.z, self.s = self._activate(self.pre2)
        # The linear maps of Vertex Conv 2 and the assignment (root | edge 1..L), read off
        # the layers by applying them to the identity: (H, (L + 1) * (H + C1)).
        root, edge = self._transform2(torch.eye(H))
        self.w2 = torch.cat([root[:, None], edge], 1).flatten(1)
        self.m = torch.sparse.mm(adj, channel_blocks(self.s, L))  # rows of A S, (c, l) order
        self.u, self.gmax = self._weights(self.z, self.xn)
        self.us = self._spread(self.u, self.s)
        # Per node and edge channel (rows j * L + l): what node j sends along an edge's
        # feature l to Vertex Conv 1, to Vertex Conv 2 | assignment, and to A S.
        self.sent = torch.cat(
            [
                c1.transform(self.xn)[1].reshape(N * L, H),
                self._transform2(self.h1)[1].reshape(N * L, H + C1),
                channel_blocks(self.s, L),
            ],
            1,
        )
        att = model.attention
        self.softmax = att is not None and att.gate == "softmax"
        # Pooling 1 (eq. 3) per branch: weighted sums over nodes, divided by the sum of the
        # weights (softmax attention) or by the number of nodes (mean and sigmoid gates).
        # Per node: its terms of the pooled sums, (N, K * C1 * H) and (N, K * C1 * C1 * L).
        self.terms_u = (self.us[:, :, None] * self.z[:, None]).flatten(1)
        self.terms_a = (self.us[:, :, None] * self.m[:, None]).flatten(1)
        self.U = self.terms_u.double().sum(0).view(self.K * C1, H)
        self.A = self.terms_a.double().sum(0).view(self.K * C1, C1 * L)
        self.D = self.u.double().sum(0) if self.softmax else torch.full((self.K,), float(N))
        self.D = self.D.double()
        self.full_logits = self._head(self.U[None], self.A[None], self.D[None])[0]

    # ------------------------------------------------------------------ per-node maps
    def _activate(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """Vertex Conv 2's ReLU and the assignment's softmax over clusters, as in
        ``RSFNet.node_stage``: (R, H + C1) pre-activations to z (R, H), s (R, C1)."""
        # The softmax over a last dimension of C1 = 8 is ~10x faster transposed (same values).
        s = torch.softmax(pre[:, self.H :].t().contiguous(), dim=0).t()
        return torch.relu(pre[:, : self.H]), s

    def _transform2(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Linear maps of Vertex Conv 2 and the assignment side by side: root (R, H + C1)
        and edge transforms (R, L, H + C1)."""
        root2, edge2 = self.model.conv2.transform(h)
        root_a, edge_a = self.model.assign1.transform(h)
        return torch.cat([root2, root_a], 1), torch.cat([edge2, edge_a], 2)

    def _weights(self, z: Tensor, xn: Tensor, gmax: Tensor | None = None):
        """Unnormalised pooling weights (R, K): 1 (no attention), the sigmoid gates, or
        exp(softmax attention logit - gmax) with gmax the full graph's largest logit."""
        att = self.model.attention
        if att is None:
            return z.new_ones(z.size(0), 1), None
        score = self.model.attention_score(z, xn)
        if att.gate == "sigmoid":
            return torch.sigmoid(score), None
        if gmax is None:
            gmax = score.max(0).values if score.size(0) else score.new_zeros(score.size(1))
        return torch.exp(score - gmax), gmax

    def _spread(self, u: Tensor, s: Tensor) -> Tensor:
        """Weighted assignments per branch: (R, K) and (R, C1) to (R, K * C1)."""
        return (u.unsqueeze(2) * s.unsqueeze(1)).flatten(1)

    def _head(self, U: Tensor, A: Tensor, D: Tensor) -> Tensor:
        """Logits (C, classes) from C graphs' pooled sums (C, K * C1, H), (C, K * C1, C1 * L)
        and branch normalisers (C, K); graphs with D = 0 are empty and pool to zeros."""
        C, K, C1, L = U.size(0), self.K, self.C1, self.L
        norm = torch.where(D > 0, D, torch.inf).view(C, K, 1, 1)
        x1 = (U.view(C, K, C1, -1) / norm).float()
        a1 = (A.view(C, K, C1, C1 * L) / norm).float().view(C, K, C1, C1, L)
        return self.model.forward_head(x1, a1).float()

    # ------------------------------------------------------------------ occluded graphs
    def logits(self, centres, k: int) -> tuple[Tensor, np.ndarray]:
        """The model's logits on the graphs without the k-hop ball of each centre.

        Args:
            centres: (C,) node indices.
            k: hops removed around each centre.

        Returns:
            logits (C, classes) float32, and a (C,) bool mask of graphs the caller must
            recompute by definition: those that lost more than 99.9 % of their pooling
            weight (subtracting nearly everything loses float32 precision) and any with
            non-finite logits.
        """
        N, L, H = self.N, self.L, self.H
        centres = np.asarray(centres, np.int64).reshape(-1)
        C = centres.size
        # The C occluded graphs ("copies") as (copy, node) pairs within k + 3 hops of the
        # copy's centre, sorted; index arrays name the pairs of the ring (d = k + 1), of i2
        # (k < d <= k + 2) and of i3 (k < d <= k + 3).
        copy, node, dist, table = self.neighbours.balls(centres, k + 3)
        P = dist.size
        i_ring = np.flatnonzero(dist == k + 1)
        i2 = np.flatnonzero((dist > k) & (dist <= k + 2))  # Vertex Conv 2 changes
        i3 = np.flatnonzero(dist > k)  # rows of A S change
        rank = np.full((3, P), -1, np.int64)  # position of a pair among the ring, i2, i3
        for row, sel in enumerate((i_ring, i2, i3)):
            rank[row, sel] = np.arange(sel.size)
        pair_of = np.full(C * N, -1, np.int64)
        pair_of[copy * N + node] = np.arange(P)

        # In-edges of the pairs of i3 whose source changes (d_src <= k + 2), by target.
        start = self.in_ptr[node[i3]]
        deg = self.in_ptr[node[i3] + 1] - start
        eid = _ranges(start, deg)
        tgt = np.repeat(i3, deg)
        src = self.in_src[eid]
        d_src = table.reshape(-1)[copy[tgt] * N + src]
        keep = np.flatnonzero(d_src <= k + 2)
        tgt, src, d_src, eid = tgt[keep], src[keep], d_src[keep], eid[keep]
        src_pair = pair_of[copy[tgt] * N + src]
        n_ring, n2, n3 = i_ring.size, i2.size, i3.size

        def operator(sel, rows, cols, n_rows, n_cols, per_channel=False):
            sel = np.flatnonzero(sel)
            attr = np.take(self.in_attr, eid[sel], axis=0)
            return _edge_operator(rows[sel], cols[sel], attr, n_rows, n_cols, per_channel)

        # From the removed nodes to the ring, from the ring to i2, from i2 to i3.
        op_lost = operator(d_src == k, rank[0, tgt], src, n_ring, N)
        from_ring = (d_src == k + 1) & (dist[tgt] <= k + 2)
        op_ring = operator(from_ring, rank[1, tgt], rank[0, src_pair], n2, n_ring)
        op_i2 = operator(d_src > k, rank[2, tgt], rank[1, src_pair], n3, n2, True)

        # What the removed nodes no longer send to the ring, per layer.
        H2, CL = H + self.C1, self.C1 * L
        lost_in = _spmm(op_lost, self.sent).split([H, H2, CL], 1)
        j_ring, j2, j3 = (torch.from_numpy(node[i]) for i in (i_ring, i2, i3))
        # Vertex Conv 1 on the ring; the changes of its output through the layer-2 maps.
        d_h1 = torch.relu(self.pre1[j_ring] - lost_in[0]) - self.h1[j_ring]
        root, edge = (d_h1 @ self.w2).view(n_ring, L + 1, H2).split([1, L], 1)
        # Vertex Conv 2 and the assignment where they change (eq. 2 is linear in h1).
        pre2 = self.pre2[j2]
        pre2[torch.from_numpy(rank[1, i_ring])] += root.squeeze(1) - lost_in[1]
        pre2 += _spmm(op_ring, edge.reshape(n_ring * L, H2))
        z, s = self._activate(pre2)
        u, _ = self._weights(z, self.xn[j2], self.gmax)
        us = self._spread(u, s)
        # Rows of A S where they change: minus the removed nodes', plus the changes of S.
        m = self.m[j3]
        m[torch.from_numpy(rank[2, i_ring])] -= lost_in[2]
        m += _spmm(op_i2, s - self.s[j2]).view(L, n3, self.C1).permute(1, 2, 0).reshape(n3, CL)
        us3 = self.us[j3]
        us3[torch.from_numpy(rank[2, i2])] = us

        # Pooling 1: cached sums minus the old terms of the ball plus the new terms.
        ball2 = np.flatnonzero(dist <= k + 2)
        in_ball2 = _indicator(copy[ball2], node[ball2], C, N)
        in_ball3 = _indicator(copy, node, C, N)
        dU = _per_copy_outer(C, copy[i2], us, z) - _spmm(in_ball2, self.terms_u).view(C, -1, H)
        dA = _per_copy_outer(C, copy[i3], us3, m) - _spmm(in_ball3, self.terms_a).view(C, -1, CL)
        removed = torch.from_numpy(np.bincount(copy[dist <= k], minlength=C))
        if self.softmax:  # the normaliser is the sum of the weights, else the node count
            dD = torch.zeros(C, self.K).index_add_(0, torch.from_numpy(copy[i2]), u)
            dD = (dD - _spmm(in_ball2, self.u)).double()
        else:
            dD = -removed.double()[:, None].expand(C, self.K)
        D = self.D + dD
        left = N - removed
        D[left == 0] = 0  # empty graphs
        logits = self._head(self.U + dU.double(), self.A + dA.double(), D)
        unstable = ((D / self.D).min(1).values < 1e-3) & (left > 0)
        unstable |= ~torch.isfinite(logits).all(1)  # e.g. exp overflow of a new attention logit
        return logits, unstable.numpy()


def _edge_operator(rows, cols, attr, n_rows: int, n_cols: int, per_channel: bool = False):
    """The edges e (target ``rows[e]``, sorted; source ``cols[e]``; features ``attr``
    (E, L)) as a sparse CSR operator that sums :math:`\\sum_j e_{ij,l}\\, y_{j,l}`.

    * ``per_channel=False``: (n_rows, n_cols * L) with ``attr[e, l]`` at (rows[e],
      cols[e] * L + l), the layout of :func:`~histoview.models.graph_layers.rsf_adjacency`
      restricted to some targets and sources; times (n_cols * L, F) rows j * L + l of
      per-channel transforms, it gives (n_rows, F);
    * ``per_channel=True``: (L * n_rows, n_cols) with ``attr[e, l]`` at (l * n_rows +
      rows[e], cols[e]); times (n_cols, F) it gives each channel's sums, (L * n_rows, F).
    """
    from histoview.models.graph_layers import sparse_csr

    E, L = attr.shape
    deg = np.bincount(rows, minlength=n_rows)
    first = np.cumsum(deg) - deg  # each row's first edge
    index = np.int32 if max(n_cols * L, E * L) < 2**31 else np.int64
    if per_channel:
        # Row l * n_rows + i holds row i's edges, with their feature l.
        crow = (first + E * np.arange(L)[:, None]).reshape(-1)
        col = np.tile(cols.astype(index), L)
        val = np.ascontiguousarray(attr.T, np.float32).reshape(-1)
        shape = (L * n_rows, n_cols)
    else:
        crow = L * first
        col = (cols.astype(index)[:, None] * L + np.arange(L, dtype=index)).reshape(-1)
        val = np.ascontiguousarray(attr, np.float32).reshape(-1)
        shape = (n_rows, n_cols * L)
    crow = np.append(crow, E * L).astype(index)
    return sparse_csr(torch.from_numpy(crow), torch.from_numpy(col), torch.from_numpy(val), shape)


def _indicator(rows, cols, n_rows: int, n_cols: int) -> Tensor:
    """Sparse CSR (n_rows, n_cols) with ones at (rows, cols), ``rows`` sorted."""
    from histoview.models.graph_layers import sparse_csr

    crow = np.zeros(n_rows + 1, np.int32)
    crow[1:] = np.cumsum(np.bincount(rows, minlength=n_rows))
    ones = torch.ones(rows.size)
    return sparse_csr(
        torch.from_numpy(crow), torch.from_numpy(cols.astype(np.int32)), ones, (n_rows, n_cols)
    )


def _per_copy_outer(C: int, copy: np.ndarray, a: Tensor, b: Tensor) -> Tensor:
    """Per copy c, the sum of ``a[r] (x) b[r]`` over the rows r with copy[r] = c: (C, A, B)
    from copy (R,) sorted, a (R, A) and b (R, B).

    One sparse product: row (alpha, c) of the (A * C, R) operator holds column alpha of
    ``a`` at the rows of copy c (so ``a`` transposed is its array of values, as it is).
    """
    from histoview.models.graph_layers import sparse_csr

    R, A = a.shape
    count = np.bincount(copy, minlength=C)
    crow = np.append((R * np.arange(A)[:, None] + np.cumsum(count) - count).reshape(-1), A * R)
    index = np.int32 if A * R < 2**31 else np.int64
    col = torch.from_numpy(np.tile(np.arange(R, dtype=index), A))
    op = sparse_csr(torch.from_numpy(crow.astype(index)), col, a.t().reshape(-1), (A * C, R))
    return _spmm(op, b).view(A, C, b.size(1)).transpose(0, 1)


def _spmm(op: Tensor, dense: Tensor) -> Tensor:
    """``op @ dense`` for a sparse CSR ``op`` (R, M) and a dense (M, B): (R, B). ``addmm``
    with ``beta=0`` writes the product into an uninitialised tensor (its contents are
    ignored), where ``torch.sparse.mm`` would zero-fill and copy its result."""
    out = dense.new_empty(op.size(0), dense.size(1))
    return torch.addmm(out, op, dense, beta=0, out=out)
