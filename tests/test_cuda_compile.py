"""Every .cu file compiles without a GPU: nvcc for sm_80 and sm_90, and the planted-bug builds.

One nvcc run per file builds sm_80 and sm_90 machine code (from one compute_80 PTX,
so the C++ front end runs once) with ptxas -v, whose report
(registers, spills, shared memory per kernel) the tests then read; one more run per
file compiles both planted-bug defines to PTX (they are independent #ifdefs, so one
build covers both code paths). The four runs start together in a module fixture.
CuPy compiles the same text with NVRTC at run time (with common.cuh pasted in by
cuda.kernel_source, and the same -D tile defines); after that the sources include
only the CUDA headers that NVRTC provides, so what nvcc accepts here NVRTC accepts there.
"""
from __future__ import annotations

import re
import subprocess
import time

import pytest

from tinytransformer import cuda
from tinytransformer.cuda.build import ARCHS, nvcc_command, nvcc_path, ptxas_report

SOURCES = ("flash_attention", "decode_attention")
NVCC = nvcc_path()


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """{(name, kind): (returncode, output text, output file, seconds)} for kind in ("full", "planted")."""
    if NVCC is None:
        pytest.skip("nvcc is not installed, so the .cu files are not compiled here (NVRTC is checked where CuPy is)")
    out = tmp_path_factory.mktemp("cuda_builds")
    jobs = {}
    for name in SOURCES:
        full = out / f"{name}.fatbin"  # one front-end pass (compute_80 PTX), then ptxas for sm_80 and sm_90
        jobs[(name, "full")] = (nvcc_command(NVCC, name, full), full)
        planted = out / f"{name}_planted.ptx"
        jobs[(name, "planted")] = (nvcc_command(NVCC, name, planted, defines=cuda.PLANTED_BUGS, ptx=True), planted)
    start = time.perf_counter()
    running = {key: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for key, (cmd, _) in jobs.items()}
    results = {}
    for key, proc in running.items():
        text, _ = proc.communicate(timeout=600)
        results[key] = (proc.returncode, text, jobs[key][1], time.perf_counter() - start)
    return results


def expected_kernels(name: str) -> set:
    """Every kernel name that tinytransformer.cuda launches from this file."""
    if name == "flash_attention":
        return ({"flash_v1_fp32"} | {f"flash_v2_fp32_d{d}" for d in cuda.FLASH_HEAD_DIMS[2]}
                | {f"flash_v3_{t}_d{d}" for t in ("fp16", "bf16") for d in cuda.FLASH_HEAD_DIMS[3]})
    return ({f"{f}_{t}_d{d}" for f in ("decode", "decode3") for t in ("fp32", "fp16", "bf16")
             for d in cuda.DECODE_HEAD_DIMS}
            | {f"decode_combine_{t}" for t in ("fp32", "fp16", "bf16")})


@pytest.mark.parametrize("name", SOURCES)
def test_every_cu_file_compiles_for_sm80_and_sm90_with_every_launched_kernel(builds, name):
    code, text, path, seconds = builds[(name, "full")]
    assert code == 0, f"nvcc failed on {name}.cu:\n{text[-4000:]}"
    assert path.stat().st_size > 0
    for arch in ARCHS:
        assert set(ptxas_report(text, arch)) == expected_kernels(name), f"kernels built for {arch}"
    assert seconds < 300, f"compiling {name}.cu took {seconds:.0f} s"


@pytest.mark.parametrize("name", SOURCES)
def test_planted_bug_builds_compile(builds, name):
    code, text, path, _ = builds[(name, "planted")]
    assert code == 0, f"nvcc failed on {name}.cu with {cuda.PLANTED_BUGS}:\n{text[-4000:]}"
    ptx = path.read_text()
    for kernel in expected_kernels(name):
        assert f".entry {kernel}(" in ptx


@pytest.mark.parametrize("name", SOURCES)
def test_no_kernel_spills_registers_to_local_memory(builds, name):
    code, text, _, _ = builds[(name, "full")]
    assert code == 0
    for arch in ARCHS:
        spilled = {k: r["spill_bytes"] for k, r in ptxas_report(text, arch).items() if r["spill_bytes"]}
        assert not spilled, f"{arch}: kernels spill registers: {spilled}"


@pytest.mark.parametrize("name", SOURCES)
def test_shared_memory_reported_by_ptxas_equals_the_budget_table(builds, name):
    """cuda.kernel_budget (used by the lecture) computes the same bytes as the compiler."""
    code, text, _, _ = builds[(name, "full")]
    assert code == 0
    for kernel, report in ptxas_report(text, "sm_90").items():
        if kernel.startswith("decode_combine"):
            assert report["smem"] == 0
            continue
        family = ("decode_v3" if kernel.startswith("decode3") else "decode" if kernel.startswith("decode")
                  else kernel[:8])  # flash_v1 / flash_v2 / flash_v3
        head_dim = int(kernel.rsplit("_d", 1)[1]) if "_d" in kernel else 64
        assert report["smem"] == cuda.kernel_budget(family, head_dim)["smem_bytes"], kernel


