"""The CUDA kernels equal the NumPy references: one test body per law, parametrised over backends.

Backends are ("numpy", version None) and ("cuda", version 1, 2, 3) for flash attention,
("numpy",) and ("cuda", 1, 2, 3) for paged decode. The cuda cases skip, with the reason,
where CuPy or a GPU is missing; the numpy cases and the argument checks run everywhere.
The planted-bug tests build deliberately broken kernels and assert that the same laws
reject them (GPU, or the CPU emulation of tests/test_cuda_emulated.py).
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.attention import AttentionShape, random_qkv
from strategies.kernels import PagedCase, build_paged_cache, encode_dtype, kernel_attention_cases, paged_cases
from tinytransformer import cuda
from tinytransformer.attention import scaled_dot_product_attention
from tinytransformer.flash import flash_attention_with_lse as numpy_flash_with_lse
from tinytransformer.positional import alibi_bias, alibi_slopes
from tinytransformer.testing import assert_close, tolerance

GPU_OK, GPU_WHY = cuda.cuda_status()
needs_gpu = pytest.mark.skipif(not GPU_OK, reason=f"no CUDA backend here: {GPU_WHY}")


def _backend(name, version):
    marks = [needs_gpu, pytest.mark.gpu] if name == "cuda" else []
    return pytest.param(name, version, marks=marks, id=f"{name}-v{version}" if version else name)


FLASH_BACKENDS = [_backend("numpy", None), _backend("cuda", 1), _backend("cuda", 2), _backend("cuda", 3)]
DECODE_BACKENDS = [_backend("numpy", None), *(_backend("cuda", v) for v in cuda.DECODE_VERSIONS)]


def flash_dtypes(backend, version):
    if backend == "numpy":
        return ("float32", "float16", "bfloat16")
    return ("float32",) if version in (1, 2) else ("float16", "bfloat16")


# --- the laws, as plain functions (the planted-bug tests reuse them) -------------------


def _atol(dtype, n_heads, length, alibi):
    """The table's atol, widened for ALiBi: a bias of size slope * distance carries that many
    times the rounding error of the scores into exp(), so the tolerance grows with it."""
    span = alibi_slopes(n_heads).max() * length if alibi else 0.0
    return tolerance(dtype)[1] * (1.0 + span)


def check_flash_law(shape, causal, alibi, dtype, seed, *, backend, version, defines=()):
    """out equals softmax(q k^T / sqrt(D) + alibi, causal) v, in the input's storage dtype;
    lse equals the reference log-sum-exp."""
    q, k, v = random_qkv(shape, seed, np.float64)
    (qx, q64, dt), (kx, k64, _), (vx, v64, _) = (encode_dtype(x, dtype) for x in (q, k, v))
    slopes = alibi_slopes(shape.n_heads) if alibi else None
    out, lse = cuda.flash_attention_with_lse(qx, kx, vx, causal=causal, alibi_slopes=slopes, backend=backend,
                                             version=version, dtype=dt, defines=defines)
    assert out.dtype == qx.dtype and out.shape == qx.shape, (out.dtype, out.shape)
    if dtype == "bfloat16":
        out = cuda.from_bfloat16_bits(np.asarray(out))
    bias = alibi_bias(shape.n_heads, shape.q_len, shape.kv_len) if alibi else None
    expected = scaled_dot_product_attention(q64, k64, v64, causal=causal, bias=bias)
    _, expected_lse = numpy_flash_with_lse(q64, k64, v64, causal=causal, alibi_slopes=slopes)
    atol = _atol(dtype, shape.n_heads, max(shape.q_len, shape.kv_len), alibi)
    assert_close(out, expected, dtype=dtype, atol=atol, err_msg="attention output")
    seen = np.isfinite(expected_lse)
    np.testing.assert_array_equal(np.isfinite(lse), seen, err_msg="rows that see no key must have lse = -inf")
    assert_close(np.asarray(lse)[seen], expected_lse[seen], dtype=dtype, atol=atol, err_msg="log-sum-exp")


def check_decode_law(case, causal, alibi, dtype, *, backend, version, split_len=None, defines=()):
    """Decode over the paged cache equals attention over each sequence's contiguous K/V."""
    cache, ids, ks, vs = build_paged_cache(case)
    tables, lengths = cache.batch(ids)
    Hq = case.n_kv_heads * case.group
    q = np.random.default_rng(case.seed + 1).standard_normal((len(ids), Hq, case.q_len, case.head_dim))
    (qx, q64, dt), (kx, _, _), (vx, _, _) = (encode_dtype(x, dtype) for x in (q, cache.k_pool[0], cache.v_pool[0]))
    slopes = alibi_slopes(Hq) if alibi else None
    kwargs = dict(causal=causal, alibi_slopes=slopes, backend=backend, dtype=dt)
    if backend == "cuda":
        kwargs.update(version=version, split_len=split_len, defines=defines)
    out = cuda.paged_decode_attention(qx, kx, vx, tables, lengths, **kwargs)
    assert out.dtype == qx.dtype and out.shape == qx.shape, (out.dtype, out.shape)
    if dtype == "bfloat16":
        out = cuda.from_bfloat16_bits(np.asarray(out))
    expected = []
    for b in range(len(ids)):
        _, k64, _ = encode_dtype(ks[b], dtype)
        _, v64, _ = encode_dtype(vs[b], dtype)
        bias = alibi_bias(Hq, case.q_len, ks[b].shape[1]) if alibi else None
        expected.append(scaled_dot_product_attention(q64[b:b + 1], k64[None], v64[None], causal=causal, bias=bias)[0])
    atol = _atol(dtype, Hq, max(case.lengths), alibi)
    assert_close(out, np.stack(expected), dtype=dtype, atol=atol, err_msg="paged decode output")


