"""The package as an oracle: `import tinytransformer` reaches every public module, lists exactly them, and
stays cheap (modules load on first use, and CuPy only when a kernel runs)."""
from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys

import pytest

import tinytransformer
from conftest import ROOT

PUBLIC_MODULES = sorted(m.name for m in pkgutil.iter_modules(tinytransformer.__path__) if not m.name.startswith("_"))


def run_fresh(code: str) -> dict:
    """Run `code` in a new interpreter (nothing imported yet) and return the JSON it prints last."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_all_names_every_public_module_and_load_model():
    assert sorted(tinytransformer.__all__) == sorted([*PUBLIC_MODULES, "load_model"])


def test_every_public_module_is_an_attribute_of_the_package():
    found = run_fresh(f"import json, tinytransformer as t; print(json.dumps([getattr(t, name).__name__ "
                      f"for name in {PUBLIC_MODULES!r}]))")
    assert found == [f"tinytransformer.{name}" for name in PUBLIC_MODULES]


def test_dir_shows_the_public_names_and_nothing_leaked():
    public = {name for name in dir(tinytransformer) if not name.startswith("_")}
    assert public <= {*tinytransformer.__all__, *PUBLIC_MODULES}  # loaded submodules are attributes too
    assert set(tinytransformer.__all__) <= set(dir(tinytransformer))
    assert "annotations" not in dir(tinytransformer)


def test_importing_the_package_imports_no_submodule():
    loaded = run_fresh("import json, sys, tinytransformer; "
                       "print(json.dumps(sorted(m for m in sys.modules if m.startswith('tinytransformer.'))))")
    assert loaded == []


def test_reaching_every_name_never_imports_cupy():
    code = """
import json, sys
tried = []
class Watch:  # a meta path finder that records any attempt to import cupy, and lets others through
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "cupy":
            tried.append(name)
        return None
sys.meta_path.insert(0, Watch())
import tinytransformer
for name in tinytransformer.__all__:
    getattr(tinytransformer, name)
print(json.dumps(tried + [m for m in sys.modules if m.split(".")[0] == "cupy"]))
"""
    assert run_fresh(code) == []


def test_load_model_is_the_llama_loader():
    from tinytransformer import llama

    assert tinytransformer.load_model is llama.load_model


def test_an_unknown_name_raises_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="no_such_module"):
        tinytransformer.no_such_module  # noqa: B018
