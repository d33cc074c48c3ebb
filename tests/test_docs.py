"""Every module's docstring examples run and give what they show (the examples are tests)."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import tinytransformer

SUBMODULES = sorted(m.name for m in pkgutil.walk_packages(tinytransformer.__path__, "tinytransformer."))
MODULES = ["tinytransformer", *SUBMODULES]  # the package docstring too


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name):
    module = importlib.import_module(name)  # every module imports without optional dependencies
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
