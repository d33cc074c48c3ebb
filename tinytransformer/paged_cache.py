"""Paged KV cache: keys and values in fixed-size blocks, found through a block table.

A server decodes many sequences, each growing to a length nobody knows in advance;
reserving max_seq_len positions for each (`kv_cache`) wastes most of the memory.
PagedAttention (Kwon et al., 2023, the vLLM paper) borrows virtual memory's answer:
a pool of blocks of block_size positions, a free list, and per sequence a block
table from logical to physical block. A sequence takes a block only when its last
one is full, so it wastes less than one, and gives its blocks back when it ends.

    position p of a sequence lives in block table[p // block_size], slot p % block_size

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

`BlockManager` is the bookkeeping, `PagedKVCache` the storage, `PagedBatch` the
model's view, with queries [B, H, T, D] (docs/09_cuda_kernels.md tells how they fit;
the attention over the pool is in `paged_attention`),
and `PackedBatch` a view for a step whose sequences bring different numbers of
new tokens (a prefill beside decodes), packed into one row of one forward.

One writer takes blocks: whoever plans the step (the serving scheduler) allocates
them before the forward (`allocate`); a view only claims positions inside the
blocks a sequence holds, and refuses a sequence whose blocks have no room:

    cache.allocate(s, T)                                  # before the step: blocks for T more tokens
    model.hidden_states(ids [1, T], cache.view([s]))      # the forward writes into them

Does not handle: sharing blocks between sequences (prefix caching, beam search
with copy-on-write), swapping blocks to host memory, eviction, quantised blocks.
"""
from __future__ import annotations

import numpy as np

from tinytransformer._validate import integer, is_integer, positive_int
from tinytransformer.paged_attention import PagedKeys

__all__ = ["BlockManager", "PagedKVCache", "PagedBatch", "PackedBatch", "CacheFullError"]


class CacheFullError(RuntimeError):
    """Raised when an allocation needs more blocks than the free list holds."""