# --- flash attention -----------------------------------------------------------------


@pytest.mark.parametrize("backend, version", FLASH_BACKENDS)
@given(data=st.data())
def test_flash_attention_equals_reference_attention(backend, version, data):
    shape, causal, alibi, dtype, seed = data.draw(kernel_attention_cases(dtypes=flash_dtypes(backend, version)))
    check_flash_law(shape, causal, alibi, dtype, seed, backend=backend, version=version)


@pytest.mark.parametrize("backend, version", FLASH_BACKENDS)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_flash_attention_equals_reference_at_the_tuned_head_dims(backend, version, head_dim):
    dtype = flash_dtypes(backend, version)[0]
    shape = AttentionShape(batch=2, n_heads=8, n_kv_heads=2, q_len=130, kv_len=200, head_dim=head_dim)
    for causal in (False, True):
        check_flash_law(shape, causal, True, dtype, 7, backend=backend, version=version)


@pytest.mark.parametrize("backend, version", FLASH_BACKENDS)
def test_flash_attention_is_the_output_of_flash_attention_with_lse(backend, version):
    dtype = flash_dtypes(backend, version)[-1]
    shape = AttentionShape(batch=1, n_heads=2, n_kv_heads=1, q_len=9, kv_len=11, head_dim=16)
    (qx, _, dt), (kx, _, _), (vx, _, _) = (encode_dtype(x, dtype) for x in random_qkv(shape, 1, np.float64))
    kwargs = dict(causal=True, backend=backend, version=version, dtype=dt)
    out = cuda.flash_attention(qx, kx, vx, **kwargs)
    np.testing.assert_array_equal(out, cuda.flash_attention_with_lse(qx, kx, vx, **kwargs)[0])
    assert out.dtype == qx.dtype


@pytest.mark.parametrize("backend, version", FLASH_BACKENDS)
def test_flash_rows_that_see_no_key_give_zeros_and_minus_inf_lse(backend, version):
    """Causal with T > S: the first T - S query rows have no visible key."""
    dtype = flash_dtypes(backend, version)[0]
    shape = AttentionShape(batch=1, n_heads=2, n_kv_heads=1, q_len=40, kv_len=5, head_dim=16)
    check_flash_law(shape, True, False, dtype, 3, backend=backend, version=version)


