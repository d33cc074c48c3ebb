"""Cases for the CUDA kernels and the paged KV cache."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from strategies.attention import attention_shapes
from strategies.basics import seeds


# Cases for the kernels: lengths past every tile size (v2 tiles 32 x 16/32, v3 64 x 32/64,
# decode 32 keys), head dims that are and are not the padded widths (32/64/128).
KERNEL_HEAD_DIMS = (1, 3, 8, 16, 24, 64, 100, 128)


KERNEL_DTYPES = ("float32", "float16", "bfloat16")


@st.composite
def kernel_attention_cases(draw, *, max_len: int = 80, head_dims=KERNEL_HEAD_DIMS, dtypes=KERNEL_DTYPES):
    """(AttentionShape, causal, alibi, dtype name, seed) for the flash kernels."""
    shape = draw(attention_shapes(max_len=max_len, head_dims=head_dims))
    return shape, draw(st.booleans()), draw(st.booleans()), draw(st.sampled_from(dtypes)), draw(seeds())


def encode_dtype(x, dtype: str):
    """(array to pass to a kernel, the float64 values it holds, dtype= argument) for a dtype name."""
    from tinytransformer.cuda import from_bfloat16_bits, to_bfloat16_bits

    if dtype == "bfloat16":
        bits = to_bfloat16_bits(x)
        return bits, from_bfloat16_bits(bits).astype(np.float64), "bfloat16"
    stored = np.asarray(x).astype(dtype)
    return stored, stored.astype(np.float64), None


@dataclass(frozen=True)
class PagedCase:
    n_kv_heads: int
    group: int  # G = Hq / Hkv
    head_dim: int
    block_size: int
    lengths: tuple  # context length of each sequence (counting the q_len new tokens)
    q_len: int  # T: new tokens per sequence (1 = plain decoding, more = speculative verification)
    interleave: bool  # append the sequences' chunks in a shuffled order (scattered block tables)
    decoy: bool  # a sequence that grows alongside and is freed, leaving holes in the free list
    seed: int


@st.composite
def paged_cases(draw, *, max_len: int = 70, max_batch: int = 3, head_dims=(1, 4, 8, 32, 50, 64, 128)):
    lengths = tuple(draw(st.lists(st.integers(1, max_len), min_size=1, max_size=max_batch)))
    return PagedCase(
        n_kv_heads=draw(st.integers(1, 2)),
        group=draw(st.sampled_from((1, 2, 3, 4, 8))),
        head_dim=draw(st.sampled_from(head_dims)),
        block_size=draw(st.sampled_from((1, 3, 4, 16))),
        lengths=lengths,
        q_len=draw(st.integers(1, 3)),
        interleave=draw(st.booleans()),
        decoy=draw(st.booleans()),
        seed=draw(seeds()),
    )


def build_paged_cache(case: PagedCase, dtype=np.float64):
    """Fill a one-layer PagedKVCache as a server would, in chunks, interleaved or not.

    Returns (cache, seq_ids, ks, vs): ks[b] and vs[b] are the contiguous [Hkv, L_b, D]
    arrays that were appended, the independent oracle for what the cache must hold.
    """
    from tinytransformer.paged_cache import PagedKVCache

    rng = np.random.default_rng(case.seed)
    Hkv, D, bs = case.n_kv_heads, case.head_dim, case.block_size
    ks = [rng.standard_normal((Hkv, L, D)).astype(dtype) for L in case.lengths]  # the data depends on
    vs = [rng.standard_normal((Hkv, L, D)).astype(dtype) for L in case.lengths]  # the seed alone, not the layout
    lengths = list(case.lengths)
    if case.decoy:
        lengths.append(int(rng.integers(1, 40)))
        ks.append(np.zeros((Hkv, lengths[-1], D), dtype=dtype))
        vs.append(np.zeros((Hkv, lengths[-1], D), dtype=dtype))
    need = sum(-(-L // bs) for L in lengths)
    cache = PagedKVCache(1, Hkv, D, n_blocks=need + 1, block_size=bs, dtype=dtype)
    ids = [cache.add_sequence() for _ in lengths]
    chunks = []  # (sequence index, start, stop), in order within each sequence
    for s, L in enumerate(lengths):
        start = 0
        while start < L:
            stop = min(L, start + int(rng.integers(1, 6)))
            chunks.append((s, start, stop))
            start = stop
    if case.interleave:  # a random merge that keeps each sequence's chunks in order
        keys = rng.random(len(chunks))
        order = sorted(range(len(chunks)), key=lambda c: (keys[c], chunks[c][1]))
        per_seq = {s: [c for c in chunks if c[0] == s] for s in range(len(lengths))}
        chunks = [per_seq[chunks[c][0]].pop(0) for c in order]
    for s, start, stop in chunks:
        cache.append(ids[s], ks[s][:, start:stop], vs[s][:, start:stop])
    if case.decoy:
        cache.free(ids.pop())
        ks.pop(), vs.pop()
    return cache, ids, ks, vs
