"""Paged KV cache: keys and values in fixed-size blocks, found through a block table.

A server decodes many sequences at once, and each one's KV cache grows by one
position per step until the sequence stops, at a length nobody knows in
advance. The contiguous cache of `kv_cache` reserves max_seq_len positions for
every sequence up front; most of that reservation is never used, and the
memory it holds cannot serve another request. PagedAttention (Kwon et al.,
2023, "Efficient Memory Management for Large Language Model Serving with
PagedAttention", the vLLM paper) borrows the operating system's answer to the
same problem, virtual memory with pages:

    pool       one big array of n_blocks blocks, each holding block_size positions
    free list  the blocks nobody owns
    block table, per sequence: logical block b -> physical block table[b]

    position p of a sequence lives in block table[p // block_size], slot p % block_size

A sequence takes a new block only when its last one is full, so the waste is
less than one block per sequence (against max_seq_len - length for the
contiguous cache), and a finished sequence returns its blocks at once. The
same memory therefore holds several times more sequences, which is the batch
size, which is the throughput of a server.

Layout: k_pool and v_pool are [n_layers, n_blocks, Hkv, block_size, D]; one
layer's pool [n_blocks, Hkv, block_size, D] is what the decode kernel reads.
Attention keeps the [B, H, T, D] convention: q is [B, Hq, T, D] with T the
new tokens of each sequence (1 in plain decoding, a few when verifying a
speculative draft), end-aligned: query t of sequence b sits at position
context_lens[b] - T + t.

    >>> import numpy as np
    >>> cache = PagedKVCache(n_layers=1, n_kv_heads=1, head_dim=2, n_blocks=4, block_size=2)
    >>> a, b = cache.add_sequence(), cache.add_sequence()
    >>> cache.append(a, np.ones((1, 3, 2)), np.ones((1, 3, 2))).tolist()   # 3 positions: 2 blocks
    [0, 1, 2]
    >>> cache.append(b, np.ones((1, 1, 2)), np.ones((1, 1, 2))).tolist()   # 1 position: 1 block
    [0]
    >>> tables, lengths = cache.batch([a, b])
    >>> tables.tolist(), lengths.tolist(), cache.n_free_blocks
    ([[0, 1], [2, -1]], [3, 1], 1)

Does not handle: sharing blocks between sequences (prefix caching, beam search
with copy-on-write), swapping blocks to host memory, eviction policies,
quantised blocks.
"""
from __future__ import annotations

import numpy as np

from tinytransformer._validate import positive_int
from tinytransformer.attention import scaled_dot_product_attention

__all__ = ["PagedKVCache", "CacheFullError", "paged_decode_attention", "check_paged_decode_inputs"]


class CacheFullError(RuntimeError):
    """Raised when an allocation needs more blocks than the free list holds."""


