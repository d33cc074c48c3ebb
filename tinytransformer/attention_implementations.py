"""The attention a model runs, by name: the swappable part of the decoder.

Every implementation computes the same function, softmax(q k^T / sqrt(D) + bias) v
(`attention`), and a model gives the same logits with any of them. What differs
is how, and a model needs it in two shapes: over contiguous keys (no cache, or a
`KVCache`), and over a paged cache, whose keys lie in blocks of a pool
(`paged_attention`). So each name is a pair:

    name              contiguous keys [B, Hkv, S, D]         a paged batch (block tables)
    "sdpa"            the reference                          the reference: gather, then sdpa, per sequence
    "flash"           flash attention (tiles, online softmax) the same gather, then flash, per sequence
    "cuda"            the CUDA flash kernel                  the CUDA paged-decode kernel
    "sdpa-inlined"    the equation inlined (no checks, no    the equation inlined, per sequence, no padding
                      masks built: `attention.scaled_dot_product_attention_fast`)
    "sdpa-padded"     the equation inlined, as above         every sequence gathered into one padded batch,
                                                             masked, one call for the whole batch

A model may also take any function f(q, k, v, *, causal, scale, alibi_slopes)
(it then reads a paged cache through the reference's gather). `ModelAttention`
binds one implementation to a model: its causality (False for an encoder) and
its ALiBi slopes, and long causal prefills go in blocks of query rows.

    >>> import numpy as np
    >>> attention = ModelAttention("sdpa-inlined")
    >>> q = k = v = np.ones((1, 2, 3, 4))
    >>> attention(q, k, v).shape                          # [B, Hq, T, D]
    (1, 2, 3, 4)

Does not handle: choosing an implementation by itself (by shape or device),
sliding-window or block-sparse attention.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

from tinytransformer.attention import (causal_attention_in_query_blocks, scaled_dot_product_attention,
                                       scaled_dot_product_attention_fast)
from tinytransformer.flash import flash_attention
from tinytransformer.paged_attention import (PagedKeys, packed_paged_attention, paged_decode_attention,
                                             paged_decode_attention_batched, paged_decode_attention_fast)

__all__ = ["ATTENTION_IMPLEMENTATIONS", "ModelAttention", "QUERY_BLOCK"]

QUERY_BLOCK = 128  # query rows per attention call during a causal prefill (see causal_attention_in_query_blocks)


def cuda_flash_attention(q, k, v, *, causal=False, scale=None, alibi_slopes=None):
    """The CUDA flash kernel (`cuda.flash_attention`); NumPy arrays go to the GPU and back on every call."""
    from tinytransformer import cuda

    return cuda.flash_attention(q, k, v, causal=causal, scale=scale, alibi_slopes=alibi_slopes)


def cuda_paged_decode_attention(q, k_pool, v_pool, block_tables, context_lens, *, causal=True, scale=None,
                                alibi_slopes=None):
    """The CUDA paged-decode kernel (`cuda.paged_decode_attention`), with paged_decode_attention's arguments."""
    from tinytransformer import cuda

    return cuda.paged_decode_attention(q, k_pool, v_pool, block_tables, context_lens, causal=causal, scale=scale,
                                       alibi_slopes=alibi_slopes)


# name -> (attention over contiguous keys, attention over a paged cache)
ATTENTION_IMPLEMENTATIONS: dict[str, tuple[Callable, Callable]] = {
    "sdpa": (scaled_dot_product_attention, paged_decode_attention),
    "flash": (flash_attention, functools.partial(paged_decode_attention, attention=flash_attention)),
    "cuda": (cuda_flash_attention, cuda_paged_decode_attention),
    "sdpa-inlined": (scaled_dot_product_attention_fast, paged_decode_attention_fast),
    "sdpa-padded": (scaled_dot_product_attention_fast, paged_decode_attention_batched),
}


class ModelAttention:
    """The attention one model runs: an implementation bound to the model's causality and ALiBi slopes.

    implementation: a name of ATTENTION_IMPLEMENTATIONS, or a function f(q, k, v, *, causal,
    scale, alibi_slopes). causal=False (an encoder) attends over every key, in one call.

    attention(q, k, v)          over contiguous keys (no cache, or a KVCache), in blocks
                                of query_block query rows during a causal prefill;
    attention.paged(q, k_pool, v_pool, block_tables, context_lens)   over a paged cache;
    attention.over_cache(q, stored)  over what a cache's store returned: (k, v), or a
                                `paged_attention.PagedKeys` (a packed step: group by group).
    """

    def __init__(self, implementation="sdpa", *, alibi_slopes=None, query_block: int | None = QUERY_BLOCK,
                 causal: bool = True):
        self.implementation = implementation
        self.causal = causal
        if callable(implementation):
            self.name = getattr(implementation, "__name__", "custom")
            self.function = implementation
            self.paged_function = functools.partial(paged_decode_attention, attention=implementation)
        elif implementation in ATTENTION_IMPLEMENTATIONS:
            self.name = implementation
            self.function, self.paged_function = ATTENTION_IMPLEMENTATIONS[implementation]
        else:
            raise ValueError(f"attention: expected one of {sorted(ATTENTION_IMPLEMENTATIONS)} or a function "
                             f"f(q, k, v, *, causal, scale, alibi_slopes), got {implementation!r}")
        self.alibi_slopes = alibi_slopes
        self.query_block = query_block

    def __call__(self, q, k, v):
        if self.query_block is None or not self.causal:
            return self.function(q, k, v, causal=self.causal, alibi_slopes=self.alibi_slopes)
        return causal_attention_in_query_blocks(self.function, q, k, v, block=self.query_block,
                                                alibi_slopes=self.alibi_slopes)

    def paged(self, q, k_pool, v_pool, block_tables, context_lens):
        return self.paged_function(q, k_pool, v_pool, block_tables, context_lens, causal=True,
                                   alibi_slopes=self.alibi_slopes)

    def over_cache(self, q, stored):
        """Attention of q [B, Hq, T, D] over what a cache stored: (k, v) arrays, or a PagedKeys."""
        if not isinstance(stored, PagedKeys):
            return self(q, *stored)
        if stored.counts is None:
            return self.paged(q, stored.k_pool, stored.v_pool, stored.block_tables, stored.context_lens)
        return packed_paged_attention(self.paged, q, stored)

    def __repr__(self) -> str:
        return f"ModelAttention({self.name!r}{', ALiBi' if self.alibi_slopes is not None else ''})"
