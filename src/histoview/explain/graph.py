"""Per-nucleus importance for nuclei-graph models (seed 001, Sec. III-F, eq. 5).

* :func:`attention_importance` - the attention scores of RSF+Attention;
* :func:`occlusion_importance` - ``score_i = p(M(G)) - p(M(G_i))`` where ``G_i`` is the graph
  without nucleus i, its k-hop neighbours and their edges (eq. 5);
* :func:`explain_graph` - either one as an :class:`~histoview.explain.base.Explanation`.

Occlusion needs one prediction per nucleus on a different graph: about 1,500 graphs of
about 1,500 nuclei. For the RSF networks of :mod:`histoview.models.graph_nets` it is computed
*exactly* and incrementally: everything that reaches Pooling 1 (embeddings, assignments,
attention logits) is a function of a nucleus's 2-hop neighbourhood, and Pooling 1's outputs
are sums over nuclei and edges of local terms (eq. 3). Removing the k-hop ball of nucleus i
therefore changes

* Vertex Conv 1 only on the ring k+1 and Vertex Conv 2 / the assignment within k+2 hops. The
  convolutions are linear before their activation, so the new pre-activations are the cached
  ones plus the convolution of the feature *differences* (a removed nucleus contributes minus
  its cached transform): for all occluded graphs of a chunk, one dense product (the ring's
  feature changes times the layer's weights) and one sparse product per layer;
* the pooled graph by new-minus-old terms of the nuclei within k+2 hops and of the rows of
  A S within k+3 hops.

The dense layers after Pooling 1 then run on all pooled graphs of the chunk in one batch.
In exact arithmetic this equals the forward pass on each occluded graph; in float32 the two
agree to about 1e-7 in probability. Where the removed nuclei carried nearly all of the
pooling weight (> 99.9 %, e.g. tiny graphs), subtracting would lose precision and those
graphs are recomputed directly. Other graph models (or RSF networks on a GPU) get the plain
definition, batched: all occluded graphs of a chunk in one PyG ``Batch``, one forward pass.

Cost: the work per occluded graph is proportional to its (k+3)-hop ball, about 80 nuclei at
k = 1 for ~10 neighbours per nucleus, instead of the whole graph (``benchmarks/
bench_occlusion.py`` gives the figures; about 1,500 forward passes' time for the definition).
Nuclei are processed in chunks of neighbouring nuclei (reverse Cuthill-McKee order), and every
thread (as many as torch's thread count) takes the next chunk and does all of its work with
single-threaded torch: the index bookkeeping (which nodes change, the sparse operators; in
the C kernel ``_occlusion_index`` when it was built, else in NumPy, with the same result),
the ring's new Vertex Conv 1 output and its Vertex Conv 2 transforms ``d_h1 @ w2`` (~2 GMAC
per 1,500 copies), Vertex Conv 2 of the changed nodes, the pooled sums and the head. The
per-copy pooling sums are sparse products that read the cached per-node tensors in place.

An empty occluded graph (every nucleus removed) is the model's prediction for an empty graph:
for the RSF networks, the layers after Pooling 1 applied to an all-zero pooled graph.
"""

from __future__ import annotations

import ctypes
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from histoview.explain.base import Explanation, NucleiPoints

__all__ = [
    "attention_importance",
    "explain_graph",
    "hop_distances",
    "occluded_graphs",
    "occlusion_importance",
]

_FAR = 255  # hop distance of nodes beyond the range asked for


class _Neighbours:
    """Undirected neighbour lists (CSR) of a graph, for breadth-first search.

    Index bookkeeping here and in the occlusion engine uses NumPy: on CPU its 1-D integer
    operations (nonzero, masks, gathers) are several times faster than torch's.
    """

    def __init__(self, edge_index: Tensor, num_nodes: int):
        ei = edge_index.cpu().numpy().astype(np.int64)
        n = max(num_nodes, 1)
        key = np.sort(np.concatenate([ei[0] * n + ei[1], ei[1] * n + ei[0]]))
        key = key[np.append(key[:1] == key[:1], key[1:] != key[:-1])]  # np.unique, faster
        row, self.idx = key // n, key % n
        self.ptr = np.zeros(num_nodes + 1, np.int64)
        self.ptr[1:] = np.cumsum(np.bincount(row, minlength=num_nodes))
        self.num_nodes = num_nodes

    def local_order(self) -> np.ndarray:
        """The nodes in reverse Cuthill-McKee order (SciPy): neighbours end up close
        together, so consecutive nodes' neighbourhoods overlap."""
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import reverse_cuthill_mckee

        n = self.num_nodes
        graph = csr_matrix((np.ones(self.idx.size, np.int8), self.idx, self.ptr), shape=(n, n))
        return np.asarray(reverse_cuthill_mckee(graph, symmetric_mode=True), np.int64)

    def balls(self, centres, max_hops: int, *, return_table: bool = False):
        """All (copy, node) pairs within ``max_hops`` of ``centres[copy]``, sorted, with their
        hop distance: three (P,) int64 arrays (and the (C * N,) uint8 distance table, 255
        beyond ``max_hops``). Frontier expansion, all centres at once."""
        N = self.num_nodes
        fj = np.asarray(centres, np.int64).reshape(-1)
        C = fj.size
        table = np.full(C * N, _FAR, np.uint8)
        owner = np.empty(C * N, np.int64)
        fc = np.arange(C)
        table[fc * N + fj] = 0
        for hop in range(1, max_hops + 1):
            start = self.ptr[fj]
            deg = self.ptr[fj + 1] - start
            total = int(deg.sum())
            if total == 0:
                break
            eid = np.repeat(start - (np.cumsum(deg) - deg), deg) + np.arange(total)
            key = np.repeat(fc * N, deg) + self.idx[eid]
            key = key[table[key] == _FAR]
            # One candidate per (copy, node): NumPy keeps the last of repeated assignments.
            order = np.arange(key.size)
            owner[key] = order
            key = key[owner[key] == order]
            table[key] = hop
            fc, fj = key // N, key % N
        pairs = np.flatnonzero(table <= max_hops)
        copy = pairs // max(N, 1)
        out = copy, pairs - copy * N, table[pairs].astype(np.int64)
        return (*out, table) if return_table else out


def hop_distances(edge_index: Tensor, num_nodes: int, sources, max_hops: int) -> Tensor:
    """Undirected hop distance from each source to every node, up to ``max_hops``.

    Returns:
        (len(sources), N) uint8; nodes farther than ``max_hops`` (or unreachable) get 255.
    """
    sources = np.asarray(sources, np.int64).reshape(-1)
    _, _, _, table = _Neighbours(edge_index, num_nodes).balls(sources, max_hops, return_table=True)
    return torch.from_numpy(table.reshape(sources.size, num_nodes))


