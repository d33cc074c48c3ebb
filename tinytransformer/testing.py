"""Tolerances and a comparison helper for checking kernels against our references.

Every comparison in the test suite goes through `assert_close`, and every
tolerance comes from the one table below, keyed by dtype. Other projects that
use tinytransformer as an oracle can import the same helper:

    >>> import numpy as np
    >>> from tinytransformer.testing import assert_close
    >>> assert_close(np.float32(1.0) + np.float32(1e-7), np.float32(1.0))

The tolerances are for one attention-sized computation (a few reductions over
a few thousand terms). A long chain of layers needs a looser bound; say so at
the call site with `rtol=`/`atol=` rather than editing the table.
"""
from __future__ import annotations

import numpy as np

from tinytransformer._validate import nonnegative_float

# dtype name -> (rtol, atol)
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-10, 1e-12),
    "float32": (1e-5, 1e-6),
    "float16": (2e-3, 2e-3),
    "bfloat16": (1.6e-2, 1e-2),
}


def tolerance(dtype) -> tuple[float, float]:
    """(rtol, atol) for a dtype, or for a dtype name such as "bfloat16" (complex: its real part's)."""
    try:
        name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    except TypeError:
        name = repr(dtype)
    name = _REAL_PART.get(name, name)
    if name not in TOLERANCES:
        raise ValueError(f"dtype: expected one of {sorted(TOLERANCES)}, got {name!r}")
    return TOLERANCES[name]


def assert_close(actual, expected, *, dtype=None, rtol=None, atol=None, equal_nan=False, err_msg=""):
    """Assert |actual - expected| <= atol + rtol * |expected| elementwise.

    The shapes must be equal (a scalar broadcasts). dtype defaults to the lower
    precision of the two arrays; rtol/atol given explicitly override the table.
    Complex values are compared as complex numbers (|a - b| is the modulus),
    with the tolerance of their real part's dtype. NaN is close to nothing:
    with equal_nan=True, NaN must sit at exactly the same places in both.
    Infinities must match in place and sign. Arrays from CuPy and tensors from
    torch (any device; bfloat16 too, with bfloat16's tolerance) are moved to the host.
    """
    (actual, actual_precision), (expected, expected_precision) = _to_numpy(actual, "actual"), \
        _to_numpy(expected, "expected")
    if dtype is None:
        precisions = [p for p in (actual_precision, expected_precision) if p is not None]
        dtype = max(precisions, key=lambda p: tolerance(p)[0]) if precisions else "float64"
    table_rtol, table_atol = tolerance(dtype)
    rtol = table_rtol if rtol is None else nonnegative_float(rtol, "rtol")
    atol = table_atol if atol is None else nonnegative_float(atol, "atol")
    kind = np.complex128 if "c" in (actual.dtype.kind, expected.dtype.kind) else np.float64
    np.testing.assert_allclose(actual.astype(kind), expected.astype(kind), rtol=rtol, atol=atol,
                               equal_nan=bool(equal_nan), err_msg=err_msg)


def numerical_gradient(f, arrays, which: int, index, h: float = 1e-6) -> float:
    """Central difference (f(.., x + h e, ..) - f(.., x - h e, ..)) / 2h at one coordinate.

    f maps the list `arrays` (float64) to a scalar; `which` picks the array and
    `index` the coordinate. The error is O(h^2) from the Taylor series plus about
    1e-16 |f| / h from rounding, so with h = 1e-6 expect agreement to ~1e-8 with
    an analytic gradient. The array is restored afterwards.

        >>> round(numerical_gradient(lambda a: float((a[0] ** 2).sum()), [np.array([3.0])], 0, (0,)), 6)
        6.0
    """
    x = arrays[which]
    saved = x[index]
    try:
        x[index] = saved + h
        up = f(arrays)
        x[index] = saved - h
        down = f(arrays)
    finally:
        x[index] = saved
    return (up - down) / (2 * h)


_REAL_PART = {"complex64": "float32", "complex128": "float64"}