# --- paged decode --------------------------------------------------------------------


@pytest.mark.parametrize("backend, version", DECODE_BACKENDS)
@given(case=paged_cases(), causal=st.booleans(), alibi=st.booleans(),
       dtype=st.sampled_from(("float32", "float16", "bfloat16")), split_len=st.sampled_from((None, 32, 64)))
def test_paged_decode_equals_attention_over_the_contiguous_cache(backend, version, case, causal, alibi, dtype,
                                                                 split_len):
    check_decode_law(case, causal, alibi, dtype, backend=backend, version=version, split_len=split_len)


@pytest.mark.parametrize("backend, version", DECODE_BACKENDS)
def test_paged_decode_long_ragged_contexts_with_many_splits(backend, version):
    case = PagedCase(n_kv_heads=2, group=4, head_dim=128, block_size=16, lengths=(1000, 37, 513), q_len=2,
                     interleave=True, decoy=True, seed=11)
    check_decode_law(case, True, False, "float16", backend=backend, version=version, split_len=64)


def _zeros(shape, dtype):
    return encode_dtype(np.zeros(shape), dtype)[0]


@pytest.mark.parametrize("backend", ["numpy", "cuda"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_paged_decode_of_an_empty_batch_is_empty_in_the_input_dtype(backend, dtype):
    """B = 0: an empty [0, Hq, T, D] of the input's storage dtype, on any machine (nothing is launched)."""
    q, pool = _zeros((0, 4, 1, 64), dtype), _zeros((3, 2, 4, 64), dtype)
    out = cuda.paged_decode_attention(q, pool, pool, np.zeros((0, 2), np.int32), np.zeros((0,), np.int32),
                                      backend=backend, dtype="bfloat16" if dtype == "bfloat16" else None)
    assert out.shape == (0, 4, 1, 64) and out.dtype == q.dtype


@pytest.mark.parametrize("backend, empty", [("numpy", "B"), ("numpy", "T"),
                                            ("cuda", "B"), ("cuda", "T")])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_flash_of_an_empty_batch_is_empty_in_the_input_dtype(backend, empty, dtype):
    """B = 0 or T = 0: out [B, Hq, T, D] in the input's storage dtype, lse [B, Hq, T]; nothing is launched."""
    B, T = (0, 3) if empty == "B" else (2, 0)
    q, kv = _zeros((B, 4, T, 64), dtype), _zeros((B, 2, 5, 64), dtype)
    out, lse = cuda.flash_attention_with_lse(q, kv, kv, backend=backend, version=2 if dtype == "float32" else 3,
                                             dtype="bfloat16" if dtype == "bfloat16" else None)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == q.shape[:3]


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("version", cuda.DECODE_VERSIONS)
def test_paged_decode_without_table_checks_gives_the_same_output(version):
    """check_tables=False (no host copy per call, for timing loops) changes nothing for valid tables."""
    case = PagedCase(n_kv_heads=2, group=2, head_dim=64, block_size=4, lengths=(90, 7), q_len=1,
                     interleave=True, decoy=True, seed=4)
    cache, ids, _, _ = build_paged_cache(case, dtype=np.float32)
    tables, lengths = cache.batch(ids)
    q = np.random.default_rng(0).standard_normal((2, 4, 1, 64)).astype(np.float32)
    outs = [cuda.paged_decode_attention(q, cache.k_pool[0], cache.v_pool[0], tables, lengths, version=version,
                                        check_tables=check) for check in (True, False)]
    np.testing.assert_array_equal(outs[0], outs[1])


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("version", cuda.DECODE_VERSIONS)
def test_paged_decode_reads_strided_index_arrays_by_their_values(version):
    """Views that are not C-contiguous (a table cut from a wider one, every other length or slope)
    give the result of their contiguous copies: the launcher hands the kernel C-order copies."""
    cupy = cuda.require_cuda()
    case = PagedCase(n_kv_heads=1, group=2, head_dim=64, block_size=4, lengths=(9, 5, 13), q_len=1,
                     interleave=True, decoy=True, seed=6)
    cache, ids, _, _ = build_paged_cache(case, dtype=np.float32)
    tables, lengths = cache.batch(ids)
    B, width = tables.shape
    wide = np.zeros((B, width + 3), np.int32)  # the extra columns name block 0: valid, but wrong
    wide[:, :width] = tables
    slopes = alibi_slopes(2).astype(np.float32)
    q = np.random.default_rng(0).standard_normal((B, 2, 1, 64)).astype(np.float32)
    expected = cuda.paged_decode_attention(q, cache.k_pool[0], cache.v_pool[0], tables, lengths,
                                           alibi_slopes=slopes, backend="numpy")
    strided_tables = cupy.asarray(wide)[:, :width]
    strided_lengths = cupy.asarray(np.stack([lengths, np.ones_like(lengths)], axis=1))[:, 0]
    strided_slopes = cupy.asarray(np.repeat(slopes, 2))[::2]
    assert not (strided_tables.flags["C_CONTIGUOUS"] or strided_lengths.flags["C_CONTIGUOUS"]
                or strided_slopes.flags["C_CONTIGUOUS"])
    out = cuda.paged_decode_attention(cupy.asarray(q), cupy.asarray(cache.k_pool[0]), cupy.asarray(cache.v_pool[0]),
                                      strided_tables, strided_lengths, alibi_slopes=strided_slopes, version=version,
                                      split_len=32)
    assert_close(out.get(), expected, dtype="float32", err_msg="decode with strided index arrays")


@needs_gpu
@pytest.mark.gpu
def test_flash_reads_strided_slopes_by_their_values_and_rejects_strided_tensors():
    cupy = cuda.require_cuda()
    q, k, v = (cupy.asarray(x) for x in _qkv(Hq=4, Hkv=2, T=5, S=7, D=16))
    slopes = alibi_slopes(4).astype(np.float32)
    expected = cuda.flash_attention(q.get(), k.get(), v.get(), alibi_slopes=slopes, backend="numpy")
    out = cuda.flash_attention(q, k, v, alibi_slopes=cupy.asarray(np.repeat(slopes, 2))[::2], version=2)
    assert_close(out.get(), expected, dtype="float32", err_msg="flash with strided slopes")
    with pytest.raises(ValueError, match=r"k: expected a C-contiguous array.*cupy.ascontiguousarray\(k\)"):
        cuda.flash_attention(q, k[:, :, ::-1], v)


@needs_gpu
@pytest.mark.gpu
def test_model_decodes_a_ragged_batch_through_the_kernels_as_through_numpy(tmp_path):
    """attention="cuda" (prefill through cuda.flash_attention, the batched decode through
    cuda.paged_decode_attention) gives the greedy ids of attention="sdpa", for ragged prompts."""
    from tinytransformer.llama import load_model
    from tinytransformer.random_llama import write_random_llama
    from tinytransformer.serving.engine import generate_batch

    path = write_random_llama(tmp_path / "tiny.gguf", n_layers=1, seed=3)
    prompts = [[5, 70, 33], list(range(40, 51)), [200, 7, 7, 9, 120, 64]]
    want = generate_batch(load_model(path, attention="sdpa").model, prompts, 4, stop_at_eos=False)
    got = generate_batch(load_model(path, attention="cuda").model, prompts, 4, stop_at_eos=False)
    assert got == want


# --- planted bugs: the laws above must reject each broken build ----------------------

PLANTED_FLASH_SHAPE = AttentionShape(batch=1, n_heads=4, n_kv_heads=2, q_len=70, kv_len=150, head_dim=64)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("define", cuda.PLANTED_BUGS)
@pytest.mark.parametrize("version", [1, 2, 3])
def test_planted_bug_in_flash_kernel_is_caught_by_the_law(define, version):
    if define == "PLANTED_BUG_NO_RESCALE" and version == 1:
        pytest.skip("v1 computes the full softmax in three passes: there is no running rescale to drop")
    dtype = "float32" if version < 3 else "float16"
    causal = define == "PLANTED_BUG_CAUSAL_OFF_BY_ONE"
    check_flash_law(PLANTED_FLASH_SHAPE, causal, False, dtype, 5, backend="cuda", version=version)  # correct build
    with pytest.raises(AssertionError):
        check_flash_law(PLANTED_FLASH_SHAPE, causal, False, dtype, 5, backend="cuda", version=version,
                        defines=(define,))


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("define", cuda.PLANTED_BUGS)
@pytest.mark.parametrize("version", cuda.DECODE_VERSIONS)
def test_planted_bug_in_decode_kernel_is_caught_by_the_law(define, version):
    case = PagedCase(n_kv_heads=1, group=2, head_dim=64, block_size=16, lengths=(300, 90), q_len=3,
                     interleave=True, decoy=False, seed=2)
    check_decode_law(case, True, False, "float32", backend="cuda", version=version, split_len=64)
    with pytest.raises(AssertionError):
        check_decode_law(case, True, False, "float32", backend="cuda", version=version, split_len=64,
                         defines=(define,))


# --- argument checks (run everywhere: they come before any GPU work) -----------------


def _qkv(Hq=4, Hkv=2, T=3, S=5, D=8, dtype=np.float32):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((1, Hq, T, D)).astype(dtype), rng.standard_normal((1, Hkv, S, D)).astype(dtype),
            rng.standard_normal((1, Hkv, S, D)).astype(dtype))


@pytest.mark.parametrize("call, message", [
    (lambda: cuda.flash_attention(*_qkv(Hq=7, Hkv=2)), r"k: expected a number of KV heads that divides q's 7 heads"),
    (lambda: cuda.flash_attention(*_qkv()[:2], _qkv(S=6)[2]), r"v: expected \[B, Hkv, S\] = \[1, 2, 5\]"),
    (lambda: cuda.flash_attention(*_qkv()[:2], _qkv(D=4)[2]), r"v: expected head dim 8 \(q's; the kernels need Dv"),
    (lambda: cuda.flash_attention(*_qkv()[:2], _qkv()[2][0]), r"v: expected rank 4 \[B, Hkv, S, Dv\], got shape"),
    (lambda: cuda.flash_attention(*_qkv(dtype=np.float64)), "q: expected float32, float16 or bfloat16"),
    (lambda: cuda.flash_attention(*_qkv(dtype=np.float16), version=2), "q: flash v2 takes float32, got float16"),
    (lambda: cuda.flash_attention(*_qkv(), version=3), "q: flash v3 takes float16 or bfloat16, got float32"),
    (lambda: cuda.flash_attention(*_qkv(D=160)), r"q: expected a head dim <= 128 .* got 160"),
    (lambda: cuda.flash_attention(*_qkv(), version=4), r"version: expected one of \(1, 2, 3\), got 4"),
    (lambda: cuda.flash_attention(*_qkv(), alibi_slopes=np.ones(3)), r"alibi_slopes: expected shape \[Hq\] = \[4\]"),
    (lambda: cuda.flash_attention(*(x.view(np.uint16) for x in _qkv(dtype=np.float16))),
     "q: expected dtype='bfloat16' with uint16 arrays"),
    (lambda: cuda.flash_attention(*_qkv(), dtype="bfloat16"), "q: expected uint16 arrays of bf16 bit patterns"),
    (lambda: cuda.flash_attention(*_qkv(), backend="torch"), r"backend: expected one of \('numpy', 'cuda'\)"),
    (lambda: cuda.flash_attention_with_lse(*_qkv(), backend="torch"), r"backend: expected one of"),
    (lambda: cuda.flash_attention(*_qkv(), scale=float("nan")), "scale: expected a finite real number"),
    (lambda: cuda.flash_attention(*_qkv(), scale=True), "scale: expected a finite real number"),
    (lambda: cuda.flash_attention([[1.0]], *_qkv()[1:]), "q: expected a NumPy or CuPy array, got list"),
])
def test_flash_rejects_bad_arguments_naming_the_argument_before_touching_the_gpu(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_decode_rejects_bad_arguments_naming_the_argument_before_touching_the_gpu():
    case = PagedCase(1, 2, 200, 4, (5,), 1, False, False, 0)
    cache, ids, _, _ = build_paged_cache(case, dtype=np.float32)
    tables, lengths = cache.batch(ids)
    q = np.zeros((1, 2, 1, 200), np.float32)
    with pytest.raises(ValueError, match=r"q: expected a head dim <= 128 \(the kernels are built for 64, 128\)"):
        cuda.paged_decode_attention(q, cache.k_pool[0], cache.v_pool[0], tables, lengths)
    with pytest.raises(ValueError, match=r"version: expected one of \(1, 2, 3\), got 4"):
        cuda.paged_decode_attention(q[..., :64], cache.k_pool[0][..., :64].copy(), cache.v_pool[0][..., :64].copy(),
                                    tables, lengths, version=4)
    with pytest.raises(ValueError, match="k_pool: expected a number of KV heads that divides q.s 2 heads"):
        cuda.paged_decode_attention(q, np.zeros((4, 3, 4, 200), np.float32), np.zeros((4, 3, 4, 200), np.float32),
                                    tables, lengths)


@pytest.mark.skipif(GPU_OK, reason="this machine has a CUDA backend; the error path is for machines without one")
def test_cuda_backend_without_a_gpu_raises_a_readable_error():
    with pytest.raises(cuda.CudaUnavailable, match="the CUDA backend needs CuPy and a GPU: .*backend='numpy'"):
        cuda.flash_attention(*_qkv())
    case = PagedCase(1, 1, 8, 4, (5,), 1, False, False, 0)
    cache, ids, _, _ = build_paged_cache(case, dtype=np.float32)
    with pytest.raises(cuda.CudaUnavailable, match="CuPy"):
        cuda.paged_decode_attention(np.zeros((1, 1, 1, 8), np.float32), cache.k_pool[0], cache.v_pool[0],
                                    *cache.batch(ids))


# --- bfloat16 bits and the budget table ------------------------------------------------


@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=50))
def test_bfloat16_rounding_matches_torch(values):
    torch = pytest.importorskip("torch", reason="torch is the bfloat16 rounding oracle")
    x = np.array(values, dtype=np.float32)
    expected = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(cuda.to_bfloat16_bits(x), expected)


