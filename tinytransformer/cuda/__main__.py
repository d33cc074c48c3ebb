"""`python -m tinytransformer.cuda [--ptxas]`: is the CUDA backend usable here, and what do the kernels cost?

Prints the CuPy/GPU status, where the kernel sources are and the tile defines.
With --ptxas it compiles every .cu file with nvcc (no GPU needed) for sm_80 and
sm_90 and prints ptxas's registers, spill bytes and static shared memory per kernel.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from tinytransformer.cuda.build import (ARCHS, KERNEL_DIR, cuda_status, nvcc_command, nvcc_path, ptxas_report,
                                        tile_defines)

SOURCES = ("flash_attention", "decode_attention")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinytransformer.cuda", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ptxas", action="store_true", help="compile every kernel with nvcc and print ptxas -v's "
                        "registers, spills and shared memory")
    args = parser.parse_args(argv)
    ok, why = cuda_status()
    print(f"CUDA backend: {'usable, ' + why if ok else 'not usable: ' + why}")
    print(f"kernel sources: {KERNEL_DIR} ({', '.join(sorted(p.name for p in KERNEL_DIR.glob('*.cu*')))})")
    print(f"tile defines: {' '.join(tile_defines())}")
    if not args.ptxas:
        return 0
    nvcc = nvcc_path()
    if nvcc is None:
        print("--ptxas: nvcc not found (put the CUDA toolkit's bin folder on PATH)", file=sys.stderr)
        return 2
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    print(f"nvcc: {version}")
    with tempfile.TemporaryDirectory() as folder:
        running = {name: subprocess.Popen(nvcc_command(nvcc, name, Path(folder) / f"{name}.fatbin"),
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                   for name in SOURCES}
        outputs = {name: proc.communicate()[0] for name, proc in running.items()}
    failed = [name for name, proc in running.items() if proc.returncode]
    for name in failed:
        print(f"nvcc failed on {name}.cu:\n{outputs[name][-4000:]}", file=sys.stderr)
    print(f"{'kernel':24s} " + " ".join(f"{arch + ' regs':>12s} {'spill B':>8s}" for arch in ARCHS) + f" {'smem B':>8s}")
    for name in SOURCES:
        reports = {arch: ptxas_report(outputs[name], arch) for arch in ARCHS}
        for kernel in sorted(reports[ARCHS[0]]):
            cells = " ".join(f"{reports[a][kernel]['registers']:12d} {reports[a][kernel]['spill_bytes']:8d}"
                             for a in ARCHS)
            print(f"{kernel:24s} {cells} {reports[ARCHS[-1]][kernel]['smem']:8d}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
