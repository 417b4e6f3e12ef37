/*
 * Index bookkeeping of histoview's exact occlusion engine (explain/graph.py), in C.
 *
 * One function, ``occlusion_pairs``: for every occluded copy (one per centre nucleus) the
 * nodes within ``max_hops`` of its centre with their hop distance, and the in-edges of the
 * kept ones that come from nodes within ``max_hops - 1`` hops. It does what the NumPy
 * reference ``_IncrementalOcclusion._pairs_numpy`` does, with the same outputs in the same
 * order (the tests compare them); the NumPy version needs some 30 whole-array passes over
 * ~100,000 (copy, edge) entries per chunk, this one a single pass.
 *
 * Plain C99, no Python headers needed by the functions; ``PyInit__occlusion_index`` only
 * makes the shared library importable so that Python can locate it. It is called through
 * ctypes (numpy arrays in, numpy arrays out), releasing the GIL while it runs.
 */
#include <stdint.h>
#include <string.h>
#include <string.h>

static inline int lowest_bit(uint64_t x) {
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_ctzll(x);
#else
    int n = 0;
    while (!(x & 1)) {
        x >>= 1;
        n++;
    }
    return n;
#endif
}

/* Sort the n distinct node ids of order[] in place through the bit set ``bits`` (zero on
 * entry and on return): cheaper than a comparison sort for the ~100-node balls here. */
static void sort_nodes(int64_t *order, int64_t n, uint64_t *bits) {
    int64_t lo = INT64_MAX, hi = -1;
    for (int64_t q = 0; q < n; q++) {
        int64_t w = order[q] >> 6;
        bits[w] |= (uint64_t)1 << (order[q] & 63);
        if (w < lo) lo = w;
        if (w > hi) hi = w;
    }
    int64_t q = 0;
    for (int64_t w = lo; w <= hi; w++) {
        uint64_t x = bits[w];
        bits[w] = 0;
        while (x) {
            order[q++] = (w << 6) + lowest_bit(x);
            x &= x - 1;
        }
    }
}

/*
 * Graph (N nodes): undirected neighbour lists nb_ptr (N + 1), nb_idx; in-edges by target
 * in_ptr (N + 1), in_src (E) (in-edge e of node j is in_ptr[j] <= e < in_ptr[j + 1]).
 * Copies: centres (C). A node of copy c is "kept" when its distance d satisfies
 * k < d <= max_hops; its in-edges are listed when the source's distance is <= max_hops - 1.
 *
 * Work arrays (caller-allocated, N each): dist (uint8, all 255 on entry and on return),
 * pos (int64, any), order (int64, any); bits ((N + 63) / 64 uint64, zero on entry and
 * on return).
 *
 * Outputs, capacities pair_cap and edge_cap:
 *   pairs, sorted by copy then node: pair_copy, pair_node, pair_dist (int64 each), and
 *   edge_first (pair_cap + 1): pair p's edges are edge_first[p] <= e < edge_first[p + 1];
 *   edges, sorted by target pair then edge id: edge_id, edge_src_pair (the source's pair;
 *   its node and distance are the pair's), int32 each.
 * counts[0], counts[1]: the numbers of pairs and edges. Returns 0, or 1 when a capacity was
 * too small (counts then hold the sizes needed; call again with larger arrays).
 */
