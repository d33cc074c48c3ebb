"""The CUDA kernels equal the NumPy references: one test body per law, parametrised over backends.

Backends are ("numpy", version None) and ("cuda", version 1, 2, 3) for flash attention,
("numpy",) and ("cuda", 1, 2) for paged decode. The cuda cases skip, with the reason,
where CuPy or a GPU is missing; the numpy cases and the argument checks run everywhere.
The planted-bug tests build deliberately broken kernels and assert that the same laws
reject them (GPU only).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies import (AttentionShape, PagedCase, build_paged_cache, encode_dtype, kernel_attention_cases,
                        paged_cases, random_qkv)
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
DECODE_BACKENDS = [_backend("numpy", None), _backend("cuda", 1), _backend("cuda", 2)]


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
    """out equals softmax(q k^T / sqrt(D) + alibi, causal) v; lse equals the reference log-sum-exp."""
    q, k, v = random_qkv(shape, seed, np.float64)
    (qx, q64, dt), (kx, k64, _), (vx, v64, _) = (encode_dtype(x, dtype) for x in (q, k, v))
    slopes = alibi_slopes(shape.n_heads) if alibi else None
    out, lse = cuda.flash_attention(qx, kx, vx, causal=causal, alibi_slopes=slopes, return_lse=True,
                                    backend=backend, version=version, dtype=dt, defines=defines)
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
@pytest.mark.parametrize("version", [1, 2])
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
    (lambda: cuda.flash_attention(*_qkv(Hq=7, Hkv=2)), "q has 7 heads but k has 2; n_heads must be a multiple"),
    (lambda: cuda.flash_attention(*_qkv()[:2], _qkv(S=6)[2]), r"v: expected the shape of k \(1, 2, 5, 8\)"),
    (lambda: cuda.flash_attention(*_qkv(dtype=np.float64)), "q: expected float32, float16 or bfloat16"),
    (lambda: cuda.flash_attention(*_qkv(dtype=np.float16), version=2), "q: flash v2 takes float32, got float16"),
    (lambda: cuda.flash_attention(*_qkv(), version=3), "q: flash v3 takes float16 or bfloat16, got float32"),
    (lambda: cuda.flash_attention(*_qkv(D=160)), r"q: expected a head dim <= 128 .* got 160"),
    (lambda: cuda.flash_attention(*_qkv(), version=4), r"version: expected one of \(1, 2, 3\), got 4"),
    (lambda: cuda.flash_attention(*_qkv(), alibi_slopes=np.ones(3)), r"alibi_slopes: expected shape \[Hq\] = \[4\]"),
    (lambda: cuda.flash_attention(*(x.view(np.uint16) for x in _qkv(dtype=np.float16))),
     "uint16 arrays are read as bfloat16 only with dtype='bfloat16'"),
    (lambda: cuda.flash_attention(*_qkv(), dtype="bfloat16"), "dtype='bfloat16' expects uint16 arrays"),
    (lambda: cuda.flash_attention(*_qkv(), backend="torch"), r"backend: expected one of \('numpy', 'cuda'\)"),
    (lambda: cuda.flash_attention(*_qkv(), scale=float("nan")), "scale: expected a finite number"),
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
    with pytest.raises(ValueError, match=r"version: expected one of \(1, 2\), got 3"):
        cuda.paged_decode_attention(q[..., :64], cache.k_pool[0][..., :64].copy(), cache.v_pool[0][..., :64].copy(),
                                    tables, lengths, version=3)
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


# --- the benchmark's own arithmetic, and its behaviour without a GPU --------------------


def test_benchmark_counts_flops_and_bytes_the_usual_way():
    from tinytransformer.bench.attention import attention_flops, decode_bytes, decode_configs, prefill_configs

    assert attention_flops(4, 16, 4096, 4096, 128, False) == 4 * 4 * 16 * 4096 * 4096 * 128
    assert attention_flops(4, 16, 4096, 4096, 128, True) == 2 * 4 * 16 * 4096 * 4096 * 128
    assert decode_bytes(8, 8, 16384, 128, 2) == 2 * 8 * 8 * 16384 * 128 * 2
    configs = prefill_configs()
    assert {c["T"] for c in configs} == {512, 1024, 2048, 4096, 8192, 16384}
    assert {(c["Hq"], c["Hkv"]) for c in configs} == {(16, 16), (16, 4)}
    assert all(4 <= c["B"] <= 16 for c in configs)
    assert max(c["L"] for c in decode_configs()) == 16384


@pytest.mark.skipif(GPU_OK, reason="this machine has a CUDA backend; the message is for machines without one")
def test_bench_attention_without_a_gpu_exits_nonzero_with_the_reason(capsys):
    from tinytransformer.bench.attention import main

    assert main([]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU and CuPy" in err and "Nothing was measured" in err