def occluded_graphs(data, keep: Tensor):
    """The graphs ``data`` restricted to each row of ``keep`` (C, N) as one PyG ``Batch``.

    Node and edge masks only (no Python loop over graphs); edges survive when both their
    endpoints are kept. Graphs left without nodes stay in the batch as empty graphs.
    """
    from torch_geometric.data import Batch

    C, N = keep.shape
    device = keep.device
    copy, node = keep.nonzero(as_tuple=True)
    new_id = torch.full((C * N,), -1, dtype=torch.long, device=device)
    new_id[copy * N + node] = torch.arange(copy.numel(), device=device)
    src, dst = data.edge_index
    e_copy, e_id = (keep[:, src] & keep[:, dst]).nonzero(as_tuple=True)
    edge_index = torch.stack([new_id[e_copy * N + src[e_id]], new_id[e_copy * N + dst[e_id]]])
    ptr = torch.zeros(C + 1, dtype=torch.long, device=device)
    ptr[1:] = torch.cumsum(keep.sum(1), 0)
    out = Batch(x=data.x[node], edge_index=edge_index, batch=copy, ptr=ptr)
    if getattr(data, "edge_attr", None) is not None:
        out.edge_attr = data.edge_attr[e_id]
    out._num_graphs = C
    return out


# ----------------------------------------------------------------------------- incremental


