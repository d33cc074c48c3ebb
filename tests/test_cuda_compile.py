"""Every .cu file compiles without a GPU: nvcc for sm_80 and sm_90, and the planted-bug builds.

One nvcc run per file builds sm_80 and sm_90 machine code (from one compute_80 PTX,
so the C++ front end runs once) with ptxas -v, whose report
(registers, spills, shared memory per kernel) the tests then read; one more run per
file compiles both planted-bug defines to PTX (they are independent #ifdefs, so one
build covers both code paths). The four runs start together in a module fixture.
CuPy compiles the same text with NVRTC at run time; the sources include only the
CUDA headers that NVRTC provides, so what nvcc accepts here NVRTC accepts there.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tinytransformer import cuda

SOURCES = ("flash_attention", "decode_attention")
ARCHS = ("sm_80", "sm_90")


def _nvcc() -> str | None:
    return shutil.which("nvcc") or next(
        (str(p) for p in (Path("/usr/local/cuda/bin/nvcc"),) if p.is_file()), None)


NVCC = _nvcc()


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """{(name, kind): (returncode, output text, output file, seconds)} for kind in ("full", "planted")."""
    if NVCC is None:
        pytest.skip("nvcc is not installed, so the .cu files are not compiled here (NVRTC is checked where CuPy is)")
    out = tmp_path_factory.mktemp("cuda_builds")
    jobs = {}
    for name in SOURCES:
        src = str(cuda.KERNEL_DIR / f"{name}.cu")
        # one front-end pass (compute_80 PTX), then ptxas for each of sm_80 and sm_90
        gencode = [f"-gencode=arch=compute_80,code=[{','.join(ARCHS)}]"]
        full = out / f"{name}.fatbin"
        jobs[(name, "full")] = ([NVCC, *cuda.compile_options(include_dirs=[]), "--fatbin", *gencode,
                                 "-Xptxas", "-v", "-o", str(full), src], full)
        planted = out / f"{name}_planted.ptx"
        jobs[(name, "planted")] = ([NVCC, *cuda.compile_options(cuda.PLANTED_BUGS, include_dirs=[]), "-ptx",
                                    "-arch=compute_80", "-o", str(planted), src], planted)
    start = time.perf_counter()
    running = {key: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for key, (cmd, _) in jobs.items()}
    results = {}
    for key, proc in running.items():
        text, _ = proc.communicate(timeout=600)
        results[key] = (proc.returncode, text, jobs[key][1], time.perf_counter() - start)
    return results


def _ptxas_report(text: str, arch: str) -> dict:
    """{kernel name: {"registers", "spill_bytes", "smem"}} from ptxas -v output for one arch."""
    report = {}
    for chunk in text.split("Compiling entry function")[1:]:
        m = re.match(r" '(\w+)' for '(\w+)'", chunk)
        if not m or m.group(2) != arch:
            continue
        regs = re.search(r"Used (\d+) registers", chunk)
        smem = re.search(r"(\d+) bytes smem", chunk)
        spills = re.findall(r"(\d+) bytes spill (?:stores|loads)", chunk)
        report[m.group(1)] = {"registers": int(regs.group(1)), "smem": int(smem.group(1)) if smem else 0,
                              "spill_bytes": sum(map(int, spills))}
    return report


def expected_kernels(name: str) -> set:
    """Every kernel name that tinytransformer.cuda launches from this file."""
    if name == "flash_attention":
        return ({"flash_v1_fp32"} | {f"flash_v2_fp32_d{d}" for d in cuda.FLASH_HEAD_DIMS[2]}
                | {f"flash_v3_{t}_d{d}" for t in ("fp16", "bf16") for d in cuda.FLASH_HEAD_DIMS[3]})
    return ({f"decode_{t}_d{d}" for t in ("fp32", "fp16", "bf16") for d in cuda.DECODE_HEAD_DIMS}
            | {f"decode_combine_{t}" for t in ("fp32", "fp16", "bf16")})


@pytest.mark.parametrize("name", SOURCES)
def test_every_cu_file_compiles_for_sm80_and_sm90_with_every_launched_kernel(builds, name):
    code, text, path, seconds = builds[(name, "full")]
    assert code == 0, f"nvcc failed on {name}.cu:\n{text[-4000:]}"
    assert path.stat().st_size > 0
    for arch in ARCHS:
        assert set(_ptxas_report(text, arch)) == expected_kernels(name), f"kernels built for {arch}"
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
        spilled = {k: r["spill_bytes"] for k, r in _ptxas_report(text, arch).items() if r["spill_bytes"]}
        assert not spilled, f"{arch}: kernels spill registers: {spilled}"


@pytest.mark.parametrize("name", SOURCES)
def test_shared_memory_reported_by_ptxas_equals_the_budget_table(builds, name):
    """cuda.kernel_budget (used by the lecture) computes the same bytes as the compiler."""
    code, text, _, _ = builds[(name, "full")]
    assert code == 0
    for kernel, report in _ptxas_report(text, "sm_90").items():
        if kernel.startswith("decode_combine"):
            assert report["smem"] == 0
            continue
        family = "decode" if kernel.startswith("decode") else kernel[:8]  # flash_v1 / flash_v2 / flash_v3
        head_dim = int(kernel.rsplit("_d", 1)[1]) if "_d" in kernel else 64
        assert report["smem"] == cuda.kernel_budget(family, head_dim)["smem_bytes"], kernel


def test_tensor_core_version_issues_mma_for_fp16_and_bf16(builds):
    code, _, path, _ = builds[("flash_attention", "planted")]
    assert code == 0
    ptx = path.read_text()
    assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in ptx
    assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in ptx


@pytest.mark.parametrize("name", SOURCES)
def test_tile_constants_in_python_match_the_cu_defines(name):
    text = (cuda.KERNEL_DIR / f"{name}.cu").read_text()
    defines = dict(re.findall(r"^#define (\w+) (\d+)\b", text, flags=re.M))
    expected = ({"V2_THREADS": cuda.THREADS, "V2_BR": cuda.V2_BR, "V3_THREADS": cuda.THREADS,
                 "V3_BR": cuda.V3_BR, "V3_PAD": cuda.V3_PAD} if name == "flash_attention"
                else {"DEC_THREADS": cuda.THREADS, "DEC_ROWS": cuda.DEC_ROWS, "DEC_BC": cuda.DEC_BC})
    assert {k: int(defines[k]) for k in expected} == expected
    if name == "flash_attention":  # the head-dim dependent key tiles, V2_BC(D) and V3_BC(D)
        assert "#define V2_BC(D_PAD) ((D_PAD) >= 128 ? 16 : 32)" in text
        assert "#define V3_BC(D_PAD) ((D_PAD) >= 128 ? 32 : 64)" in text
        assert [cuda.v2_block_k(d) for d in (64, 128)] == [32, 16]
        assert [cuda.v3_block_k(d) for d in (64, 128)] == [64, 32]


@pytest.mark.parametrize("name", SOURCES)
def test_sources_include_only_headers_that_nvrtc_provides(name):
    text = (cuda.KERNEL_DIR / f"{name}.cu").read_text()
    includes = set(re.findall(r"^#include <([^>]+)>", text, flags=re.M))
    assert includes <= {"cuda_fp16.h", "cuda_bf16.h"}, includes
    for planted in cuda.PLANTED_BUGS:
        assert f"#ifdef {planted}" in text or f"#ifndef {planted}" in text


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