class PagedKVCache:
    """A block pool, a free list and one block table per sequence.

    n_layers, n_kv_heads (Hkv), head_dim (D): the model's cache geometry.
    n_blocks: blocks in the pool; block_size: positions per block.
    The pool is allocated once: 2 * n_layers * n_blocks * Hkv * block_size * D elements.
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, *, n_blocks: int,
                 block_size: int = 16, dtype=np.float32):
        self.n_layers = positive_int(n_layers, "n_layers")
        self.n_kv_heads = positive_int(n_kv_heads, "n_kv_heads")
        self.head_dim = positive_int(head_dim, "head_dim")
        self.n_blocks = positive_int(n_blocks, "n_blocks")
        self.block_size = positive_int(block_size, "block_size")
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype: expected a floating-point dtype, got {self.dtype}")
        shape = (self.n_layers, self.n_blocks, self.n_kv_heads, self.block_size, self.head_dim)
        self.k_pool = np.zeros(shape, dtype=self.dtype)  # [L, n_blocks, Hkv, block_size, D]
        self.v_pool = np.zeros(shape, dtype=self.dtype)
        # Pop from the end; reversed so that the first allocation takes block 0.
        self._free = list(range(self.n_blocks - 1, -1, -1))
        self._tables: dict[int, list[int]] = {}
        self._lengths: dict[int, int] = {}
        self._next_id = 0

    # --- bookkeeping -----------------------------------------------------------------

    @property
    def n_free_blocks(self) -> int:
        return len(self._free)

    @property
    def block_bytes(self) -> int:
        """Bytes of one block, K and V, all layers."""
        return 2 * self.n_layers * self.n_kv_heads * self.block_size * self.head_dim * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.k_pool.nbytes + self.v_pool.nbytes

    def sequences(self) -> list[int]:
        return list(self._tables)

    def length(self, seq_id: int) -> int:
        return self._lengths[self._known(seq_id)]

    def block_table(self, seq_id: int) -> list[int]:
        return list(self._tables[self._known(seq_id)])

    def wasted_slots(self) -> int:
        """Allocated positions not (yet) holding a token: the internal fragmentation."""
        return sum(len(t) * self.block_size - self._lengths[s] for s, t in self._tables.items())

    # --- allocation ------------------------------------------------------------------

    def add_sequence(self) -> int:
        """Start an empty sequence (no blocks yet) and return its id."""
        seq_id = self._next_id
        self._next_id += 1
        self._tables[seq_id] = []
        self._lengths[seq_id] = 0
        return seq_id

    def extend(self, seq_id: int, n_tokens: int) -> np.ndarray:
        """Grow a sequence by n_tokens positions, taking blocks from the free list.

        Returns the new positions. All or nothing: on CacheFullError nothing changed.
        """
        seq_id = self._known(seq_id)
        n_tokens = positive_int(n_tokens, "n_tokens")
        old = self._lengths[seq_id]
        table = self._tables[seq_id]
        need = -(-(old + n_tokens) // self.block_size) - len(table)  # ceil(new_len / bs) - owned
        if need > len(self._free):
            raise CacheFullError(
                f"paged cache is full: sequence {seq_id} needs {need} more blocks for {n_tokens} tokens "
                f"but only {len(self._free)} of {self.n_blocks} are free; free a finished sequence first"
            )
        table.extend(self._free.pop() for _ in range(need))
        self._lengths[seq_id] = old + n_tokens
        return np.arange(old, old + n_tokens)

    def free(self, seq_id: int) -> None:
        """Forget a sequence and return its blocks to the free list."""
        seq_id = self._known(seq_id)
        self._free.extend(reversed(self._tables.pop(seq_id)))
        del self._lengths[seq_id]

    # --- data ------------------------------------------------------------------------

    def write(self, layer: int, seq_id: int, positions, k, v) -> None:
        """Store k, v [Hkv, n, D] of one layer at the given positions (already extended)."""
        seq_id = self._known(seq_id)
        layer = self._layer(layer)
        positions = np.asarray(positions)
        if positions.ndim != 1 or positions.dtype.kind not in "iu":
            raise ValueError(f"positions: expected a 1-D integer array, got dtype {positions.dtype} "
                             f"shape {positions.shape}")
        n = positions.shape[0]
        length = self._lengths[seq_id]
        if n and (positions.min() < 0 or positions.max() >= length):
            raise ValueError(f"positions: expected values in [0, {length}) for sequence {seq_id} "
                             f"(call extend first), got {positions.tolist()}")
        expected = (self.n_kv_heads, n, self.head_dim)
        for name, x in (("k", k), ("v", v)):
            if np.shape(x) != expected:
                raise ValueError(f"{name}: expected shape [Hkv, n, D] = {list(expected)}, got {np.shape(x)}")
        table = np.asarray(self._tables[seq_id])
        blocks = table[positions // self.block_size]  # physical block of each position, [n]
        slots = positions % self.block_size  # slot inside that block, [n]
        # pool[layer][block, :, slot, :] is [Hkv, D]; fancy indexing puts n first: [n, Hkv, D]
        self.k_pool[layer, blocks, :, slots, :] = np.swapaxes(np.asarray(k), 0, 1)
        self.v_pool[layer, blocks, :, slots, :] = np.swapaxes(np.asarray(v), 0, 1)

    def append(self, seq_id: int, k, v) -> np.ndarray:
        """extend + write for a one-layer cache: k, v [Hkv, n, D]. Returns the positions."""
        if self.n_layers != 1:
            raise ValueError(f"append writes a single layer but this cache has n_layers={self.n_layers}; "
                             "call extend() once per step, then write() for each layer")
        n = np.shape(k)[1] if np.ndim(k) == 3 else 0
        if n < 1:
            raise ValueError(f"k: expected shape [Hkv, n, D] with n >= 1, got {np.shape(k)}")
        positions = self.extend(seq_id, n)
        try:
            self.write(0, seq_id, positions, k, v)
        except ValueError:
            self._shrink(seq_id, n)
            raise
        return positions

    def gather(self, layer: int, seq_id: int):
        """Contiguous copies k, v [Hkv, length, D] of one sequence (what the table points at)."""
        seq_id = self._known(seq_id)
        layer = self._layer(layer)
        positions = np.arange(self._lengths[seq_id])
        blocks = np.asarray(self._tables[seq_id], dtype=np.int64)[positions // self.block_size]
        slots = positions % self.block_size
        k = self.k_pool[layer, blocks, :, slots, :]  # [length, Hkv, D]
        v = self.v_pool[layer, blocks, :, slots, :]
        return np.swapaxes(k, 0, 1), np.swapaxes(v, 0, 1)  # [Hkv, length, D]

    def batch(self, seq_ids):
        """(block_tables [B, max_blocks] int32 padded with -1, context_lens [B] int32) for a decode step."""
        seq_ids = [self._known(s) for s in seq_ids]
        if not seq_ids:
            raise ValueError("seq_ids: expected at least one sequence id, got none")
        width = max(1, max(len(self._tables[s]) for s in seq_ids))
        tables = np.full((len(seq_ids), width), -1, dtype=np.int32)
        for row, s in enumerate(seq_ids):
            tables[row, : len(self._tables[s])] = self._tables[s]
        lengths = np.array([self._lengths[s] for s in seq_ids], dtype=np.int32)
        return tables, lengths

    # --- helpers ---------------------------------------------------------------------

    def _known(self, seq_id) -> int:
        if isinstance(seq_id, (bool, np.bool_)) or not isinstance(seq_id, (int, np.integer)) \
                or int(seq_id) not in self._tables:
            raise KeyError(f"seq_id: no live sequence {seq_id!r}; live ids are {sorted(self._tables)}")
        return int(seq_id)

    def _layer(self, layer) -> int:
        if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)) \
                or not 0 <= layer < self.n_layers:
            raise ValueError(f"layer: expected an integer in [0, {self.n_layers}), got {layer!r}")
        return int(layer)

    def _shrink(self, seq_id: int, n: int) -> None:
        self._lengths[seq_id] -= n
        keep = -(-self._lengths[seq_id] // self.block_size)
        table = self._tables[seq_id]
        while len(table) > keep:
            self._free.append(table.pop())


def check_paged_decode_inputs(q, k_pool, v_pool, block_tables, context_lens, alibi_slopes=None):
    """Validate the arguments of a paged decode; returns (B, Hq, T, D, Hkv, block_size).

    Shared by the NumPy reference and the CUDA launcher so that both reject the
    same inputs with the same messages. Works on anything with .shape/.dtype;
    block_tables and context_lens must be host (NumPy) integer arrays.
    """
    for name, x in (("q", q), ("k_pool", k_pool), ("v_pool", v_pool)):
        if len(x.shape) != 4:
            what = "[B, Hq, T, D]" if name == "q" else "[n_blocks, Hkv, block_size, D]"
            raise ValueError(f"{name}: expected rank 4 {what}, got shape {tuple(x.shape)}")
    B, Hq, T, D = q.shape
    n_blocks, Hkv, block_size, Dk = k_pool.shape
    if tuple(v_pool.shape) != tuple(k_pool.shape):
        raise ValueError(f"v_pool: expected the shape of k_pool {tuple(k_pool.shape)}, got {tuple(v_pool.shape)}")
    if Dk != D:
        raise ValueError(f"k_pool: head dim {Dk} does not match q's head dim {D}")
    if Hq % Hkv:
        raise ValueError(f"q has {Hq} heads but k_pool has {Hkv}; n_heads must be a multiple of n_kv_heads")
    block_tables, context_lens = np.asarray(block_tables), np.asarray(context_lens)
    if block_tables.ndim != 2 or block_tables.shape[0] != B or block_tables.dtype.kind not in "iu":
        raise ValueError(f"block_tables: expected an integer array [B={B}, max_blocks], got dtype "
                         f"{block_tables.dtype} shape {block_tables.shape}")
    if context_lens.shape != (B,) or context_lens.dtype.kind not in "iu":
        raise ValueError(f"context_lens: expected an integer array [B={B}], got dtype {context_lens.dtype} "
                         f"shape {context_lens.shape}")
    capacity = block_tables.shape[1] * block_size
    if B and (context_lens.min() < 1 or context_lens.max() > capacity):
        raise ValueError(f"context_lens: expected values in [1, max_blocks * block_size = {capacity}], "
                         f"got {context_lens.tolist()}")
    for b in range(B):
        used = block_tables[b, : -(-int(context_lens[b]) // block_size)]
        if used.size and (used.min() < 0 or used.max() >= n_blocks):
            raise ValueError(f"block_tables: row {b} uses blocks {used.tolist()}, expected ids in "
                             f"[0, n_blocks={n_blocks}) for its {int(context_lens[b])} positions")
    if alibi_slopes is not None and tuple(np.shape(alibi_slopes)) != (Hq,):
        raise ValueError(f"alibi_slopes: expected shape [Hq] = [{Hq}], got {tuple(np.shape(alibi_slopes))}")
    return B, Hq, T, D, Hkv, block_size


def paged_decode_attention(q, k_pool, v_pool, block_tables, context_lens, *, causal=True, scale=None,
                           alibi_slopes=None):
    """Attention of T new query tokens per sequence over that sequence's paged cache.

    q [B, Hq, T, D]; k_pool, v_pool [n_blocks, Hkv, block_size, D] (one layer);
    block_tables [B, max_blocks] int; context_lens [B] int, counting the new tokens.
    Query t of sequence b sits at position p = context_lens[b] - T + t; with causal
    it sees keys j <= p. alibi_slopes [Hq] adds slope_h * (j - p) to the scores.
    Returns [B, Hq, T, D], equal to scaled_dot_product_attention on the gathered
    cache (which is exactly how this reference computes it).
    """
    q, k_pool, v_pool = np.asarray(q), np.asarray(k_pool), np.asarray(v_pool)
    B, Hq, T, D, Hkv, block_size = check_paged_decode_inputs(q, k_pool, v_pool, block_tables,
                                                             context_lens, alibi_slopes)
    block_tables, context_lens = np.asarray(block_tables), np.asarray(context_lens)
    out = None
    for b in range(B):
        L = int(context_lens[b])
        positions = np.arange(L)
        blocks = block_tables[b, positions // block_size].astype(np.int64)  # [L]
        slots = positions % block_size
        k = np.swapaxes(k_pool[blocks, :, slots, :], 0, 1)[None]  # [L, Hkv, D] -> [1, Hkv, L, D]
        v = np.swapaxes(v_pool[blocks, :, slots, :], 0, 1)[None]
        bias = None
        if alibi_slopes is not None:
            distance = positions[None, :] - (L - T + np.arange(T))[:, None]  # j - p_t, [T, L]
            bias = np.asarray(alibi_slopes, dtype=np.float64)[:, None, None] * distance  # [Hq, T, L]
        o = scaled_dot_product_attention(q[b:b + 1], k, v, causal=causal, scale=scale, bias=bias)
        if out is None:
            out = np.zeros((B, Hq, T, D), dtype=o.dtype)
        out[b] = o[0]
    return out
