"""The KV cache: keep every layer's keys and values so decoding reads, not recomputes.

A decoder generates one token at a time. Without a cache, step t recomputes the
keys and values of all t previous tokens in every layer: O(t) work per layer per
step, O(n^2) for n tokens. Keys and values of past tokens never change (the
model is causal), so we compute each once, store it, and at each step only
project the new token and attend over the stored ones.

The price is memory, and it is what limits batch size and context in serving:

    bytes = 2 (K and V) * n_layers * n_kv_heads * head_dim * seq_len * batch * bytes_per_elem

GQA/MQA shrink it by n_heads / n_kv_heads: SmolLM2-135M (30 layers, 3 KV heads
of dim 64) needs 2*30*3*64*2 = 23,040 bytes per token in fp16, against 69,120
with 9 full heads.

Layout: one preallocated array per tensor, [n_layers, B, Hkv, max_seq_len, D];
`append` writes the new positions of one layer in place and returns views
[B, Hkv, length, D] (no copy). Positions are absolute: the new tokens of a step
sit at cache.length, cache.length + 1, ...

The model talks to its cache through two calls (`ModelCache`), which the views of
`paged_cache` answer too, so the two are interchangeable under one model:

    positions = cache.new_positions(T)         # [B, T]: where each sequence's T new tokens go
    stored = cache.store(layer, k, v)          # store k, v [B, Hkv, T, D] there; returns what
                                               # attention reads: (k, v) [B, Hkv, S, D] here
    out = attention(q, *stored)                # [B, Hq, T, D], the model's own attention

    >>> import numpy as np
    >>> cache = KVCache(n_layers=1, batch=1, n_kv_heads=1, head_dim=2, max_seq_len=4)
    >>> k, v = cache.append(0, np.ones((1, 1, 3, 2)), np.ones((1, 1, 3, 2)))
    >>> k.shape, cache.length
    ((1, 1, 3, 2), 3)

Does not handle: sequences of different lengths in one batch (all rows share
one length; see `paged_cache` for ragged batches and block allocation),
eviction or sliding-window truncation, quantised caches.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from tinytransformer._validate import integer, is_integer, positive_int

__all__ = ["KVCache", "kv_cache_bytes", "ModelCache", "available_memory_bytes", "check_paged_cache_memory"]


class ModelCache(Protocol):
    """What the model asks of a cache in a forward pass (`model.TinyTransformer.hidden_states`).

    A contiguous `KVCache` answers, and so do the paged cache's views (`paged_cache.PagedBatch`,
    `PackedBatch`), whose `store` returns a `paged_attention.PagedKeys` instead of arrays.
    """

    batch: int  # B, the rows of the ids the model is given

    def new_positions(self, n_new: int, limit: int | None = None) -> np.ndarray:
        """The absolute positions [B, n_new] of the step's new tokens (limit: the context length)."""

    def store(self, layer: int, k_new, v_new):
        """Store one layer's new keys and values [B, Hkv, T, D]; return what attention reads:
        (k, v) [B, Hkv, S, D] over every position held, or where they lie in a paged pool."""


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int, batch: int = 1,
                   bytes_per_elem: int = 2) -> int:
    """2 (K and V) * n_layers * n_kv_heads * head_dim * seq_len * batch * bytes_per_elem."""
    args = dict(n_layers=n_layers, n_kv_heads=n_kv_heads, head_dim=head_dim, seq_len=seq_len,
                batch=batch, bytes_per_elem=bytes_per_elem)
    n = 2
    for name, value in args.items():
        n *= positive_int(value, name)
    return n


def available_memory_bytes() -> int | None:
    """Memory this machine can still give without swapping: /proc/meminfo's MemAvailable (Linux), else
    free pages x page size (os.sysconf), else None (unknown)."""
    import os

    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_paged_cache_memory(config, n_blocks: int, block_size: int, *, dtype=np.float32,
                             available: int | None = None, option: str = "--blocks") -> int:
    """The paged KV cache's bytes for config (n_layers, kv_heads, head_dim), n_blocks blocks of block_size
    positions: 2 * n_layers * n_blocks * Hkv * block_size * D * itemsize. ValueError naming `option` and both
    numbers if that exceeds `available` (default: available_memory_bytes(); unknown memory is not checked).

    >>> from types import SimpleNamespace
    >>> config = SimpleNamespace(n_layers=30, kv_heads=3, head_dim=64)  # SmolLM2-135M's cache
    >>> check_paged_cache_memory(config, 256, 16, available=10**9)
    188743680
    >>> check_paged_cache_memory(config, 32768, 16, available=10**9, option="--max-seqs")
    Traceback (most recent call last):
    ...
    ValueError: --max-seqs: the paged KV cache needs 24.16 GB (32768 blocks of 16 positions), but only 1.00 GB of memory is available; give a smaller --max-seqs
    """
    n_blocks, block_size = positive_int(n_blocks, "n_blocks"), positive_int(block_size, "block_size")
    needed = kv_cache_bytes(config.n_layers, config.kv_heads, config.head_dim, seq_len=n_blocks * block_size,
                            bytes_per_elem=np.dtype(dtype).itemsize)
    if available is None:
        available = available_memory_bytes()
    if available is not None and needed > available:
        raise ValueError(f"{option}: the paged KV cache needs {needed / 1e9:.2f} GB ({n_blocks} blocks of "
                         f"{block_size} positions), but only {available / 1e9:.2f} GB of memory is available; "
                         f"give a smaller {option}")
    return needed