def _to_numpy(x, name: str) -> tuple[np.ndarray, str | None]:
    """(x as a NumPy array of exact values, the name of its precision, or None for integers and bools)."""
    module = type(x).__module__
    precision = None
    if module.startswith("cupy") and hasattr(x, "get"):
        x = x.get()
    elif module.startswith("torch") and hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # NumPy has no bfloat16; float32 holds every value exactly
            x, precision = x.float(), "bfloat16"
        x = x.numpy()
    x = np.asarray(x)
    if x.dtype.name == "bfloat16":  # ml_dtypes bfloat16 arrays
        x, precision = x.astype(np.float32), "bfloat16"
    if x.dtype.kind not in "biufc":
        raise ValueError(f"{name}: expected a numeric array, got dtype {x.dtype}")
    if precision is None and x.dtype.kind in "fc":
        precision = _REAL_PART.get(x.dtype.name, x.dtype.name)
    return x, precision


# --- a tiny random Llama, written as a GGUF file (a fixture for tests and lectures) -------------

TINY_MERGES = [("h", "e"), ("Ġ", "t"), ("Ġt", "he"), ("i", "n"), ("a", "n"), ("Ġ", "a")]
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_random_llama(path, *, n_layers: int = 2, dim: int = 64, n_heads: int = 4, n_kv_heads: int = 2,
                       hidden_dim: int = 96, context_length: int = 128, rope_base: float = 10000.0,
                       seed: int = 0, weight_type: int = 3, embedding_type: int = 8,
                       tied_embeddings: bool = False, version: int = 3):
    """Write a small Llama GGUF file with random weights and a 265-token byte-level vocabulary.

    The vocabulary is SmolLM2's layout in miniature: <|endoftext|> (0),
    <|im_start|> (1), <|im_end|> (2, the EOS), the 256 byte symbols of GPT-2's
    byte-to-unicode table, and one token per merge in TINY_MERGES.
    weight_type / embedding_type are ggml type ids (default Q4_1 and Q8_0, as in
    SmolLM2); norms are F32. dim and hidden_dim must be multiples of 32 for the
    block-quantised types. The output head is untied by default: with random
    tied weights every token's best continuation is itself, a dull test.
    It is written by `llama.save_model`, the writer of every model we save.
    """
    from tinytransformer.llama import save_model
    from tinytransformer.model import TinyTransformer, TransformerConfig, parameter_shapes
    from tinytransformer.tokenizers.byte_level import bytes_to_unicode

    byte_symbols = [bytes_to_unicode()[b] for b in range(256)]
    tokens = TINY_SPECIAL_TOKENS + byte_symbols + [a + b for a, b in TINY_MERGES]
    token_types = [3] * len(TINY_SPECIAL_TOKENS) + [1] * (len(tokens) - len(TINY_SPECIAL_TOKENS))
    config = TransformerConfig(vocab_size=len(tokens), d_model=dim, n_layers=n_layers, n_heads=n_heads,
                               n_kv_heads=n_kv_heads, d_ff=hidden_dim, max_seq_len=context_length,
                               rope_base=rope_base, rope_interleaved=True, tie_embeddings=tied_embeddings,
                               bos_id=1, eos_id=2, name="tiny random llama")
    rng = np.random.default_rng(seed)
    params, types = {}, {}
    for name, shape in parameter_shapes(config).items():
        if name.endswith("norm.weight"):
            params[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            continue
        scale = {"token_embd.weight": 1.0, "output.weight": 0.5}.get(name, 1.0 / np.sqrt(shape[1]))
        params[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
        types[name] = embedding_type if name in ("token_embd.weight", "output.weight") else weight_type
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.array(token_types, dtype=np.int32),
        "tokenizer.ggml.merges": [f"{a} {b}" for a, b in TINY_MERGES],
        "tokenizer.ggml.add_bos_token": False,
    }
    return save_model(TinyTransformer(config, params), path, metadata=metadata, types=types, version=version)
