"""The package as an oracle: `import tinytransformer` reaches every public module, lists exactly them, and
stays cheap (modules load on first use, and CuPy only when a kernel runs). Installed, it keeps its CUDA
sources: a wheel holds cuda_kernels/ as tinytransformer.cuda_kernels, and tinytransformer.cuda.build finds
them in a non-editable install, an editable one, and a checkout on PYTHONPATH."""
from __future__ import annotations

import configparser
import importlib.util
import json
import os
import pkgutil
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import tinytransformer
from conftest import ROOT

PUBLIC_MODULES = sorted(m.name for m in pkgutil.iter_modules(tinytransformer.__path__) if not m.name.startswith("_"))


def run_fresh(code: str, *, python_path=ROOT, cwd=ROOT, flags=()) -> dict:
    """Run `code` in a new interpreter (nothing imported yet) and return the JSON it prints last."""
    done = subprocess.run([sys.executable, *flags, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(python_path)})
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


# --- installed: the CUDA sources travel with the package ----------------------------------------

KERNEL_SOURCES = sorted(p.name for p in (ROOT / "cuda_kernels").iterdir() if p.suffix in (".cu", ".cuh"))
KERNEL_PACKAGE_PATH = "tinytransformer/cuda_kernels"  # where a wheel holds them: build.KERNEL_PACKAGE's folder
# What the interpreter under test prints: where the package and the sources were found, and every source's text
# (the .cu files as kernel_source gives them to NVRTC, common.cuh pasted in; the headers as they are).
REPORT = """
import json, importlib.resources, tinytransformer, tinytransformer.cuda.build as b
print(json.dumps({"package": tinytransformer.__file__, "dir": str(b.KERNEL_DIR), "kernel_package": b.KERNEL_PACKAGE,
                  "texts": {name: b.kernel_source(name[:-3]) if name.endswith(".cu") else (b.KERNEL_DIR / name).read_text()
                            for name in %r}}))
""" % (KERNEL_SOURCES,)


def _local_texts() -> dict:
    from tinytransformer.cuda import build

    return {name: build.kernel_source(name[:-3]) if name.endswith(".cu") else (ROOT / "cuda_kernels" / name).read_text()
            for name in KERNEL_SOURCES}


def _pip(*args, cwd):
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--no-deps", "--no-build-isolation", "--no-index"],
                          cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """The files a build reads, copied out of the checkout (a build writes build/ and *.egg-info beside them)."""
    # checked in a child: importing setuptools here would change this interpreter's sys.path
    probe = ("import importlib.util as u, setuptools; "
             "print(u.find_spec('wheel') is not None or u.find_spec('setuptools.command.bdist_wheel') is not None)")
    has_pip = importlib.util.find_spec("pip") is not None
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    if not has_pip or done.returncode != 0 or done.stdout.strip() != "True":
        pytest.skip("building a wheel offline (--no-build-isolation) needs pip, setuptools and a bdist_wheel "
                    "(the wheel package, or setuptools >= 70.1) in this environment: "
                    + ("pip is missing" if not has_pip else done.stderr.strip()[-200:] or "no bdist_wheel"))
    source = tmp_path_factory.mktemp("source")
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("tinytransformer", "cuda_kernels"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return source


@pytest.fixture(scope="module")
def wheel(source_copy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _pip("wheel", "-q", "-w", str(out), str(source_copy), cwd=out)
    (built,) = out.glob("tinytransformer-*.whl")
    return built


def test_setup_cfg_lists_every_package_of_the_tree_and_maps_cuda_kernels_into_it():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    tree = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "tinytransformer").rglob("__init__.py")}
    assert listed == tree | {"tinytransformer.cuda_kernels"}, "setup.cfg [options] packages: add or remove " \
        f"{sorted(listed ^ (tree | {'tinytransformer.cuda_kernels'}))}"
    mapping = dict(line.split(" = ") for line in config["options"]["package_dir"].split("\n") if line.strip())
    assert mapping == {"tinytransformer.cuda_kernels": "cuda_kernels"}


@pytest.mark.slow
def test_the_wheel_holds_every_kernel_source_and_every_module(wheel):
    from tinytransformer.cuda import build

    assert build.KERNEL_PACKAGE.replace(".", "/") == KERNEL_PACKAGE_PATH
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"common.cuh", "flash_attention.cu", "decode_attention.cu"} <= set(KERNEL_SOURCES)
    assert {f"{KERNEL_PACKAGE_PATH}/{name}" for name in KERNEL_SOURCES} <= names
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tinytransformer").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert not modules - names, f"modules missing from the wheel: {sorted(modules - names)}"


@pytest.mark.slow
def test_a_non_editable_install_finds_and_reads_every_kernel_source(wheel, tmp_path):
    target = tmp_path / "site"
    _pip("install", "-q", "--target", str(target), str(wheel), cwd=tmp_path)
    found = run_fresh(REPORT, python_path=target, cwd=tmp_path)
    assert Path(found["package"]).parent == target / "tinytransformer"  # the installed copy, not the checkout
    assert Path(found["dir"]) == target / KERNEL_PACKAGE_PATH
    assert found["texts"] == _local_texts()


@pytest.mark.slow
def test_an_editable_install_finds_the_kernel_sources_in_its_source_tree(source_copy, tmp_path):
    prefix = tmp_path / "prefix"
    # --ignore-installed: never touch this environment's own install of the package (pip would uninstall it)
    _pip("install", "-q", "--ignore-installed", "--prefix", str(prefix), "-e", str(source_copy), cwd=tmp_path)
    (site_dir,) = prefix.glob("lib/python*/site-packages")
    numpy_dir = Path(importlib.util.find_spec("numpy").origin).parent.parent
    # -S: no site-packages of this environment (its own editable install would answer first). The new
    # install's .pth (its import finder) is processed first, so that its finder module is the one imported
    # (this environment's has the same name); then numpy's folder goes on the path as a plain folder.
    code = f"import site, sys; site.addsitedir({str(site_dir)!r}); sys.path.append({str(numpy_dir)!r})\n" + REPORT
    found = run_fresh(code, python_path="", cwd=tmp_path, flags=("-S",))
    assert Path(found["package"]).parent == source_copy / "tinytransformer"
    assert Path(found["dir"]) == source_copy / "cuda_kernels"
    assert found["texts"] == _local_texts()


def test_a_checkout_on_pythonpath_finds_the_kernel_sources_in_cuda_kernels(tmp_path):
    found = run_fresh(REPORT, cwd=tmp_path)
    assert Path(found["package"]).parent == ROOT / "tinytransformer"
    assert Path(found["dir"]) == ROOT / "cuda_kernels"
    assert found["texts"] == _local_texts()