def test_decode_v3_fits_the_blocks_per_sm_its_splits_are_sized_for(builds):
    """decode_split_len sizes v3's splits for DECODE3_BLOCKS_PER_SM resident blocks: their
    registers must fit one SM's 65,536."""
    from tinytransformer.cuda.decode import DECODE3_BLOCKS_PER_SM

    code, text, _, _ = builds[("decode_attention", "full")]
    assert code == 0
    for arch in ARCHS:
        for kernel, report in ptxas_report(text, arch).items():
            if kernel.startswith("decode3"):
                assert report["registers"] * cuda.THREADS * DECODE3_BLOCKS_PER_SM <= 65536, (arch, kernel, report)


def test_tensor_core_version_issues_mma_for_fp16_and_bf16(builds):
    code, _, path, _ = builds[("flash_attention", "planted")]
    assert code == 0
    ptx = path.read_text()
    assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in ptx
    assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in ptx


def test_tile_constants_come_only_from_the_python_defines():
    """One source: no kernel file #defines a tile constant, each source that reads one stops with
    #error when it is missing, and every define cuda.tile_defines() passes is read somewhere."""
    tiles = {d.split("=")[0] for d in cuda.tile_defines()}
    for path in cuda.KERNEL_DIR.glob("*.cu*"):
        defined = set(re.findall(r"^\s*#\s*define\s+(\w+)", path.read_text(), flags=re.M))
        assert not defined & tiles, f"{path.name} #defines tile constants {defined & tiles}"
    guarded_anywhere = set()
    for name in SOURCES:
        text = cuda.kernel_source(name)  # with common.cuh pasted in
        guarded = set(re.findall(r"!defined\((\w+)\)", text))
        read = {t for t in tiles if re.search(rf"\b{t}\b", text) or f"{t.rsplit('_D', 1)[0]}_D##" in text}
        assert read <= guarded, f"{name}.cu reads tile constants without an #error guard: {read - guarded}"
        guarded_anywhere |= guarded
    assert tiles <= guarded_anywhere, f"defines no source reads: {tiles - guarded_anywhere}"


@pytest.mark.parametrize("name", SOURCES)
def test_sources_include_only_headers_that_nvrtc_provides(name):
    """After kernel_source pastes common.cuh in, only cuda_fp16.h and cuda_bf16.h are left to find."""
    raw = (cuda.KERNEL_DIR / f"{name}.cu").read_text()
    assert re.findall(r'^#include "([^"]+)"', raw, flags=re.M) == ["common.cuh"]
    text = cuda.kernel_source(name)
    assert not re.findall(r'^#include "', text, flags=re.M), "a local header was not pasted in"
    assert set(re.findall(r"^#include <([^>]+)>", text, flags=re.M)) <= {"cuda_fp16.h", "cuda_bf16.h"}
    assert text.count("#define NEG_INF") == 1 and "last_visible_key" in text  # the shared helpers, once
    for planted in cuda.PLANTED_BUGS:
        assert f"#ifdef {planted}" in text or f"#ifndef {planted}" in text


def test_kernel_sources_sit_in_cuda_kernels_and_setup_cfg_ships_them_in_the_package():
    """The sources sit in the top-level cuda_kernels/, which setup.cfg installs as the package
    cuda.KERNEL_PACKAGE, shipping every file kernel_source reads (tests/test_package.py builds the wheel)."""
    import configparser
    from pathlib import Path

    import tinytransformer

    root = Path(tinytransformer.__file__).resolve().parent.parent
    assert cuda.KERNEL_DIR == root / "cuda_kernels"
    config = configparser.ConfigParser()
    config.read(root / "setup.cfg")
    assert f"{cuda.KERNEL_PACKAGE} = cuda_kernels" in config["options"]["package_dir"]
    patterns = [p.strip() for p in config["options.package_data"][cuda.KERNEL_PACKAGE].split(",")]
    shipped = {path for pattern in patterns for path in cuda.KERNEL_DIR.glob(pattern)}
    needed = {cuda.KERNEL_DIR / f"{name}.cu" for name in SOURCES}
    needed |= {cuda.KERNEL_DIR / h for name in SOURCES
               for h in re.findall(r'^#include "([^"]+)"', (cuda.KERNEL_DIR / f"{name}.cu").read_text(), flags=re.M)}
    assert needed <= shipped, f"not in package_data: {sorted(p.name for p in needed - shipped)}"


@pytest.mark.parametrize("defines", [(), cuda.PLANTED_BUGS], ids=["kernels", "planted"])
@pytest.mark.parametrize("name", SOURCES)
def test_cupy_nvrtc_compiles_every_source_without_a_device(name, defines):
    """The run-time path: CuPy's NVRTC with the options cuda.load_module passes (no GPU needed)."""
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed: the NVRTC path is checked where it is")
    compiled = cupy.cuda.compiler.compile_using_nvrtc(cuda.kernel_source(name), cuda.compile_options(defines),
                                                      arch="80")
    text = compiled.decode(errors="replace") if isinstance(compiled, bytes) else str(compiled)
    assert text, "NVRTC returned nothing"
    if ".entry" in text:  # PTX (a cubin is binary; its names are checked by the nvcc tests)
        for kernel in expected_kernels(name):
            assert f".entry {kernel}(" in text
