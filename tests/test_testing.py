"""Laws of the comparison helper that the suite and other projects use as an oracle (tinytransformer.testing)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import require
from tinytransformer.testing import TOLERANCES, assert_close, tolerance

finite = st.floats(-1e6, 1e6)


@given(st.lists(st.tuples(finite, finite), min_size=1, max_size=8), st.floats(0, 1e-2), st.floats(0, 1e-2))
def test_passes_exactly_when_every_element_is_within_atol_plus_rtol_times_expected(pairs, rtol, atol):
    actual, expected = np.array(pairs).T
    within = np.all(np.abs(actual - expected) <= atol + rtol * np.abs(expected))
    try:
        assert_close(actual, expected, rtol=rtol, atol=atol)
        passed = True
    except AssertionError:
        passed = False
    assert passed == within


@pytest.mark.parametrize("actual, expected", [
    (1 + 1j, 1 + 9j),  # the imaginary parts were dropped
    (np.array([1 + 1j], np.complex64), np.array([1 - 1j], np.complex64)),
    (np.array([1.0]), np.array([1 + 1e-3j])),
    (np.nan, np.nan),  # NaN is close to nothing by default
    (np.array([1.0, np.nan]), np.array([1.0, 2.0])),
    (np.inf, -np.inf),
    (np.ones(3), np.ones((1, 3))),  # shapes must agree
])
def test_what_differs_does_not_pass(actual, expected):
    with pytest.raises(AssertionError):
        assert_close(actual, expected)


def test_complex_values_use_their_real_dtypes_tolerance():
    assert_close(np.complex64(1 + 1j) * (1 + 1e-6), np.complex64(1 + 1j))
    with pytest.raises(AssertionError):
        assert_close(np.complex128(1 + 1j) * (1 + 1e-6), np.complex128(1 + 1j))
    assert tolerance(np.complex64) == TOLERANCES["float32"]


def test_equal_nan_requires_nan_at_the_same_places():
    assert_close(np.array([1.0, np.nan]), np.array([1.0, np.nan]), equal_nan=True)
    with pytest.raises(AssertionError):
        assert_close(np.array([np.nan, 1.0]), np.array([1.0, np.nan]), equal_nan=True)


def test_torch_tensors_compare_on_the_host_and_bfloat16_gets_its_tolerance():
    torch = require("torch", "tensors given to assert_close")
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    assert_close(x * 1, np.array([1.0, 2.0, 3.0]))
    half = torch.tensor([1.0, 3.0], dtype=torch.bfloat16)
    assert_close(half, np.array([1.0, 3.004]))  # within bfloat16's tolerance, not float32's
    with pytest.raises(AssertionError):
        assert_close(half, np.array([1.0, 3.2]))


@pytest.mark.parametrize("call, message", [
    (lambda: assert_close(np.array(["a"]), np.array(["a"])), "actual: expected a numeric array, got dtype <U1"),
    (lambda: assert_close(1.0, 1.0, rtol=-1.0), "rtol: expected a finite number >= 0"),
    (lambda: assert_close(1.0, 1.0, atol=float("nan")), "atol: expected a finite number >= 0"),
    (lambda: assert_close(1.0, 1.0, dtype="int8"), "dtype: expected one of"),
    (lambda: tolerance(True), "dtype: expected one of"),
])
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
