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

# dtype name -> (rtol, atol)
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-10, 1e-12),
    "float32": (1e-5, 1e-6),
    "float16": (2e-3, 2e-3),
    "bfloat16": (1.6e-2, 1e-2),
}


def tolerance(dtype) -> tuple[float, float]:
    """(rtol, atol) for a dtype, or for a dtype name such as "bfloat16"."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name not in TOLERANCES:
        raise ValueError(f"dtype: expected one of {sorted(TOLERANCES)}, got {name!r}")
    return TOLERANCES[name]


def assert_close(actual, expected, *, dtype=None, rtol=None, atol=None, err_msg=""):
    """Assert |actual - expected| <= atol + rtol * |expected| elementwise.

    dtype defaults to the lower precision of the two arrays; rtol/atol given
    explicitly override the table. Arrays from CuPy are moved to the host.
    """
    actual, expected = _to_numpy(actual), _to_numpy(expected)
    if dtype is None:
        kinds = [a.dtype for a in (actual, expected) if a.dtype.kind == "f"]
        dtype = max(kinds, key=lambda d: tolerance(d)[0]) if kinds else np.float64
    table_rtol, table_atol = tolerance(dtype)
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64),
        np.asarray(expected, dtype=np.float64),
        rtol=table_rtol if rtol is None else rtol,
        atol=table_atol if atol is None else atol,
        err_msg=err_msg,
    )


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        x = x.get()
    x = np.asarray(x)
    if x.dtype.name == "bfloat16":  # ml_dtypes/torch-style bfloat16 arrays
        x = x.astype(np.float32)
    return x