class BlockManager:
    """The bookkeeping of a paged cache: a free list, and a block table and a length per sequence.

    It owns no tensors; it says where each position lives. Invariant: every
    block is either free or owned by exactly one sequence.
    """

    def __init__(self, n_blocks: int, block_size: int):
        self.n_blocks = positive_int(n_blocks, "n_blocks")
        self.block_size = positive_int(block_size, "block_size")
        self._free = list(range(self.n_blocks - 1, -1, -1))  # pop from the end: block 0 goes first
        self._tables: dict[int, list[int]] = {}
        self._lengths: dict[int, int] = {}
        self._next_id = 0

    @property
    def n_free_blocks(self) -> int:
        return len(self._free)

    def sequences(self) -> list[int]:
        return list(self._tables)

    def length(self, seq_id: int) -> int:
        return self._lengths[self._known(seq_id)]

    def block_table(self, seq_id: int) -> list[int]:
        return list(self._tables[self._known(seq_id)])

    def blocks_needed(self, seq_id: int, n_tokens: int) -> int:
        """Free blocks that growing seq_id by n_tokens would take: ceil(new_len / bs) - owned."""
        seq_id = self._known(seq_id)
        return max(0, -(-(self._lengths[seq_id] + n_tokens) // self.block_size) - len(self._tables[seq_id]))

    def wasted_slots(self) -> int:
        """Allocated positions not (yet) holding a token: the internal fragmentation."""
        return sum(len(t) * self.block_size - self._lengths[s] for s, t in self._tables.items())

    def add_sequence(self) -> int:
        """Start an empty sequence (no blocks yet) and return its id."""
        seq_id = self._next_id
        self._next_id += 1
        self._tables[seq_id], self._lengths[seq_id] = [], 0
        return seq_id

    def room(self, seq_id: int) -> int:
        """Positions the blocks of seq_id can still take: len(table) * block_size - length."""
        seq_id = self._known(seq_id)
        return len(self._tables[seq_id]) * self.block_size - self._lengths[seq_id]

    def allocate(self, seq_id: int, n_tokens: int) -> None:
        """Take the blocks that n_tokens more positions of seq_id need, all or nothing (CacheFullError).
        The length does not change: the step that writes the positions claims them (`claim`)."""
        n_tokens = positive_int(n_tokens, "n_tokens")
        need = self.blocks_needed(seq_id, n_tokens)
        if need > len(self._free):
            raise CacheFullError(
                f"paged cache is full: sequence {seq_id} needs {need} more blocks for {n_tokens} tokens "
                f"but only {len(self._free)} of {self.n_blocks} are free; free a finished sequence first")
        self._tables[seq_id].extend(self._free.pop() for _ in range(need))

    def check_room(self, seq_id: int, n_tokens: int) -> None:
        """ValueError unless the blocks seq_id holds can take n_tokens more positions."""
        if n_tokens > self.room(seq_id):
            raise ValueError(f"seq_ids: sequence {seq_id} has room for {self.room(seq_id)} more positions in its "
                             f"blocks, but the step brings {n_tokens}; allocate its blocks before the forward "
                             "(PagedKVCache.allocate; the serving scheduler does)")

    def claim(self, seq_id: int, n_tokens: int) -> np.ndarray:
        """Grow seq_id by n_tokens positions inside the blocks it holds (it takes none); returns them."""
        self.check_room(seq_id, positive_int(n_tokens, "n_tokens"))
        old = self._lengths[seq_id]
        self._lengths[seq_id] = old + n_tokens
        return np.arange(old, old + n_tokens)

    def extend(self, seq_id: int, n_tokens: int) -> np.ndarray:
        """allocate, then claim: grow a sequence by n_tokens positions (all or nothing); returns them."""
        self.allocate(seq_id, n_tokens)
        return self.claim(seq_id, n_tokens)

    def truncate(self, seq_id: int, length: int) -> None:
        """Forget positions >= length (a rewind, e.g. past rejected draft tokens); frees emptied blocks."""
        seq_id = self._known(seq_id)
        length = integer(length, "length", low=0, high=self._lengths[seq_id])
        self._lengths[seq_id] = length
        table = self._tables[seq_id]
        keep = -(-length // self.block_size)
        while len(table) > keep:
            self._free.append(table.pop())

    def free(self, seq_id: int) -> None:
        """Forget a sequence and return its blocks to the free list."""
        seq_id = self._known(seq_id)
        self._free.extend(reversed(self._tables.pop(seq_id)))
        del self._lengths[seq_id]

    def slots(self, seq_id: int, positions) -> tuple[np.ndarray, np.ndarray]:
        """(physical block, slot in block) of each position of seq_id: both [n]."""
        table = np.asarray(self._tables[self._known(seq_id)], dtype=np.int64)
        positions = np.asarray(positions)
        return table[positions // self.block_size], positions % self.block_size

    def batch(self, seq_ids):
        """(block_tables [B, max_blocks] int32 padded with -1, context_lens [B] int32) for a step."""
        seq_ids = [self._known(s) for s in seq_ids]
        if not seq_ids:
            raise ValueError("seq_ids: expected at least one sequence id, got none")
        width = max(1, max(len(self._tables[s]) for s in seq_ids))
        tables = np.full((len(seq_ids), width), -1, dtype=np.int32)
        for row, s in enumerate(seq_ids):
            tables[row, : len(self._tables[s])] = self._tables[s]
        lengths = np.array([self._lengths[s] for s in seq_ids], dtype=np.int32)
        return tables, lengths

    def _known(self, seq_id) -> int:
        if not is_integer(seq_id) or int(seq_id) not in self._tables:
            raise KeyError(f"seq_id: no live sequence {seq_id!r}; live ids are {sorted(self._tables)}")
        return int(seq_id)


class PagedKVCache:
    """The storage: k_pool, v_pool [n_layers, n_blocks, Hkv, block_size, D], managed by `.blocks`.

    n_layers, n_kv_heads (Hkv), head_dim (D): the model's cache geometry.
    n_blocks: blocks in the pool; block_size: positions per block.
    The pool is allocated once: 2 * n_layers * n_blocks * Hkv * block_size * D elements.
    The bookkeeping calls (add_sequence, allocate, extend, free, length, ...) pass through to `.blocks`.
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, *, n_blocks: int,
                 block_size: int = 16, dtype=np.float32):
        self.n_layers = positive_int(n_layers, "n_layers")
        self.n_kv_heads = positive_int(n_kv_heads, "n_kv_heads")
        self.head_dim = positive_int(head_dim, "head_dim")
        self.blocks = BlockManager(n_blocks, block_size)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype: expected a floating-point dtype, got {self.dtype}")
        shape = (self.n_layers, self.n_blocks, self.n_kv_heads, self.block_size, self.head_dim)
        self.k_pool = np.zeros(shape, dtype=self.dtype)  # [L, n_blocks, Hkv, block_size, D]
        self.v_pool = np.zeros(shape, dtype=self.dtype)

    # --- bookkeeping, delegated to the block manager -----------------------------------

    n_blocks = property(lambda self: self.blocks.n_blocks)
    block_size = property(lambda self: self.blocks.block_size)
    n_free_blocks = property(lambda self: self.blocks.n_free_blocks)

    def add_sequence(self) -> int:
        return self.blocks.add_sequence()

    def allocate(self, seq_id: int, n_tokens: int) -> None:
        self.blocks.allocate(seq_id, n_tokens)

    def extend(self, seq_id: int, n_tokens: int) -> np.ndarray:
        return self.blocks.extend(seq_id, n_tokens)

    def free(self, seq_id: int) -> None:
        self.blocks.free(seq_id)

    def truncate(self, seq_id: int, length: int) -> None:
        self.blocks.truncate(seq_id, length)

    def sequences(self) -> list[int]:
        return self.blocks.sequences()

    def length(self, seq_id: int) -> int:
        return self.blocks.length(seq_id)

    def block_table(self, seq_id: int) -> list[int]:
        return self.blocks.block_table(seq_id)

    def batch(self, seq_ids):
        return self.blocks.batch(seq_ids)

    def wasted_slots(self) -> int:
        return self.blocks.wasted_slots()

    @property
    def block_bytes(self) -> int:
        """Bytes of one block, K and V, all layers."""
        return 2 * self.n_layers * self.n_kv_heads * self.block_size * self.head_dim * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.k_pool.nbytes + self.v_pool.nbytes

    # --- data ------------------------------------------------------------------------

    def write(self, layer: int, seq_id: int, positions, k, v) -> None:
        """Store k, v [Hkv, n, D] of one layer at the given positions (already extended)."""
        layer = self._layer(layer)
        positions = np.asarray(positions)
        if positions.ndim != 1 or positions.dtype.kind not in "iu":
            raise ValueError(f"positions: expected a 1-D integer array, got dtype {positions.dtype} "
                             f"shape {positions.shape}")
        n, length = positions.shape[0], self.blocks.length(seq_id)
        if n and (positions.min() < 0 or positions.max() >= length):
            raise ValueError(f"positions: expected values in [0, {length}) for sequence {seq_id} "
                             f"(call extend first), got {positions.tolist()}")
        expected = (self.n_kv_heads, n, self.head_dim)
        for name, x in (("k", k), ("v", v)):
            if np.shape(x) != expected:
                raise ValueError(f"{name}: expected shape [Hkv, n, D] = {list(expected)}, got {np.shape(x)}")
        blocks, slots = self.blocks.slots(seq_id, positions)  # [n] each
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
            self.truncate(seq_id, int(positions[0]))
            raise
        return positions

    def gather(self, layer: int, seq_id: int):
        """Contiguous copies k, v [Hkv, length, D] of one sequence (what the table points at)."""
        layer = self._layer(layer)
        blocks, slots = self.blocks.slots(seq_id, np.arange(self.blocks.length(seq_id)))
        k = self.k_pool[layer, blocks, :, slots, :]  # [length, Hkv, D]
        v = self.v_pool[layer, blocks, :, slots, :]
        return np.swapaxes(k, 0, 1), np.swapaxes(v, 0, 1)  # [Hkv, length, D]

    def view(self, seq_ids) -> "PagedBatch":
        """The sequences seq_ids as one batch, with the model's cache protocol (new_positions, store)."""
        return PagedBatch(self, seq_ids)

    def packed_view(self, seq_ids, n_new) -> "PackedBatch":
        """The sequences seq_ids, bringing n_new[i] new tokens each, packed into one row (see PackedBatch)."""
        return PackedBatch(self, seq_ids, n_new)

    def _layer(self, layer) -> int:
        if not is_integer(layer) or not 0 <= layer < self.n_layers:
            raise ValueError(f"layer: expected an integer in [0, {self.n_layers}), got {layer!r}")
        return int(layer)

    def __repr__(self) -> str:
        return (f"PagedKVCache(n_layers={self.n_layers}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
                f"blocks {self.n_blocks - self.n_free_blocks}/{self.n_blocks} used of {self.block_size} positions, "
                f"{len(self.sequences())} sequences, dtype={self.dtype}, nbytes={self.nbytes:,})")


class PagedBatch:
    """A ragged batch of sequences of one PagedKVCache, seen through the model's cache protocol.

    `PagedKVCache.view(seq_ids)` makes one, so the model decodes a ragged batch through
    the same protocol (`kv_cache.ModelCache`) as the contiguous `kv_cache`. Queries keep
    the [B, H, T, D] convention, end-aligned: query t of sequence b sits at position
    context_lens[b] - T + t.

        positions = batch.new_positions(T)   # [B, T]: each sequence claims T positions in its blocks
        stored = batch.store(layer, k, v)    # write k, v [B, Hkv, T, D]; a paged_attention.PagedKeys

    The model's attention then reads the pool through the tables (`attention.paged`:
    the NumPy reference `paged_decode_attention`, or the CUDA decode kernel).
    """

    def __init__(self, cache: PagedKVCache, seq_ids):
        self.cache = cache
        self.seq_ids = [cache.blocks._known(s) for s in seq_ids]
        if not self.seq_ids:
            raise ValueError("seq_ids: expected at least one sequence id, got none")
        self._positions = None

    @property
    def batch(self) -> int:
        return len(self.seq_ids)

    def new_positions(self, n_new: int, limit: int | None = None) -> np.ndarray:
        """Claim n_new positions in every sequence's blocks (all or none); returns them [B, n_new].

        limit: positions must stay below it (the model's context length).
        """
        n_new = positive_int(n_new, "n_new")
        blocks = self.cache.blocks
        longest = max(blocks.length(s) for s in self.seq_ids)
        if limit is not None and longest + n_new > limit:
            raise ValueError(f"ids: positions up to {longest + n_new - 1} exceed max_seq_len={limit}")
        flat, self._tables, self._lengths, self._blocks, self._slots = _claim(blocks, self.seq_ids,
                                                                              [n_new] * self.batch)
        self._positions = flat.reshape(self.batch, n_new)  # [B, n_new]
        return self._positions

    def store(self, layer: int, k_new, v_new) -> PagedKeys:
        """Store k_new, v_new [B, Hkv, T, D] at the claimed positions; returns where the layer's keys lie."""
        if self._positions is None or self._positions.shape[1] != np.shape(k_new)[2]:
            raise ValueError(f"k_new: expected the {0 if self._positions is None else self._positions.shape[1]} "
                             f"positions claimed for this step, got shape {np.shape(k_new)}; call new_positions first")
        (B, T), Hkv, D = self._positions.shape, self.cache.n_kv_heads, self.cache.head_dim
        for name, x in (("k_new", k_new), ("v_new", v_new)):
            if np.shape(x) != (B, Hkv, T, D):
                raise ValueError(f"{name}: expected shape [B, Hkv, T, D] = {[B, Hkv, T, D]}, got {np.shape(x)}")
        layer = self.cache._layer(layer)
        _write_rows(self.cache, layer, self._blocks, self._slots, k_new, v_new)
        return PagedKeys(self.cache.k_pool[layer], self.cache.v_pool[layer], self._tables, self._lengths)


def _claim(blocks: BlockManager, seq_ids, counts):
    """Claim counts[i] positions in the blocks of sequence seq_ids[i], all or none (ValueError if one
    has no room: blocks are allocated before the step, never here). Returns (positions [N],
    block_tables, context_lens, and where each new position lives, (block, slot) [N] each, for
    every layer's write), N = sum(counts), in sequence order."""
    for s, n in zip(seq_ids, counts):  # every sequence first: all or none
        blocks.check_room(s, n)
    positions = np.concatenate([blocks.claim(s, n) for s, n in zip(seq_ids, counts)])  # [N]
    tables, lengths = blocks.batch(seq_ids)
    rows = np.repeat(np.arange(len(seq_ids)), counts)  # [N]: the sequence of each new position
    where = tables[rows, positions // blocks.block_size].astype(np.int64)
    return positions, tables, lengths, where, positions % blocks.block_size


def _write_rows(cache, layer: int, blocks, slots, k_new, v_new) -> None:
    """Store k_new, v_new [B, Hkv, T, D] of one layer at (blocks, slots) [B * T], row-major over (b, t)."""
    B, Hkv, T, D = np.shape(k_new)
    # every position in one assignment (PagedKVCache.write does one sequence):
    # pool[layer][block, :, slot, :] is [Hkv, D]; the fancy index puts the B * T positions first
    cache.k_pool[layer, blocks, :, slots, :] = np.swapaxes(k_new, 1, 2).reshape(B * T, Hkv, D)
    cache.v_pool[layer, blocks, :, slots, :] = np.swapaxes(v_new, 1, 2).reshape(B * T, Hkv, D)


class PackedBatch:
    """Sequences that bring different numbers of new tokens, packed into one row of the model's batch.

    A server's step mixes a prefill of n tokens for a new request with one token for each
    decoding request. The model's batch is rectangular [B, T], so these would be several
    forwards, each reading every weight. Packed, they are one: vLLM's flattening.

        view = cache.packed_view([a, b, c], n_new=[5, 1, 1])   # 7 new tokens in all
        model.hidden_states(ids [1, 7], view)                  # a's 5 tokens, then b's, then c's

    To the model this is a batch of one sequence of N = sum(n_new) tokens: every
    projection, norm and FFN is per row and does not care whose row it is. Only
    the positions and attention do: new_positions gives each token its own sequence's
    position, and store puts each sequence's keys and values in its own blocks and
    returns a PagedKeys with the counts, so that attention
    (`paged_attention.packed_paged_attention`) runs once for each group of sequences
    that bring the same number of tokens (every decoding request in one call), each
    query end-aligned to its sequence as in PagedBatch.

    row_ends: the row of each sequence's last new token (where its next token is read).
    """

    batch = 1  # the model sees one packed row

    def __init__(self, cache: PagedKVCache, seq_ids, n_new):
        self.cache = cache
        self.seq_ids = [cache.blocks._known(s) for s in seq_ids]
        if not self.seq_ids:
            raise ValueError("seq_ids: expected at least one sequence id, got none")
        if len(set(self.seq_ids)) != len(self.seq_ids):
            raise ValueError(f"seq_ids: expected distinct sequence ids, got {self.seq_ids}")
        if np.ndim(n_new) != 1 or len(n_new) != len(self.seq_ids):
            raise ValueError(f"n_new: expected one count per sequence ({len(self.seq_ids)}), got {n_new!r}")
        self.n_new = [positive_int(n, f"n_new[{i}]") for i, n in enumerate(n_new)]
        self.row_ends = np.cumsum(self.n_new) - 1  # [B]
        self._positions = None

    def new_positions(self, n_new: int, limit: int | None = None) -> np.ndarray:
        """Claim n_new[i] positions in sequence i's blocks (all or none); n_new here is their sum N.
        Returns the positions of the packed row [1, N]; limit as in PagedBatch.new_positions."""
        N = sum(self.n_new)
        if n_new != N:
            raise ValueError(f"ids: expected the {N} tokens packed in this view ({self.n_new}), got {n_new}")
        blocks = self.cache.blocks
        if limit is not None:
            for s, n in zip(self.seq_ids, self.n_new):
                if blocks.length(s) + n > limit:
                    raise ValueError(f"ids: positions up to {blocks.length(s) + n - 1} of sequence {s} exceed "
                                     f"max_seq_len={limit}")
        self._positions, self._tables, self._lengths, self._blocks, self._slots = _claim(blocks, self.seq_ids,
                                                                                         self.n_new)
        return self._positions[None]  # [1, N]

    def store(self, layer: int, k_new, v_new) -> PagedKeys:
        """Store k_new, v_new [1, Hkv, N, D]; returns where the layer's keys lie, with each sequence's count."""
        if self._positions is None:
            raise ValueError("k_new: no positions claimed for this step; call new_positions first")
        N, Hkv, D = len(self._positions), self.cache.n_kv_heads, self.cache.head_dim
        for name, x in (("k_new", k_new), ("v_new", v_new)):
            if np.shape(x) != (1, Hkv, N, D):
                raise ValueError(f"{name}: expected shape [1, Hkv, N, D] = {[1, Hkv, N, D]}, got {np.shape(x)}")
        layer = self.cache._layer(layer)
        _write_rows(self.cache, layer, self._blocks, self._slots, k_new, v_new)
        return PagedKeys(self.cache.k_pool[layer], self.cache.v_pool[layer], self._tables, self._lengths,
                         counts=tuple(self.n_new))
