"""Tokenizers, one idea per module: see tinytransformer.tokenizer for the overview."""

import json
from pathlib import Path


def read_untrusted(file: Path, where: str, max_bytes: int, error=ValueError) -> bytes:
    """The bytes of a tokenizer file, once it is known to exist and to hold at most max_bytes.

    `where` names the file in messages ("SentencePiece model 'x.model'"); `error` is the
    format's exception class.
    """
    if not file.is_file():
        raise FileNotFoundError(f"{where} does not exist")
    if file.stat().st_size > max_bytes:
        raise error(f"{where} is larger than {max_bytes} bytes")
    return file.read_bytes()


def read_json(file: Path, where: str, max_bytes: int, error=ValueError):
    """A JSON tokenizer file, parsed; bad UTF-8 or bad JSON raises `error` naming the file."""
    try:
        return json.loads(read_untrusted(file, where, max_bytes, error).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{where} is not valid UTF-8 JSON: {e}") from None