@given(st.lists(st.integers(0, 2**16 - 1), min_size=1, max_size=50))
def test_bfloat16_bits_round_trip_exactly(bits):
    bits = np.array(bits, dtype=np.uint16)
    values = cuda.from_bfloat16_bits(bits)
    finite = np.isfinite(values)
    np.testing.assert_array_equal(cuda.to_bfloat16_bits(values[finite]), bits[finite])


@pytest.mark.parametrize("kernel, head_dim", [("flash_v2", 16), ("flash_v2", 128), ("flash_v3", 64),
                                              ("flash_v3", 128), ("decode", 32), ("decode", 128)])
def test_every_kernel_fits_the_48_kilobyte_static_shared_memory_limit(kernel, head_dim):
    budget = cuda.kernel_budget(kernel, head_dim)
    assert 0 < budget["smem_bytes"] <= 48 * 1024
    assert budget["state_floats"] < 255  # the register file a thread can address


# --- the launchers' range and type checks (issue 26): refused before any launch -------------


def _decode_args(max_blocks=4, block_size=4, Hq=2, D=64, lengths=(5,)):
    pool = np.zeros((2, 1, block_size, D), np.float32)
    tables = np.zeros((len(lengths), max_blocks), np.int32)
    q = np.zeros((len(lengths), Hq, 1, D), np.float32)
    return q, pool, pool.copy(), tables, np.array(lengths, np.int64)