int occlusion_pairs(int64_t N, const int64_t *nb_ptr, const int64_t *nb_idx,
                    const int64_t *in_ptr, const int64_t *in_src,
                    int64_t C, const int64_t *centres, int64_t k, int64_t max_hops,
                    uint8_t *dist, int64_t *pos, int64_t *order, uint64_t *bits,
                    int64_t pair_cap, int64_t *pair_copy, int64_t *pair_node, int64_t *pair_dist,
                    int64_t *edge_first, int64_t edge_cap, int32_t *edge_id,
                    int32_t *edge_src_pair, int64_t *counts) {
    int64_t n_pairs = 0, n_edges = 0;
    int overflow = 0;
    (void)N; /* the work arrays' size */
    for (int64_t c = 0; c < C; c++) {
        /* Breadth-first search from the centre; order[] is the queue. */
        int64_t head = 0, tail = 0, centre = centres[c];
        dist[centre] = 0;
        order[tail++] = centre;
        while (head < tail) {
            int64_t j = order[head++];
            uint8_t d = dist[j];
            if (d >= max_hops) continue;
            for (int64_t p = nb_ptr[j]; p < nb_ptr[j + 1]; p++) {
                int64_t n = nb_idx[p];
                if (dist[n] == 255) {
                    dist[n] = (uint8_t)(d + 1);
                    order[tail++] = n;
                }
            }
        }
        sort_nodes(order, tail, bits);
        int64_t first = n_pairs;
        for (int64_t q = 0; q < tail; q++) {
            int64_t j = order[q];
            pos[j] = n_pairs;
            if (n_pairs < pair_cap) {
                pair_copy[n_pairs] = c;
                pair_node[n_pairs] = j;
                pair_dist[n_pairs] = dist[j];
            } else {
                overflow = 1;
            }
            n_pairs++;
        }
        for (int64_t q = 0; q < tail; q++) {
            int64_t j = order[q];
            if (first + q < pair_cap) edge_first[first + q] = n_edges;
            if (dist[j] <= k) continue;
            for (int64_t e = in_ptr[j]; e < in_ptr[j + 1]; e++) {
                int64_t s = in_src[e];
                if (dist[s] >= max_hops) continue; /* 255 (farther) included */
                if (n_edges < edge_cap) {
                    edge_id[n_edges] = (int32_t)e;
                    edge_src_pair[n_edges] = (int32_t)pos[s];
                } else {
                    overflow = 1;
                }
                n_edges++;
            }
        }
        for (int64_t q = 0; q < tail; q++) dist[order[q]] = 255;
    }
    if (n_pairs <= pair_cap) edge_first[n_pairs] = n_edges;
    counts[0] = n_pairs;
    counts[1] = n_edges;
    return overflow;
}

/*
 * The sparse operators of one chunk of occluded copies (explain/graph.py,
 * ``_IncrementalOcclusion.plan``), from the output of ``occlusion_pairs`` (P pairs, Q edges)
 * with max_hops = k + 3. ``attr`` (E, L) float32 holds the L edge features of every in-edge.
 * Operators' indices are int32 (what MKL's sparse products take without a conversion); the
 * caller makes sure that columns and entries fit.
 * Row counts n_ring, n_kept2, n_kept3 are the numbers of pairs with d = k + 1, k < d <= k + 2
 * and k < d. Work: rank (4 * P int64), table (table_size int64, a power of two above
 * 2 * n_ring). Outputs (CSR, int32 crow/col, float32 val):
 *   op1: a row per distinct ring row (pairs with d = k + 1 whose node loses the same
 *        in-edges share one; ring_node gets its node, nnz[2] their number), its removed
 *        in-neighbours (d_src <= k; L entries each, column src * L + l, value -e_l) then
 *        (N * L + node, 1);
 *   op2: n_kept2 rows, per changed pair its in-edges from d_src <= k + 1 (L entries each:
 *        removed sources at src * L + l with -e_l, ring sources at
 *        NL + ring_row(src) * (L + 1) + 1 + l with +e_l, NL = N * L + N), then
 *        (N * L + node, 1) and, for ring nodes, (NL + ring_row(node) * (L + 1), 1), for
 *        the others a zero entry at N * L + node (two entries per row in both cases);
 *   op3: n_kept3 * L rows (row t * L + l), every listed edge of target t: removed sources
 *        at column src with -e_l, changed ones at N * (L + 1) + rank_kept2(src) with +e_l,
 *        then the target's cached row (A_l S)_t at column N + l * N + node, 1 (the operand
 *        stacks [S; (A_l S) for each l; S' - S]).
 * nnz[0], nnz[1]: the entries of op1 and op2 (op3 has L * (Q + n_kept3)). Capacities: op1
 * Q * L + n_ring, op2 Q * L + 2 * n_kept2 suffice; ring_node n_ring.
 */
/* Do ring pairs p and q (the same node) lose the same in-edges (sources within k hops)? */
static int same_losses(int64_t p, int64_t q, int64_t k, const int64_t *edge_first,
                       const int32_t *edge_id, const int32_t *edge_src_pair,
                       const int64_t *pair_dist) {
    int64_t a = edge_first[p], a_end = edge_first[p + 1];
    int64_t b = edge_first[q], b_end = edge_first[q + 1];
    for (;;) {
        while (a < a_end && pair_dist[edge_src_pair[a]] > k) a++;
        while (b < b_end && pair_dist[edge_src_pair[b]] > k) b++;
        if (a == a_end || b == b_end) return a == a_end && b == b_end;
        if (edge_id[a] != edge_id[b]) return 0;
        a++;
        b++;
    }
}

