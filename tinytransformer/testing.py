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

This module sits at the bottom of the house (it imports NumPy and `_validate` only),
so that any module's tests can use it. A model file to test with (a small random
Llama written as GGUF) needs the loader: it is `tinytransformer.random_llama`.
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
