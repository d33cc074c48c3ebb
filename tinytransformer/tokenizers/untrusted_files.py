"""Reading a tokenizer file that may be hostile: bounded size, no waiting on a FIFO, bounded JSON nesting.

A tokenizer file comes from the internet as often as a model does, and a bad one
should be a clear error, not a hang, a MemoryError or a RecursionError. Three rules:
the path must be a regular file (a FIFO or a folder is refused, not waited on); it is
read only if it is at most `max_bytes` long (and stops being read if it grows); JSON
is parsed only when its arrays and objects nest at most MAX_JSON_DEPTH deep, which a
linear scan of its brackets decides before `json.loads` recurses.

    >>> json_depth('[{"a": "]]"}, 1]')      # brackets inside strings do not count
    2
    >>> parse_json("[" * 300 + "]" * 300, "deep.json")
    Traceback (most recent call last):
    ...
    ValueError: deep.json is nested more than 200 levels deep

(Files are written through tinytransformer._files.atomic_writer.)

Does not handle: compressed files, streaming parses of files larger than memory.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from tinytransformer._files import open_regular_file

__all__ = ["read_untrusted", "read_json", "parse_json", "json_depth", "MAX_JSON_DEPTH"]

# JSON nested deeper than this is refused before Python's recursion limit turns it into a RecursionError.
MAX_JSON_DEPTH = 200


def read_untrusted(file: Path, where: str, max_bytes: int, error=ValueError) -> bytes:
    """The bytes of a tokenizer file, once it is known to be a regular file of at most max_bytes.

    `where` names the file in messages ("SentencePiece model 'x.model'"); `error` is the
    format's exception class. A FIFO or a folder given as the path is refused, not waited on.
    """
    try:
        handle = open_regular_file(file, where)
    except ValueError as e:  # a FIFO, a folder, a device
        raise error(str(e)) from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        data = b"" if size > max_bytes else handle.read(size + 1)  # read(n) allocates n bytes first
    if size > max_bytes or len(data) > size:  # too large, or growing while we read
        raise error(f"{where} is larger than {max_bytes} bytes")
    return data


def read_json(file: Path, where: str, max_bytes: int, error=ValueError):
    """A JSON tokenizer file, parsed; bad UTF-8, bad JSON or too deep nesting raises `error` naming the file."""
    try:
        text = read_untrusted(file, where, max_bytes, error).decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{where} is not valid UTF-8 JSON: {e}") from None
    return parse_json(text, where, error)


_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """How deeply the arrays and objects of a JSON text nest (brackets inside strings do not count).

    The running count of open brackets, taken with NumPy a few megabytes at a time: linear
    time, bounded memory, no recursion.

    >>> json_depth('[[], {"b": [1]}]')
    3
    """
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text)).encode("ascii")
    depth = deepest = 0
    for start in range(0, len(brackets), 1 << 22):
        chunk = np.frombuffer(brackets, dtype=np.uint8, count=min(1 << 22, len(brackets) - start), offset=start)
        running = depth + np.cumsum(np.where((chunk == ord("[")) | (chunk == ord("{")), 1, -1), dtype=np.int64)
        deepest, depth = max(deepest, int(running.max())), int(running[-1])
    return deepest


def parse_json(text: str, where: str, error=ValueError):
    """json.loads, but JSON nested more than MAX_JSON_DEPTH deep is a clear error, not a RecursionError."""
    if json_depth(text) > MAX_JSON_DEPTH:
        raise error(f"{where} is nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where} is not valid UTF-8 JSON: {e}") from None