class _IncrementalOcclusion:
    """Exact occlusion of an :class:`~histoview.models.graph_nets.RSFNet` (see module doc).

    Caches the full graph's pre-activations, per-node transforms and pooled sums once. Per
    chunk of occluded copies (:meth:`plan`, :meth:`finish`, :meth:`pooled`) it enumerates
    the (copy, node) pairs within k + 3 hops of each copy's centre and computes the new
    pre-activations of the changed nodes as one sparse product per layer, whose dense operand
    stacks the cached transforms (sources that were removed enter with minus their edge
    weight), the cached pre-activations (one entry per changed node) and the transforms of
    the feature changes of the ring k + 1; the pooled sums change by segment sums of new
    minus old per-node terms.
    """

    def __init__(self, model, data):
        from histoview.models.graph_layers import rsf_adjacency
        from histoview.models.graph_nets import edge_features

        self.model = model
        self.L = L = model.edge_dim
        x = data.x.float()
        self.N = N = x.size(0)
        edge_index = data.edge_index
        adj = rsf_adjacency(edge_index, edge_features(data, L), N)
        self.neighbours = _Neighbours(edge_index, N)
        # In-edges of every node (CSR by target), to enumerate what each changed node receives.
        self.in_ptr = (adj.crow_indices() // L).numpy()
        self.in_src = (adj.col_indices()[::L] // L).numpy()
        self.in_attr_np = adj.values().view(-1, L).numpy()
        self.H, self.C1 = model.conv2.out_channels, model.assign1.out_channels
        self.K = model.branches if model.attention is not None else 1
        self._x, self._adj = x, adj
        self.use_c = True
        self.c_capacity = (1024, 8192)  # grown to what the chunks need
        # Reused arrays per thread ("slot"; see plan): scratch of the C kernel, operators,
        # the layer-2 operand.
        self._slots: dict[int, dict] = {}

    @torch.no_grad()
    def cache(self) -> None:
        """The full graph's activations, transforms and pooling terms (torch arithmetic; the
        index structures of ``__init__`` suffice for :meth:`plan`)."""
        from histoview.models.graph_layers import channel_blocks

        model, x, adj = self.model, self._x, self._adj
        N, L, H, C1 = self.N, self.L, self.H, self.C1
        c1, c2, sa = model.conv1, model.conv2, model.assign1
        # Full graph: pre-activations and per-node transforms of the layers before Pooling 1,
        # computed in place in the static parts of the dense operands of plan's operators:
        # rows [edge transforms (N * L, node-major); pre-activations (N)].
        self.xn = model.normalise_nodes(x)
        self.dense1 = torch.empty(N * L + N, c1.out_channels)
        y1, pre1 = self.dense1[: N * L], self.dense1[N * L :]
        torch.mm(self.xn, c1.lin_edge.weight.t(), out=y1.view(N, -1))
        torch.mm(self.xn, c1.lin_root.weight.t(), out=pre1)
        pre1 += c1.aggregate_transformed(y1, adj)
        if c1.bias is not None:
            pre1 += c1.bias
        self.h1 = torch.relu(pre1)
        # Both layer-2 convolutions (Vertex Conv 2 | assignment) as one product, output
        # blocks [root | edge 1 | ... | edge L], each H + C1 wide.
        w_edge = torch.cat(
            [c2.lin_edge.weight.view(L, H, -1), sa.lin_edge.weight.view(L, C1, -1)], dim=1
        ).reshape(L * (H + C1), -1)
        self.w2 = torch.cat([c2.lin_root.weight, sa.lin_root.weight, w_edge]).t().contiguous()
        self.dense2 = torch.empty(N * L + N, H + C1)
        y2, pre2 = self.dense2[: N * L], self.dense2[N * L :]
        torch.mm(self.h1, self.w2[:, H + C1 :], out=y2.view(N, -1))
        torch.mm(self.h1, self.w2[:, : H + C1], out=pre2)
        pre2 += c2.aggregate_transformed(y2, adj)
        if c2.bias is not None:
            pre2[:, :H] += c2.bias
        if sa.bias is not None:
            pre2[:, H:] += sa.bias
        self.z, self.s = self._activate(pre2)
        self.u, self.gmax = self._weights(self.z, self.xn)  # (N, K): a column per branch
        # Pooled outputs are divided by the sum of softmax weights, or by n (mean pooling,
        # sigmoid gates): each node adds u or 1 to its branch's normaliser.
        att = model.attention
        self.softmax = att is not None and att.gate == "softmax"
        v = self.u if self.softmax else torch.ones_like(self.u)
        s_blocks = channel_blocks(self.s, L)
        m = torch.sparse.mm(adj, s_blocks)  # (N, C1 * L): rows of A S, (c, l) order
        # Kept in (l, c) order (rows of A_l S side by side), the layout plan's op3 gives;
        # and the static rows of op3's dense operand: [S; A_1 S; ...; A_L S].
        self.m = m.view(N, C1, L).transpose(1, 2).reshape(N, L * C1)
        self.dense3 = torch.cat([self.s, m.view(N, C1, L).permute(2, 0, 1).reshape(L * N, C1)])
        # Pooling 1 (eq. 3) per branch k: sums over nodes of u_ik s_i (x) z_i and
        # u_ik s_i (x) (A S)_i, both divided by the normaliser D_k = sum of v_ik (n without
        # softmax attention).
        self.us_t = us_t = self._spread_t(self.u, self.s)  # (K * C1, N)
        self.v = v
        self.U = (us_t @ self.z).double()  # (K * C1, H)
        self.D = v.double().sum(0)  # (K,)
        self.A = (us_t @ self.m).double()  # (K * C1, L * C1)

    @staticmethod
    def _spread_t(u: Tensor, s: Tensor) -> Tensor:
        """Per-branch weighted assignments, transposed: (R, K) and (R, C1) to (K * C1, R)
        (the layout :func:`_segment_outer` reads without a copy)."""
        return (u.t().unsqueeze(1) * s.t().unsqueeze(0)).flatten(0, 1)

    def _normalised(self, U, A, D) -> tuple[Tensor, Tensor]:
        """Pooled sums of C graphs, (C, K * C1, H) and (C, K * C1, L * C1) (columns in
        (l, c) order), divided by their branch weights D (C, K): (C, K, C1, H) and
        (C, K, C1, C1, L) float32."""
        C, K, C1, L = D.size(0), self.K, self.C1, self.L
        norm = D.clamp(min=1e-300).view(C, K, 1, 1)
        x1 = U.view(C, K, C1, -1) / norm
        a1 = A.view(C, K, C1, L * C1) / norm
        return x1.float(), a1.float().view(C, K, C1, L, C1).transpose(3, 4).contiguous()

    def full_pooled(self) -> tuple[Tensor, Tensor]:
        """The unoccluded graph's Pooling 1 output, from the cached sums."""
        return self._normalised(self.U[None], self.A[None], self.D[None])

    def _activate(self, pre: Tensor, inplace: bool = False) -> tuple[Tensor, Tensor]:
        """Vertex Conv 2's ReLU and the assignment's softmax over the C1 clusters. The softmax
        runs over dim 0 of the transposed rows: over a last dimension of 8 torch's CPU kernel
        is about ten times slower (the values are the same). ``inplace``: the ReLU overwrites
        ``pre`` and the embeddings are a view of it (rows H + C1 apart)."""
        s = torch.softmax(pre[:, self.H :].t().contiguous(), dim=0).t().contiguous()
        if inplace:
            return pre[:, : self.H].relu_(), s
        return torch.relu(pre[:, : self.H]), s

    def _weights(self, z: Tensor, xn: Tensor, gmax: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Unnormalised pooling weights (N, K): 1 (mean), the sigmoid gates or
        exp(softmax attention logit - shift), from embeddings z and input features xn."""
        att = self.model.attention
        if att is None:
            return z.new_ones(z.size(0), 1), z.new_zeros(1)
        score = self.model.attention_score(z, xn)
        if att.gate == "sigmoid":
            return torch.sigmoid(score), z.new_zeros(score.size(1))
        if gmax is None:
            gmax = score.max(0).values if score.size(0) else score.new_zeros(score.size(1))
        return torch.exp(score - gmax), gmax

    def _operator(self, rows, base, sign, eid, extra_col, extra_val, n_cols) -> Tensor:
        """CSR (n_rows, n_cols): per row, its edge entries (``rows`` sorted; columns
        ``base + l``, values ``sign * e_l``) followed by its X extra entries (n_rows, X)."""
        L = self.L
        n_rows, X = extra_col.shape
        rows = np.repeat(rows, L)
        crow = np.zeros(n_rows + 1, np.int64)
        crow[1:] = np.cumsum(np.bincount(rows, minlength=n_rows) + X)
        col = np.empty(crow[-1], np.int64)
        val = np.empty(crow[-1], np.float32)
        at = np.arange(rows.size) + X * rows
        col[at] = (base[:, None] + np.arange(L)).reshape(-1)
        val[at] = (self.in_attr_np[eid] * sign[:, None]).reshape(-1)
        at = (crow[1:] - X)[:, None] + np.arange(X)
        col[at], val[at] = extra_col, extra_val
        return _sparse_csr(
            torch.from_numpy(crow), torch.from_numpy(col), torch.from_numpy(val), (n_rows, n_cols)
        )

    def workspace(self, slot: int | None) -> dict:
        """Reused arrays of ``slot`` (a fresh set for None): fresh multi-megabyte arrays for
        every chunk would cost page faults."""
        if slot is None:
            return {}
        return self._slots.setdefault(slot, {})

    def pairs_numpy(self, centres, k: int):
        """The (copy, node) pairs within k + 3 hops of each centre, sorted, with their hop
        distance (three (P,) int64 arrays), and the in-edges of the kept pairs (k < d) whose
        source lies within k + 2 hops, sorted by target pair then edge id: target pair,
        edge id, source node, source distance, source pair (five (Q,) int64 arrays). In
        NumPy; :func:`_c_pairs` is the C kernel's version."""
        N = self.N
        C = len(centres)
        c3, j3, d3, table = self.neighbours.balls(centres, k + 3, return_table=True)
        i_kept3 = np.flatnonzero(d3 > k)
        pos3 = np.full(C * N, -1, np.int64)
        pos3[c3 * N + j3] = np.arange(d3.size)
        start = self.in_ptr[j3[i_kept3]]
        deg = self.in_ptr[j3[i_kept3] + 1] - start
        tgt = np.repeat(i_kept3, deg)
        eid = np.repeat(start - (np.cumsum(deg) - deg), deg) + np.arange(int(deg.sum()))
        src_node = self.in_src[eid]
        src_key = c3[tgt] * N + src_node
        d_src = table[src_key]
        keep = np.flatnonzero(d_src <= k + 2)
        src_key = src_key[keep]
        edges = tgt[keep], eid[keep], src_node[keep], d_src[keep].astype(np.int64), pos3[src_key]
        return c3, j3, d3, edges

    def plan(self, centres, k: int, slot: int | None = None) -> dict:
        """The index work of one chunk of occluded copies (no model arithmetic): which nodes
        of each copy are removed or change, and the sparse operators that propagate the
        changes. It does not depend on other chunks, so the threads of
        :func:`occlusion_importance` plan and compute different chunks at the same time (the
        C kernel, NumPy and torch release the GIL in their loops).

        Copies are the rows of ``centres``; within a copy, (copy, node) pairs are sorted by
        node and classified by hop distance d from the centre: removed (d <= k), ring
        (d = k + 1, Vertex Conv 1 changes), changed (k < d <= k + 2, Vertex Conv 2, the
        assignment and the attention change) and the rows of A S that change (k < d <= k + 3).
        The operators come from the C kernel when it is available (:meth:`operators_c`),
        else from NumPy (:meth:`operators_numpy`, the reference; both give the same arrays).
        With a ``slot`` the C kernel writes them into that slot's reused arrays
        (:meth:`workspace`): a plan made with slot s is valid until the next plan with slot
        s, so each thread of :func:`occlusion_importance` has its own slot.
        """
        N, C1, C = self.N, self.C1, len(centres)
        index = torch.from_numpy
        work = self.workspace(slot)
        use_c = self.use_c and _c_index() is not None
        for attempt in ("c", "numpy") if use_c else ("numpy",):
            use_c = attempt == "c"
            c3, j3, d3, edges = (_c_pairs if use_c else _numpy_pairs)(self, centres, k, work)
            kept3, ring1 = d3 > k, d3 == k + 1
            kept2 = kept3 & (d3 <= k + 2)
            i_ring1, i_kept2, i_kept3 = map(np.flatnonzero, (ring1, kept2, kept3))
            masks = (ring1, kept2, kept3), (i_ring1, i_kept2, i_kept3)
            if not use_c:
                op1, op2, op3, ring_nodes = self.operators_numpy(k, j3, d3, edges, masks)
                break
            # The C kernel writes int32 indices: they must fit (they do but for giant graphs).
            Q, L = edges[1].size, self.L
            columns = (self.N + i_ring1.size) * (L + 1) + i_kept2.size
            entries = L * (Q + i_kept3.size) + 2 * i_kept2.size
            if max(columns, entries) < _INT32_LIMIT:
                op1, op2, op3, ring_nodes = self.operators_c(k, j3, d3, edges, masks, work)
                break
        n3 = i_kept3.size
        plan = {"C": C, "op1": op1, "op2": op2, "op3": op3, "n3": n3}
        plan["j_ring"] = index(ring_nodes)
        plan["j_kept2"], plan["j_kept3"] = index(j3[i_kept2]), index(j3[i_kept3])
        plan["kept2_in_3"] = index(np.flatnonzero(kept2[i_kept3]))

        # Pooling 1, per copy: sums of new terms over its changed nodes, and of old terms
        # over the nodes within k + 2 hops (U) and k + 3 hops (A S) of its centre.
        A = self.K * C1
        counts = [np.bincount(c3[i], minlength=C) for i in (i_kept2, i_kept3)]
        plan["new2"] = _segments(counts[0], A, None, i_kept2.size, use_c)
        plan["new3"] = _segments(counts[1], A, None, n3, use_c)
        ball2 = np.flatnonzero(d3 <= k + 2)
        plan["old2"] = _segments(np.bincount(c3[ball2], minlength=C), A, j3[ball2], N)
        plan["old3"] = _segments(np.bincount(c3, minlength=C), A, j3, N)
        plan["j_ball2"], plan["j_ball3"] = index(j3[ball2]), index(j3)
        plan["copy2"], plan["copy_ball2"] = index(c3[i_kept2]), index(c3[ball2])
        plan["n_left"] = index(N - np.bincount(c3[~kept3], minlength=C))
        return plan

    def operators_numpy(self, k: int, j3, d3, edges, masks):
        """The three sparse operators of a chunk (see :meth:`plan`), in NumPy.

        * op1, Vertex Conv 1 on the ring k + 1: the cached pre-activation minus the removed
          sources; one row per distinct ring row (a node that loses the same in-edges in
          several copies of the chunk is computed once);
        * op2, Vertex Conv 2 and the assignment on kept nodes within k + 2 hops: the cached
          pre-activation, removed sources with minus their edge weight, and the transforms
          (root, edge 1..L) of the ring's feature changes, stacked after the cached rows;
        * op3, rows of A S of kept nodes within k + 3 hops: (A_l S)_i changes by
          e_ijl (s'_j - s_j) and loses the removed j. A row per (node, edge channel l), each
          holding the node's in-edges for that l and its cached row of A_l S, over
          [S; A_1 S; ...; A_L S; S' - S]: the product is the new rows of A S.
        """
        N, L = self.N, self.L
        NL = N * L + N  # rows of the static part of the dense operands
        tgt, eid, src_node, d_src, src_pair = edges
        (ring1, kept2, kept3), (i_ring1, i_kept2, i_kept3) = masks
        rank_ring1 = np.cumsum(ring1) - 1
        rank_kept2 = np.cumsum(kept2) - 1
        rank_kept3 = np.cumsum(kept3) - 1
        d_tgt = d3[tgt]
        gone = d_src <= k

        sel = np.flatnonzero((d_tgt == k + 1) & gone)
        ring_row, first = _distinct_ring_rows(j3[i_ring1], rank_ring1[tgt[sel]], eid[sel])
        ring_nodes = j3[i_ring1[first]]
        keep = np.flatnonzero(np.isin(rank_ring1[tgt[sel]], first))
        sel = sel[keep]
        op1 = self._operator(
            ring_row[rank_ring1[tgt[sel]]], src_node[sel] * L, -np.ones(sel.size, np.float32),
            eid[sel], (N * L + ring_nodes)[:, None], np.ones((first.size, 1), np.float32), NL,
        )  # fmt: skip
        ring_of_pair = np.full(d3.size, -1, np.int64)
        ring_of_pair[i_ring1] = ring_row

        sel = np.flatnonzero((d_tgt <= k + 2) & (d_src <= k + 1))
        from_ring = ~gone[sel]
        base = np.where(from_ring, NL + ring_of_pair[src_pair[sel]] * (L + 1) + 1, src_node[sel] * L)
        # Each row's own ring transforms (root); rows off the ring get a zero entry on their
        # own pre-activation's column instead, a column that always exists.
        on_ring = ring1[i_kept2]
        own_root = np.where(on_ring, NL + ring_of_pair[i_kept2] * (L + 1), N * L + j3[i_kept2])
        op2 = self._operator(
            rank_kept2[tgt[sel]], base, from_ring.astype(np.float32) * 2 - 1, eid[sel],
            np.stack([N * L + j3[i_kept2], own_root], 1),
            np.stack([np.ones(i_kept2.size), on_ring], 1).astype(np.float32),
            NL + first.size * (L + 1),
        )  # fmt: skip

        # op3: rows t * L + l, each the target's listed edges then its cached row of A_l S.
        col = np.where(gone, src_node, N * (L + 1) + rank_kept2[np.maximum(src_pair, 0)])
        sign = (~gone).astype(np.float32) * 2 - 1
        n3, E = i_kept3.size, tgt.size
        t_of_edge = rank_kept3[tgt]
        deg = np.bincount(t_of_edge, minlength=n3)
        first = np.cumsum(deg) - deg  # each target's first edge
        row0 = L * (first + np.arange(n3))  # each target's first entry
        lane = np.arange(L)
        crow = np.append((row0[:, None] + lane * (deg + 1)[:, None]).reshape(-1), L * (E + n3))
        at = row0[t_of_edge][:, None] + lane * (deg + 1)[t_of_edge][:, None]
        at += (np.arange(E) - first[t_of_edge])[:, None]
        cols = np.empty(L * (E + n3), np.int64)
        vals = np.empty(L * (E + n3), np.float32)
        cols[at] = col[:, None]
        vals[at] = self.in_attr_np[eid] * sign[:, None]
        own = row0[:, None] + lane * (deg + 1)[:, None] + deg[:, None]
        cols[own] = N + lane * N + j3[i_kept3][:, None]
        vals[own] = 1.0
        index = torch.from_numpy
        op3 = _sparse_csr(
            index(crow), index(cols), index(vals), (L * n3, N * (L + 1) + i_kept2.size)
        )
        return op1, op2, op3, ring_nodes

    def operators_c(self, k: int, j3, d3, edges, masks, work: dict):
        """:meth:`operators_numpy` with the C kernel (one pass, the same arrays), in the
        reused arrays of ``work`` (see :meth:`plan`)."""
        N, L = self.N, self.L
        NL = N * L + N
        _, (i_ring1, i_kept2, i_kept3) = masks
        P, Q = d3.size, edges[1].size
        n_ring, n2, n3 = i_ring1.size, i_kept2.size, i_kept3.size
        sizes = {"op1": (n_ring + 1, Q * L + n_ring), "op2": (n2 + 1, Q * L + 2 * n2),
                 "op3": (L * n3 + 1, L * (Q + n3))}  # fmt: skip
        arrays = {}
        for name, (rows, entries) in sizes.items():
            arrays[name] = (
                _scratch(work, name + "_crow", (rows,), np.int32),
                _scratch(work, name + "_col", (entries,), np.int32),
                _scratch(work, name + "_val", (entries,), np.float32),
            )
        nnz = np.zeros(3, np.int64)
        rank = _scratch(work, "rank", (4 * max(P, 1),), np.int64)
        table = _scratch(work, "table", (1 << int(2 * n_ring + 1).bit_length(),), np.int64)
        ring_nodes = _scratch(work, "ring_nodes", (n_ring,), np.int64)
        _c_index().occlusion_operators(
            N, L, k, self.in_attr_np, P, j3, d3, edges[0], Q, edges[1], edges[2], rank, table,
            table.size, ring_nodes, *arrays["op1"], *arrays["op2"], *arrays["op3"], nnz,
        )  # fmt: skip
        index = torch.from_numpy
        n_rows = int(nnz[2])  # distinct ring rows

        def csr(name, n_entries, rows, size):
            crow, col, val = arrays[name]
            return _sparse_csr(
                index(crow[: rows + 1]), index(col[:n_entries]), index(val[:n_entries]), size
            )

        return (
            csr("op1", nnz[0], n_rows, (n_rows, NL)),
            csr("op2", nnz[1], n2, (n2, NL + n_rows * (L + 1))),
            csr("op3", L * (Q + n3), L * n3, (L * n3, N * (L + 1) + n2)),
            ring_nodes[:n_rows].copy(),
        )

    def ring_transforms(self, plan: dict, out: Tensor) -> Tensor:
        """Vertex Conv 1 on the ring k + 1 of every copy of a :meth:`plan`, and the ring's
        feature changes through Vertex Conv 2 and the assignment, written into ``out``
        (R * (L + 1), H + C1): per ring row its root and edge 1..L transforms."""
        d_h1 = torch.relu_(_spmm(plan["op1"], self.dense1))
        d_h1 -= self.h1.index_select(0, plan["j_ring"])
        torch.mm(d_h1, self.w2, out=out.view(d_h1.size(0), self.w2.size(1)))
        return out

    def finish(self, plan: dict, slot: int | None) -> dict:
        """The model arithmetic of a :meth:`plan` that needs no other chunk's results: the
        layer-2 operand (the cached rows ``dense2`` followed by the ring transforms, written
        into reused buffer ``slot``) and the old pooling terms that the copies lose."""
        fixed, rows = self.dense2.size(0), plan["op1"].size(0) * (self.L + 1)
        work = self.workspace(slot)
        buf = work.get("operand")
        if buf is None or buf.size(0) < fixed + rows:
            buf = torch.empty(int((fixed + rows) * 1.25) + 1, self.dense2.size(1))
            buf[:fixed] = self.dense2
            work["operand"] = buf
        buf = buf[: fixed + rows]
        self.ring_transforms(plan, out=buf[fixed:])
        plan["dense2"] = buf
        plan["base"] = self.old_terms(plan)
        return plan

    def old_terms(self, plan: dict) -> tuple[Tensor, Tensor, Tensor]:
        """Per copy, minus the cached Pooling 1 terms of its removed nodes and of the old
        values of its changed nodes: (C, K * C1, H), (C, K) and (C, K * C1, L * C1), the
        parts of the pooled sums' changes that do not depend on the new values."""
        C = plan["C"]
        j_ball2, j_ball3 = plan["j_ball2"], plan["j_ball3"]
        base_u = _segment_outer(plan["old2"], -self.us_t.index_select(1, j_ball2), self.z)
        base_a = _segment_outer(plan["old3"], -self.us_t.index_select(1, j_ball3), self.m)
        # The normaliser loses the removed nodes' weights and, with softmax attention, the
        # old weights of the changed ones (their new weights are added by pooled).
        if self.softmax:
            lost = self.v.index_select(0, j_ball2)
            base_d = -lost.new_zeros(C, self.K).index_add_(0, plan["copy_ball2"], lost)
        else:
            base_d = (plan["n_left"] - self.N).double()[:, None].expand(C, self.K)
        return base_u, base_d, base_a

    def pooled(self, plan: dict):
        """Pooling 1 output of every occluded copy of a :meth:`plan`: (C, K, C1, H),
        (C, K, C1, C1, L), the fraction of pooling weight left (the smallest over branches),
        which copies are empty."""
        C1, L, n3 = self.C1, self.L, plan["n3"]
        if "dense2" not in plan:
            self.finish(plan, None)
        j_kept2, j_kept3 = plan["j_kept2"], plan["j_kept3"]
        pre2 = _spmm(plan["op2"], plan["dense2"])
        z, s = self._activate(pre2, inplace=True)
        u, _ = self._weights(z, self.xn.index_select(0, j_kept2), self.gmax)

        operand = torch.cat([self.dense3, s - self.s.index_select(0, j_kept2)])
        m3 = _spmm(plan["op3"], operand).view(n3, L * C1)  # new rows of A S, (l, c) order
        us2 = self._spread_t(u, s)
        us3 = self.us_t.index_select(1, j_kept3)
        us3[:, plan["kept2_in_3"]] = us2

        # Pooling 1 (eq. 3): the new terms of the changed nodes added to the old terms they
        # and the removed nodes lose (:meth:`old_terms`).
        base_u, base_d, base_a = plan["base"]
        d_U = _segment_outer(plan["new2"], us2, z).add_(base_u)
        d_D = base_d.index_add(0, plan["copy2"], u) if self.softmax else base_d
        d_A = _segment_outer(plan["new3"], us3, m3).add_(base_a)

        mass = self.D + d_D.double()  # (C, K)
        x1, a1 = self._normalised(self.U + d_U.double(), self.A + d_A.double(), mass)
        empty = plan["n_left"] == 0
        x1[empty], a1[empty] = 0, 0
        return x1, a1, (mass / self.D).min(1).values.float(), empty


def _distinct_ring_rows(nodes, ring_of_edge, edge_ids) -> tuple[np.ndarray, np.ndarray]:
    """Ring pairs (``nodes``, in pair order) that lose the same in-edges (``edge_ids`` of the
    lost edges, grouped by their ring pair ``ring_of_edge``, sorted) share one Vertex Conv 1
    row. Returns each pair's row, rows numbered in order of first appearance, and the first
    pair of every row (what the C kernel's hash table gives)."""
    n = nodes.size
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    counts = np.bincount(ring_of_edge, minlength=n)
    keys = np.full((n, 1 + int(counts.max(initial=0))), -1, np.int64)
    keys[:, 0] = nodes
    slot = np.arange(ring_of_edge.size) - np.repeat(np.cumsum(counts) - counts, counts)
    keys[ring_of_edge, 1 + slot] = edge_ids
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    renumber = np.empty_like(order)
    renumber[order] = np.arange(order.size)
    return renumber[inverse.reshape(-1)], first[order]


def _segments(counts, width: int, rows, size: int, kernel: bool = False) -> dict:
    """Index part of :func:`_segment_outer`: C segments of ``counts`` consecutive rows of a
    ``width``-column left factor, and the rows of the right factor (``size`` rows) they pair
    with (None: the same rows).

    The operator has a row (alpha, c) per column alpha and segment c holding the segment's
    rows, so its CSR rows and columns are ``width`` shifted copies of one segment layout (no
    per-entry scatter) and its values are the left factor transposed. With ``kernel`` (the C
    library is there) factors on the same rows need no operator: the C kernel sums them.
    """
    C, R = len(counts), int(np.sum(counts))
    starts = np.append(0, np.cumsum(counts))[:-1]
    seg = {"C": C, "width": width, "size": size, "starts": np.append(starts, R).astype(np.int64)}
    if rows is None and kernel:
        return seg
    dtype = np.int32 if max(width * R, size) < _INT32_LIMIT else np.int64
    crow = np.append((R * np.arange(width)[:, None] + starts).reshape(-1), width * R)
    rows = np.arange(R, dtype=dtype) if rows is None else rows.astype(dtype)
    seg["crow"] = torch.from_numpy(crow.astype(dtype))
    seg["col"] = torch.from_numpy(np.tile(rows, width))
    return seg


def _segment_outer(seg: dict, a_t: Tensor, b: Tensor) -> Tensor:
    """``out[c] = sum_r a[r] (x) b[rows[r]]`` over the rows r of segment c (see
    :func:`_segments`), ``a`` given transposed.

    One sparse product: a (A * C, len(b)) CSR matrix whose row (alpha, c) holds column alpha
    of segment c of ``a`` at b's rows, times ``b``. No padding, and ``b`` is read in place
    (cached per-node tensors are indexed, never gathered).

    Shapes:
        - input: a_t (A, R), b (M, B)
        - output: (C, A, B)
    """
    if "col" not in seg:  # factors on the same rows: the C kernel reads each row of b once
        C, A = seg["C"], seg["width"]
        a_t = a_t.contiguous()
        if b.stride(1) != 1:
            b = b.contiguous()
        out = b.new_empty(C, A, b.size(1))
        _c_index().segment_outer(
            C, seg["starts"], A, a_t.size(1), a_t.data_ptr(), b.size(1), b.data_ptr(),
            b.stride(0), out.data_ptr(),
        )  # fmt: skip
        return out
    size = (seg["width"] * seg["C"], seg["size"])
    op = _sparse_csr(seg["crow"], seg["col"], a_t.reshape(-1), size)
    return _spmm(op, b).view(seg["width"], seg["C"], -1).transpose(0, 1)


def _spmm(op: Tensor, dense: Tensor, out: Tensor | None = None) -> Tensor:
    """``op @ dense`` for a sparse CSR ``op`` (R, M) and a dense (M, B): (R, B).

    ``torch.sparse.mm`` zero-fills its result and then copies it once more; ``addmm`` with
    ``beta=0`` writes the product straight into ``out`` (uninitialised by default; its
    contents are ignored, NaN included), the same values at about 25 % less time.
    """
    if out is None:
        out = dense.new_empty(op.size(0), dense.size(1))
    return torch.addmm(out, op, dense, beta=0, out=out)


_INT32_LIMIT = 2**31 - 1


def _sparse_csr(crow, col, val, size) -> Tensor:
    """A CSR operator, with int32 indices where they fit: MKL's sparse products take those
    as they are (int64 ones are converted on every product)."""
    if crow.dtype == torch.int64 and max(*size, col.numel()) < _INT32_LIMIT:
        crow, col = crow.to(torch.int32), col.to(torch.int32)
    from histoview.models.graph_layers import sparse_csr

    return sparse_csr(crow, col, val, size)


_C_INDEX: list = []  # the loaded C library (or None), once looked up
_C_ABI = 8  # occlusion_index_abi() of the C source this module matches


def _c_index():
    """The C index kernel (``_occlusion_index``, built with the package when a C compiler
    was available) through ctypes, or None. ``HISTOVIEW_NO_C=1`` disables it."""
    if _C_INDEX:
        return _C_INDEX[0]
    lib = None
    if os.environ.get("HISTOVIEW_NO_C", "") in ("", "0"):
        try:
            from histoview.explain import _occlusion_index

            lib = ctypes.CDLL(_occlusion_index.__file__)
        except (ImportError, OSError):
            lib = None
    try:
        abi = lib.occlusion_index_abi() if lib is not None else _C_ABI
    except AttributeError:
        abi = None
    if abi != _C_ABI:
        warnings.warn(
            f"{lib._name} is from another histoview version (interface {abi}, expected "
            f"{_C_ABI}); occlusion uses NumPy. Reinstall histoview to rebuild it.",
            RuntimeWarning,
            stacklevel=2,
        )
        lib = None
    if lib is not None:
        i64 = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")
        u8 = np.ctypeslib.ndpointer(np.uint8, flags="C_CONTIGUOUS")
        n = ctypes.c_int64
        fn = lib.occlusion_pairs
        fn.restype = ctypes.c_int
        u64 = np.ctypeslib.ndpointer(np.uint64, flags="C_CONTIGUOUS")
        f32 = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
        i32 = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")
        fn.argtypes = [n, i64, i64, i64, i64, n, i64, n, n, u8, i64, i64, u64,
                       n, i64, i64, i64, i64, n, i32, i32, i64]  # fmt: skip
        fn = lib.occlusion_operators
        fn.restype = None
        fn.argtypes = [n, n, n, f32, n, i64, i64, i64, n, i32, i32, i64, i64,
                       n, i64, i32, i32, f32, i32, i32, f32, i32, i32, f32, i64]  # fmt: skip
        fn = lib.segment_outer
        fn.restype = None
        fn.argtypes = [n, i64, n, n, ctypes.c_void_p, n, ctypes.c_void_p, n, ctypes.c_void_p]
    _C_INDEX.append(lib)
    return lib


def _numpy_pairs(engine, centres, k: int, scratch: dict):
    """:meth:`_IncrementalOcclusion.pairs_numpy` (``scratch`` unused)."""
    return engine.pairs_numpy(centres, k)


def _c_pairs(engine, centres, k: int, scratch: dict):
    """:meth:`_IncrementalOcclusion.pairs_numpy` with the C kernel: the same pairs, and the edges in
    a compact form (each pair's first edge (P + 1,), and per edge its id and source pair,
    int32) that :meth:`_IncrementalOcclusion.operators_c` reads. The outputs are views of
    arrays in ``scratch``, valid until its next use."""
    fn = _c_index().occlusion_pairs
    nb, N = engine.neighbours, engine.N
    centres = np.ascontiguousarray(centres, np.int64)
    if "dist" not in scratch:
        scratch["dist"] = np.full(N, _FAR, np.uint8)
        scratch["pos"], scratch["order"] = np.empty(N, np.int64), np.empty(N, np.int64)
        scratch["bits"] = np.zeros((N + 63) // 64, np.uint64)
    work = scratch["dist"], scratch["pos"], scratch["order"], scratch["bits"]
    counts = np.zeros(2, np.int64)
    while True:
        pairs = _scratch(scratch, "pairs", (4, engine.c_capacity[0] + 1), np.int64)
        edges = _scratch(scratch, "edges", (2, engine.c_capacity[1]), np.int32)
        failed = fn(N, nb.ptr, nb.idx, engine.in_ptr, engine.in_src, centres.size, centres, k,
                    k + 3, *work, pairs.shape[1] - 1, *pairs, edges.shape[1], *edges, counts)  # fmt: skip
        P, Q = int(counts[0]), int(counts[1])
        if not failed:
            return *(a[:P] for a in pairs[:3]), (pairs[3, : P + 1], *(a[:Q] for a in edges))
        engine.c_capacity = (int(P * 1.25) + 16, int(Q * 1.25) + 16)


def _scratch(store: dict, name: str, shape: tuple, dtype) -> np.ndarray:
    """An array of ``shape`` in one kept in ``store`` (reallocated when too small)."""
    have = store.get(name)
    if have is None or have.shape[-1] < shape[-1] or have.shape[:-1] != shape[:-1]:
        have = store[name] = np.empty((*shape[:-1], int(shape[-1] * 1.25) + 16), dtype)
    return have[..., : shape[-1]]


def _supports_incremental(model) -> bool:
    """An RSF network on the CPU (the engine's index bookkeeping is NumPy)."""
    from histoview.models.graph_nets import RSFNet

    if not isinstance(model, RSFNet):
        return False
    return all(p.device.type == "cpu" for p in model.parameters())


# ----------------------------------------------------------------------------- public API


class _EvalMode:
    """Evaluation mode and no autograd for the duration; restores the training flag."""

    def __init__(self, model):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.grad = torch.no_grad()
        self.grad.__enter__()
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.was_training)
        self.grad.__exit__(*exc)
        return False


def _probabilities(model, data) -> Tensor:
    return torch.softmax(model(data).float(), dim=-1)


def attention_importance(model, data, target_class: int | None = None) -> np.ndarray:
    """Attention score of every nucleus (RSF+Attention, Sec. III-F): (N,), summing to 1
    (softmax attention) or each in (0, 1) (sigmoid gates).

    With class-wise attention (one branch per class) the scores are those of the branch of
    ``target_class`` (default: the predicted class): what the model looked at to call it.

    Raises:
        ValueError: the model has no attention layer.
    """
    if getattr(model, "attention", None) is None:
        name = getattr(getattr(model, "model_config", None), "name", type(model).__name__)
        raise ValueError(
            f"model {name!r} has no attention layer; use importance='occlusion' instead"
        )
    with _EvalMode(model):
        if target_class is not None and getattr(model, "branches", 1) > 1:
            if not 0 <= int(target_class) < model.num_classes:
                raise ValueError(f"target_class {target_class} out of range")
            _, _, weights = model.forward_features(data, return_attention=True)
            attention = weights[:, int(target_class)]
        else:
            _, attention = model(data, return_attention=True)
    return attention.float().cpu().numpy()


def occlusion_importance(
    model,
    data,
    *,
    k: int = 1,
    target_class: int | None = None,
    batch_size: int = 128,
    method: str = "auto",
) -> np.ndarray:
    """Occlusion importance of every nucleus (seed 001, eq. 5): (N,) float32.

    ``score_i = p(M(G)) - p(M(G_i))``, p the probability of ``target_class`` (default: the
    class predicted on G) and ``G_i`` the graph without nucleus i, its k-hop neighbours and
    all their edges. A positive score: the region supports the class.

    Args:
        model: a graph model (``kind="graph"``) taking a PyG ``Data``/``Batch``.
        data: one graph, ``Data`` with x, edge_index, edge_attr.
        k: hops occluded around each nucleus (the paper uses 1; 2 and 3 also work).
        target_class: class whose probability is explained.
        batch_size: occluded graphs handled together (memory vs. speed).
        method: ``"incremental"`` (exact, RSF networks only), ``"batched"`` (the plain
            definition, one forward pass per chunk of occluded graphs) or ``"auto"``.

    The incremental method runs on as many threads as ``torch.get_num_threads()`` (each
    with single-threaded torch; the count is restored afterwards).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if (getattr(data, "num_graphs", None) or 1) > 1:
        raise ValueError("occlusion explains one graph at a time; got a batch of several")
    if method not in ("auto", "incremental", "batched"):
        raise ValueError(f"method must be 'auto', 'incremental' or 'batched', got {method!r}")
    if method == "auto":
        method = "incremental" if _supports_incremental(model) else "batched"
    elif method == "incremental" and not _supports_incremental(model):
        raise ValueError(
            f"incremental occlusion needs an RSF network on the CPU, got {type(model).__name__}"
        )
    N = data.x.size(0)
    if N == 0:
        return np.zeros(0, np.float32)
    # Read before any worker thread exists: they set torch's global thread count to 1.
    threads = torch.get_num_threads()
    try:
        with _EvalMode(model):
            if method == "incremental":
                scores = _incremental_scores(model, data, k, target_class, batch_size, threads)
            else:
                scores = _batched_scores(model, data, k, target_class, batch_size)
    finally:
        torch.set_num_threads(threads)
    return scores.numpy()


def _checked_target(probs: Tensor, target_class: int | None) -> int:
    target = int(probs.argmax()) if target_class is None else int(target_class)
    if not 0 <= target < probs.numel():
        raise ValueError(f"target_class {target} out of range for {probs.numel()} classes")
    return target


def _batched_scores(model, data, k: int, target_class, batch_size: int) -> Tensor:
    """Eq. 5 by definition: every chunk of occluded graphs as one batch, one forward pass."""
    N = data.x.size(0)
    neighbours = _Neighbours(data.edge_index, N)
    probs = _probabilities(model, data)[0]
    target = _checked_target(probs, target_class)
    scores = torch.zeros(N)
    for start in range(0, N, batch_size):
        centres = np.arange(start, min(start + batch_size, N))
        p = _direct_probabilities(model, data, neighbours, centres, k, target)
        scores[torch.from_numpy(centres)] = probs[target] - p
    return scores


def _direct_probabilities(model, data, neighbours, centres, k: int, target: int) -> Tensor:
    """p(target) on the graphs without each centre's k-hop ball, as one batch."""
    copy, node, _ = neighbours.balls(centres, k)
    keep = torch.ones(centres.size, data.x.size(0), dtype=torch.bool)
    keep[torch.from_numpy(copy), torch.from_numpy(node)] = False
    return _probabilities(model, occluded_graphs(data, keep))[:, target]


def _incremental_scores(model, data, k: int, target_class, batch_size: int, threads: int):
    """Eq. 5 with :class:`_IncrementalOcclusion`, on ``threads`` threads.

    The nuclei are cut into chunks of neighbours (:meth:`_Neighbours.local_order`: their
    occluded graphs touch overlapping sets of cached rows); every thread takes the next
    chunk and does all of its work (index bookkeeping, arithmetic, the head) with
    single-threaded torch, so the threads stay busy to the end, each chunk's data stays in
    one core's cache, and more cores mean proportionally less time. The helper threads plan
    their first chunk while the calling thread caches the full graph.
    """
    N = data.x.size(0)
    engine = _IncrementalOcclusion(model, data)
    order = engine.neighbours.local_order()
    chunks = [order[i : i + batch_size] for i in range(0, N, batch_size)]
    lock, cached = threading.Lock(), threading.Event()
    state: dict = {"next": 0, "target": None}
    results: list = []

    def work(slot: int) -> None:
        with torch.no_grad():  # autograd's mode is per thread
            run(slot)

    def run(slot: int) -> None:
        while True:
            with lock:
                i = state["next"]
                state["next"] += 1
            if i >= len(chunks):
                return
            plan = engine.plan(chunks[i], k, slot)
            cached.wait()
            if state["target"] is None:
                return  # the full graph failed; the calling thread raises
            engine.finish(plan, slot)
            x1, a1, mass, empty = engine.pooled(plan)
            p = torch.softmax(model.forward_head(x1, a1).float(), -1)[:, state["target"]]
            # Copies that lost nearly all pooling weight: recomputed directly (module doc).
            redo = np.flatnonzero(((mass < 1e-3) & ~empty).numpy())
            if redo.size:
                direct = _direct_probabilities(
                    model, data, engine.neighbours, chunks[i][redo], k, state["target"]
                )
                p[torch.from_numpy(redo)] = direct
            results.append((chunks[i], p))

    helpers = max(threads - 1, 0)
    with ThreadPoolExecutor(max_workers=max(helpers, 1), initializer=_one_thread) as pool:
        running = [pool.submit(work, slot) for slot in range(1, helpers + 1)]
        try:
            engine.cache()
            probs = torch.softmax(model.forward_head(*engine.full_pooled()).float(), -1)[0]
            target = _checked_target(probs, target_class)
            state["p"], state["target"] = probs[target], target
        finally:
            cached.set()
        torch.set_num_threads(1)
        work(0)
        for job in running:
            job.result()
    scores = torch.zeros(N)
    for centres, p in results:
        scores[torch.from_numpy(centres)] = state["p"] - p
    return scores


def _one_thread() -> None:
    """Torch runs single-threaded in the worker thread. Torch initialises a thread's intra-op
    thread count lazily from its global setting, so initialise first, then set (which also
    sets the global value: :func:`occlusion_importance` restores it)."""
    torch.get_num_threads()
    torch.set_num_threads(1)


def explain_graph(
    model,
    graph,
    *,
    importance: str = "attention",
    k: int = 1,
    target_class: int | None = None,
    classes: tuple[str, ...] | None = None,
    checkpoint_sha256: str | None = None,
    synthetic: bool = False,
    image_shape: tuple[int, int] | None = None,
    outlines: tuple = (),
    batch_size: int = 128,
) -> Explanation:
    """Explain a graph model's decision on one nuclei graph, one value per nucleus.

    Args:
        model: a registered graph model (RSF, RSF+Edge, RSF+Attention).
        graph: a :class:`~histoview.preprocessing.graph.NucleiGraph`.
        importance: ``"attention"`` (RSF+Attention only) or ``"occlusion"`` (eq. 5).
        k: occlusion hops.
        target_class: class explained (default: the predicted one). Attention does not
            depend on it.
        classes: class names (default ``("class 0", "class 1", ...)``).
        image_shape: (height, width) of the image; default: the nuclei's bounding box.
        outlines: per-nucleus polygons for rasterising.
    """
    if importance not in ("attention", "occlusion"):
        raise ValueError(f"importance must be 'attention' or 'occlusion', got {importance!r}")
    data = graph.to_pyg()
    with _EvalMode(model):
        probs = _probabilities(model, data)[0].cpu().numpy().astype(np.float64)
    target = int(np.argmax(probs)) if target_class is None else int(target_class)
    if importance == "attention":
        values = attention_importance(model, data, target)
    else:
        values = occlusion_importance(model, data, k=k, target_class=target, batch_size=batch_size)
    centroids = np.asarray(graph.centroids, np.float64).reshape(-1, 2)
    if image_shape is None:
        top = np.ceil(centroids.max(0)) + 1 if len(centroids) else np.ones(2)
        image_shape = (int(top[0]), int(top[1]))
    feats = np.asarray(graph.node_features)
    features = {name: feats[:, i].copy() for i, name in enumerate(graph.feature_names)}
    geometry = NucleiPoints(
        centroids=centroids,
        image_shape=tuple(int(v) for v in image_shape),
        edge_index=np.asarray(graph.edge_index, np.int64),
        edge_weight=np.asarray(graph.edge_weight, np.float32),
        outlines=tuple(outlines),
        features=features,
    )
    config = getattr(model, "model_config", None)
    if classes is None:
        classes = tuple(f"class {i}" for i in range(len(probs)))
    classes = tuple(classes)
    if len(classes) != len(probs):
        raise ValueError(f"{len(classes)} class names for a model with {len(probs)} outputs")
    return Explanation(
        method="graph",
        model=config.name if config is not None else type(model).__name__,
        classes=classes,
        probabilities=probs,
        target_class=target,
        values=np.asarray(values, np.float32),
        geometry=geometry,
        checkpoint_sha256=checkpoint_sha256,
        synthetic=synthetic,
        extra={
            "importance": importance,
            # what an attention value means: a gate in (0, 1), or a weight summing to 1
            "attention_gate": model.attention.gate if importance == "attention" else None,
            "k": int(k) if importance == "occlusion" else None,
            "num_nuclei": int(len(centroids)),
            "num_edges": int(np.asarray(graph.edge_index).shape[1]),
        },
    )