#if defined(__GNUC__) || defined(__clang__)
#define ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define ALWAYS_INLINE inline
#endif

static ALWAYS_INLINE void operators_body(int64_t N, const int64_t L, int64_t k, const float *attr,
                         int64_t P, const int64_t *pair_node, const int64_t *pair_dist,
                         const int64_t *edge_first, int64_t Q, const int32_t *edge_id,
                         const int32_t *edge_src_pair, int64_t *rank,
                         int64_t *table, int64_t table_size, int64_t *ring_node,
                         int32_t *op1_crow, int32_t *op1_col, float *op1_val,
                         int32_t *op2_crow, int32_t *op2_col, float *op2_val,
                         int32_t *op3_crow, int32_t *op3_col, float *op3_val, int64_t *nnz) {
    int64_t *rank_ring = rank, *rank_kept2 = rank + P, *rank_kept3 = rank + 2 * P;
    int64_t *first_pair = rank + 3 * P; /* per distinct ring row: its first pair */
    int64_t n_kept2 = 0, n3 = 0;
    for (int64_t p = 0; p < P; p++) {
        int64_t d = pair_dist[p];
        rank_kept2[p] = (d > k && d <= k + 2) ? n_kept2++ : -1;
        rank_kept3[p] = (d > k) ? n3++ : -1;
    }
    const int64_t NL = N * L + N;

    /* Ring rows (Vertex Conv 1 of a node on the ring): a node that loses the same in-edges
     * in several copies gets one row, found through a hash table of (node, lost edges). */
    for (int64_t t = 0; t < table_size; t++) table[t] = -1;
    int64_t n_ring = 0, a = 0;
    op1_crow[0] = 0;
    for (int64_t p = 0; p < P; p++) {
        rank_ring[p] = -1;
        if (pair_dist[p] != k + 1) continue;
        int64_t j = pair_node[p];
        uint64_t h = (uint64_t)j * 0x9E3779B97F4A7C15ULL;
        for (int64_t e = edge_first[p]; e < edge_first[p + 1]; e++) {
            if (pair_dist[edge_src_pair[e]] > k) continue;
            h = (h ^ (uint64_t)edge_id[e]) * 0x100000001B3ULL;
            h ^= h >> 29;
        }
        int64_t slot = (int64_t)(h & (uint64_t)(table_size - 1));
        while (table[slot] >= 0) {
            int64_t r = first_pair[table[slot]];
            if (pair_node[r] == j &&
                same_losses(p, r, k, edge_first, edge_id, edge_src_pair, pair_dist))
                break;
            slot = (slot + 1) & (table_size - 1);
        }
        if (table[slot] >= 0) {
            rank_ring[p] = table[slot];
            continue;
        }
        int64_t u = n_ring++;
        table[slot] = u;
        first_pair[u] = p;
        rank_ring[p] = u;
        ring_node[u] = j;
        for (int64_t e = edge_first[p]; e < edge_first[p + 1]; e++) {
            int64_t sp = edge_src_pair[e];
            if (pair_dist[sp] > k) continue;
            const float *w = attr + (int64_t)edge_id[e] * L;
            for (int64_t l = 0; l < L; l++) {
                op1_col[a] = (int32_t)(pair_node[sp] * L + l);
                op1_val[a++] = -w[l];
            }
        }
        op1_col[a] = (int32_t)(N * L + j);
        op1_val[a++] = 1.0f;
        op1_crow[u + 1] = (int32_t)a;
    }

    int64_t b = 0;
    op2_crow[0] = 0;
    for (int64_t p = 0; p < P; p++) {
        int64_t d = pair_dist[p], j = pair_node[p];
        if (d <= k) continue;
        int64_t first = edge_first[p], last = edge_first[p + 1];
        int64_t t = rank_kept3[p], deg = last - first;
        /* Rows t * L + l, each deg + 1 entries long, after those of earlier targets. */
        int64_t row0 = L * (first + t);
        for (int64_t l = 0; l < L; l++) {
            op3_crow[t * L + l] = (int32_t)(row0 + l * (deg + 1));
            op3_col[row0 + l * (deg + 1) + deg] = (int32_t)(N + l * N + j);
            op3_val[row0 + l * (deg + 1) + deg] = 1.0f;
        }
        for (int64_t e = first; e < last; e++) {
            const float *w = attr + (int64_t)edge_id[e] * L;
            int64_t sp = edge_src_pair[e], ds = pair_dist[sp], s = pair_node[sp];
            int gone = ds <= k;
            int64_t col3 = gone ? s : N * (L + 1) + rank_kept2[sp];
            float sign = gone ? -1.0f : 1.0f;
            for (int64_t l = 0; l < L; l++) {
                op3_col[row0 + l * (deg + 1) + (e - first)] = (int32_t)col3;
                op3_val[row0 + l * (deg + 1) + (e - first)] = sign * w[l];
            }
            if (d <= k + 2 && ds <= k + 1) {
                int64_t base = gone ? s * L : NL + rank_ring[sp] * (L + 1) + 1;
                for (int64_t l = 0; l < L; l++) {
                    op2_col[b] = (int32_t)(base + l);
                    op2_val[b++] = sign * w[l];
                }
            }
        }
        if (d <= k + 2) {
            op2_col[b] = (int32_t)(N * L + j);
            op2_val[b++] = 1.0f;
            op2_col[b] = (int32_t)((d == k + 1) ? NL + rank_ring[p] * (L + 1) : N * L + j);
            op2_val[b++] = (d == k + 1) ? 1.0f : 0.0f;
            op2_crow[rank_kept2[p] + 1] = (int32_t)b;
        }
    }
    op3_crow[L * n3] = (int32_t)(L * (Q + n3));
    nnz[0] = a;
    nnz[1] = b;
    nnz[2] = n_ring;
}