class KVCache:
    """Preallocated keys and values for every layer: k, v [n_layers, B, Hkv, max_seq_len, D]."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int, max_seq_len: int,
                 dtype=np.float32):
        self.n_layers = positive_int(n_layers, "n_layers")
        self.batch = positive_int(batch, "batch")
        self.n_kv_heads = positive_int(n_kv_heads, "n_kv_heads")
        self.head_dim = positive_int(head_dim, "head_dim")
        self.max_seq_len = positive_int(max_seq_len, "max_seq_len")
        self.dtype = np.dtype(dtype)
        shape = (self.n_layers, self.batch, self.n_kv_heads, self.max_seq_len, self.head_dim)
        self.k = np.zeros(shape, dtype=self.dtype)
        self.v = np.zeros(shape, dtype=self.dtype)
        self._lengths = np.zeros(self.n_layers, dtype=np.int64)  # positions stored per layer

    @property
    def length(self) -> int:
        """Positions stored in every layer: the absolute position of the next token.

        During a forward pass the layers fill one after another, so for a moment
        the first layers hold more; `layer_length(i)` gives one layer's count.
        """
        return int(self._lengths.min())

    def layer_length(self, layer: int) -> int:
        """Positions stored in one layer."""
        return int(self._lengths[self._layer(layer)])

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def append(self, layer: int, k_new, v_new):
        """Store k_new, v_new [B, Hkv, T, D] after layer `layer`'s cached positions.

        Returns views (k, v) [B, Hkv, length + T, D] of everything that layer holds.
        """
        layer = self._layer(layer)
        k_new, v_new = np.asarray(k_new), np.asarray(v_new)
        expected = (self.batch, self.n_kv_heads, self.head_dim)
        for name, x in (("k_new", k_new), ("v_new", v_new)):
            if x.ndim != 4 or (x.shape[0], x.shape[1], x.shape[3]) != expected:
                raise ValueError(
                    f"{name}: expected shape [B={self.batch}, Hkv={self.n_kv_heads}, T, D={self.head_dim}], "
                    f"got {x.shape}"
                )
        if k_new.shape != v_new.shape:
            raise ValueError(f"k_new and v_new must have the same shape, got {k_new.shape} and {v_new.shape}")
        start = int(self._lengths[layer])
        end = start + k_new.shape[2]
        if end > self.max_seq_len:
            raise ValueError(
                f"KV cache overflow: layer {layer} holds {start} of max_seq_len={self.max_seq_len} "
                f"positions and cannot take {k_new.shape[2]} more"
            )
        self.k[layer, :, :, start:end] = k_new  # write in place: [B, Hkv, T, D]
        self.v[layer, :, :, start:end] = v_new
        self._lengths[layer] = end
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # views [B, Hkv, end, D]

    def keys(self, layer: int) -> np.ndarray:
        layer = self._layer(layer)
        return self.k[layer, :, :, : self._lengths[layer]]  # [B, Hkv, length, D]

    def values(self, layer: int) -> np.ndarray:
        layer = self._layer(layer)
        return self.v[layer, :, :, : self._lengths[layer]]  # [B, Hkv, length, D]

    # --- the cache protocol of the model (ModelCache) ---------------------------------

    def new_positions(self, n_new: int, limit: int | None = None) -> np.ndarray:
        """The positions [B, n_new] of n_new tokens per sequence, after what the cache holds.

        limit: positions must stay below it (the model's context length).
        """
        n_new = positive_int(n_new, "n_new")
        start = self.length
        if limit is not None and start + n_new > limit:
            raise ValueError(f"ids: positions {start}..{start + n_new - 1} exceed max_seq_len={limit}")
        if start + n_new > self.max_seq_len:
            raise ValueError(f"KV cache overflow: the cache holds {start} of max_seq_len={self.max_seq_len} "
                             f"positions and cannot take {n_new} more")
        return np.broadcast_to(np.arange(start, start + n_new), (self.batch, n_new))  # every row alike

    def store(self, layer: int, k_new, v_new):
        """append: the new keys and values of `layer`; returns views (k, v) [B, Hkv, S, D] of all it holds."""
        return self.append(layer, k_new, v_new)

    def _layer(self, layer) -> int:
        if not is_integer(layer) or not 0 <= layer < self.n_layers:
            raise ValueError(f"layer: expected an integer in [0, {self.n_layers}), got {layer!r}")
        return int(layer)

    def truncate(self, length: int) -> None:
        """Forget positions >= length in every layer (to rewind, e.g. after rejected draft tokens)."""
        self._lengths[:] = integer(length, "length", low=0, high=self.length)

    def reset(self) -> None:
        self._lengths[:] = 0

    def __repr__(self) -> str:
        lengths = self._lengths.tolist()
        length = f"{self.length}" if len(set(lengths)) == 1 else f"{self.length} (per layer {lengths})"
        return (f"KVCache(n_layers={self.n_layers}, batch={self.batch}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, length={length}/{self.max_seq_len}, dtype={self.dtype}, "
                f"nbytes={self.nbytes:,})")