@pytest.mark.parametrize("version", cuda.DECODE_VERSIONS)
@pytest.mark.parametrize("check_tables", [True, False])
def test_decode_refuses_tables_past_the_kernels_int32_positions(version, check_tables):
    """2**31 positions passed every check, then v2/v3's int32 split_begin read out of bounds."""
    message = (r"block_tables: expected max_blocks \* block_size <= 2\*\*30 = 1073741824 positions \(the kernels "
               r"index keys in int32\), got 131072 \* 16384 = 2147483648")
    with pytest.raises(ValueError, match=message):
        cuda.paged_decode_attention(*_decode_args(max_blocks=2**17, block_size=2**14), version=version,
                                    check_tables=check_tables)
    with pytest.raises(ValueError, match=r"block_tables: expected .* got 65537 \* 16384 = 1073758208"):
        cuda.paged_decode_attention(*_decode_args(max_blocks=2**16 + 1, block_size=2**14), version=version)
    # a context length past 2**30 needs such a table: context_lens <= capacity is checked first
    with pytest.raises(ValueError, match=r"block_tables: expected max_blocks \* block_size <= 2\*\*30"):
        cuda.paged_decode_attention(*_decode_args(max_blocks=2**17, block_size=2**14, lengths=(2**31 - 1,)),
                                    version=version, check_tables=False)
    # 2**30 positions exactly still fit
    version_out, _, shape = cuda.check_decode_inputs(*_decode_args(max_blocks=2**16, block_size=2**14),
                                                     version=version, check_tables=check_tables)
    assert version_out == version and shape[5:] == (2**14, 2**16)