/* The edge-channel loops unroll when L is a constant: the RSF models have L = 4. */
void occlusion_operators(int64_t N, int64_t L, int64_t k, const float *attr,
                         int64_t P, const int64_t *pair_node, const int64_t *pair_dist,
                         const int64_t *edge_first, int64_t Q, const int32_t *edge_id,
                         const int32_t *edge_src_pair, int64_t *rank,
                         int64_t *table, int64_t table_size, int64_t *ring_node,
                         int32_t *op1_crow, int32_t *op1_col, float *op1_val,
                         int32_t *op2_crow, int32_t *op2_col, float *op2_val,
                         int32_t *op3_crow, int32_t *op3_col, float *op3_val, int64_t *nnz) {
    if (L == 4)
        operators_body(N, 4, k, attr, P, pair_node, pair_dist, edge_first, Q, edge_id, edge_src_pair, rank, table, table_size, ring_node, op1_crow, op1_col, op1_val, op2_crow, op2_col, op2_val, op3_crow, op3_col, op3_val, nnz);
    else
        operators_body(N, L, k, attr, P, pair_node, pair_dist, edge_first, Q, edge_id, edge_src_pair, rank, table, table_size, ring_node, op1_crow, op1_col, op1_val, op2_crow, op2_col, op2_val, op3_crow, op3_col, op3_val, nnz);
}

/*
 * Per-copy sums of outer products (the pooled-sum changes of graph.py's _segment_outer,
 * for factors on the same rows): out[c] (A, B) = sum over rows r of segment c of
 * a[r] (x) b[r], segment c being rows starts[c] <= r < starts[c + 1]; ``a_t`` (A, R) is
 * the left factor transposed, ``b`` (R, B) with rows ``ldb`` floats apart. Each row of b is
 * read once (a sparse product reads it A times). Compiled for AVX-512, AVX2 and the baseline where GCC can choose at
 * load time.
 */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void segment_outer(int64_t C, const int64_t *starts, int64_t A, int64_t R, const float *a_t,
                   int64_t B, const float *b, int64_t ldb, float *out) {
    for (int64_t c = 0; c < C; c++) {
        float *o = out + c * A * B;
        memset(o, 0, sizeof(float) * (size_t)(A * B));
        for (int64_t r = starts[c]; r < starts[c + 1]; r++) {
            const float *br = b + r * ldb;
            for (int64_t al = 0; al < A; al++) {
                const float coef = a_t[al * R + r];
                float *oa = o + al * B;
                for (int64_t x = 0; x < B; x++) oa[x] += coef * br[x];
            }
        }
    }
}

/* The interface version: graph.py uses the library only when it matches its own, so a
 * library left over from an older build is never called with the wrong arguments. */
int occlusion_index_abi(void) { return 8; }

/* Importable as a module, so that Python finds the library where it was installed. */
#if defined(HISTOVIEW_PYTHON_MODULE)
#include <Python.h>
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_occlusion_index",
                                    "C index bookkeeping of the occlusion engine (see ctypes use in graph.py)",
                                    -1, NULL};
PyMODINIT_FUNC PyInit__occlusion_index(void) { return PyModule_Create(&module); }
#endif
