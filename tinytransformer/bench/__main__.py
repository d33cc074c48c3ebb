"""Dispatch `python -m tinytransformer.bench NAME ...` to tinytransformer/bench/NAME.py.

A benchmark is a module of this folder that defines `main(argv)`; the others are its helpers.
The list is read from the source (no module is imported until one is run).
"""
from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path


def available() -> list[str]:
    """The benchmarks: modules of this folder (no leading underscore) with a top-level `def main`."""
    names = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name.startswith("_"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            names.append(path.stem)
    return names


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = available()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in names:
        print(f"usage: python -m tinytransformer.bench {{{','.join(names)}}} [options]")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(f"tinytransformer.bench.{argv[0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