@pytest.mark.parametrize("split_len", [2**40, 2**30 + 32, 0, -32, 48, True, 64.0, "64"])
def test_decode_refuses_a_split_len_the_kernels_cannot_take(split_len):
    with pytest.raises(ValueError, match=r"split_len: expected None or a multiple of 32 in \[32, 2\*\*30\], got "):
        cuda.paged_decode_attention(*_decode_args(), version=2, split_len=split_len)


@pytest.mark.parametrize("version", [True, False, 3.0, 1.0, "3", 0])
def test_launchers_refuse_versions_that_are_not_one_of_the_integers(version):
    with pytest.raises(ValueError, match=r"version: expected one of \(1, 2, 3\), got "):
        cuda.paged_decode_attention(*_decode_args(), version=version)
    with pytest.raises(ValueError, match=r"version: expected one of \(1, 2, 3\), got "):
        cuda.flash_attention(*_qkv(), version=version)
    if not isinstance(version, str) and version:
        with pytest.raises(ValueError, match=rf"got {version!r} \(a (bool|float), not an integer\)"):
            cuda.check_decode_inputs(*_decode_args(), version=version)
    assert cuda.check_decode_inputs(*_decode_args(), version=np.int64(2))[0] == 2


@pytest.mark.parametrize("slopes", [np.array(["a", "b"]), ["0.5", "0.25"], np.array([1, 2]), [None, None]])
def test_launchers_refuse_alibi_slopes_that_are_not_a_float_array(slopes):
    with pytest.raises(ValueError, match=r"alibi_slopes: expected None or a floating-point array \[Hq\] = \[2\]"):
        cuda.paged_decode_attention(*_decode_args(), alibi_slopes=slopes)
    with pytest.raises(ValueError, match=r"alibi_slopes: expected None or a floating-point array \[Hq\] = \[2\]"):
        cuda.flash_attention(*_qkv(Hq=2, Hkv=1), alibi_slopes=slopes)
    with pytest.raises(ValueError, match=r"alibi_slopes: expected shape \[Hq\] = \[2\], got \(\)"):
        cuda.flash_attention(*_qkv(Hq=2, Hkv=1), alibi_slopes="abc")
    assert cuda.check_decode_inputs(*_decode_args(), alibi_slopes=[0.5, 0.25])[0] == 3
