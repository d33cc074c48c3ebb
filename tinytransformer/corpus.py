"""The built-in corpus: English text that every Python installation already ships.

Training a tokenizer or an n-gram model needs text, and a lecture cannot wait
for a download. Every CPython carries the text of its own documentation topics
(`pydoc_data.topics`, what `help("assert")` prints): about 0.45 MB of English
prose with code examples, mostly ASCII. `load_corpus()` returns it; give a path
to use your own UTF-8 text file instead.

    >>> text = load_corpus()
    >>> len(text) > 100_000
    True
    >>> train, heldout = train_heldout_split("a\\nb\\nc\\nd\\n", 0.25)
    >>> train, heldout
    ('a\\nb\\nc\\n', 'd\\n')
    >>> heldout_slice("ab\\ncd\\nef", 6)                  # the first characters, cut back to a line end
    'ab\\ncd\\n'

`split_corpus()` is the split that chapters 7 and 11 and their benchmarks share: the
last tenth held out, the training part optionally cut to its last `max_train_bytes`.

The corpus differs a little between Python versions (the topics are regenerated
for every release), so numbers measured on it are comparable only on the same
Python.

Does not handle: encodings other than UTF-8, files larger than `max_bytes`,
downloading anything.
"""
from __future__ import annotations

import os
from pathlib import Path

from tinytransformer._validate import is_real

__all__ = ["load_corpus", "builtin_corpus", "train_heldout_split", "split_corpus", "heldout_slice",
           "DEFAULT_MAX_BYTES", "TRANSFORMER_CHARS"]

# A text file larger than this is refused unless the caller raises the limit:
# loading it whole into a Python str would take several times its size in memory.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
TRANSFORMER_CHARS = 3000  # the held-out slice a pretrained transformer scores (chapter 7, bench ngram)


def builtin_corpus() -> str:
    """The Python documentation topics, joined in sorted-key order by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip("\n") for key in sorted(topics)) + "\n"


def load_corpus(path: str | os.PathLike | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """Return the built-in corpus (path=None) or the text of the UTF-8 file at `path`.

    Line endings are kept as they are in the file; the text is not normalised.
    Raises FileNotFoundError / ValueError naming the file when it is missing,
    too large, or not valid UTF-8.
    """
    if path is None:
        return builtin_corpus()
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str, os.PathLike or None, got {type(path).__name__}")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"corpus file {str(file)!r} does not exist or is not a file")
    size = file.stat().st_size
    if size > max_bytes:
        raise ValueError(
            f"corpus file {str(file)!r} has {size} bytes, more than max_bytes={max_bytes}; "
            "pass a larger max_bytes to load it"
        )
    data = file.read_bytes()[: max_bytes + 1]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"corpus file {str(file)!r} is not valid UTF-8: byte {error.start} "
            f"({data[error.start:error.start + 1]!r}) {error.reason}"
        ) from None


def train_heldout_split(text: str, fraction: float = 0.1) -> tuple[str, str]:
    """Split text into (train, heldout), heldout being the last `fraction` of it.

    The cut is moved forward to the next line start so that no line is split
    between the two parts (if there is no later newline, the cut is where it
    falls). train + heldout == text always; 0 < fraction < 1.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not is_real(fraction) or not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"fraction must be a number strictly between 0 and 1, got {fraction!r}")
    cut = int(round(len(text) * (1.0 - float(fraction))))
    if 0 < cut < len(text) and text[cut - 1] != "\n":
        newline = text.find("\n", cut)
        if newline != -1 and newline + 1 < len(text):
            cut = newline + 1
    return text[:cut], text[cut:]


def split_corpus(path=None, heldout_fraction: float = 0.1, max_train_bytes: int | None = None) -> tuple[str, str]:
    """(train, heldout) text of the built-in corpus (or of the file at `path`), heldout the last fraction.

    max_train_bytes keeps only the last that many characters of the training part (for quick
    runs), starting at a line start.
    """
    train, heldout = train_heldout_split(load_corpus(path), heldout_fraction)
    if max_train_bytes is not None:
        train = train[-max_train_bytes:]
        train = train[train.find("\n") + 1:] if "\n" in train else train
    return train, heldout


def heldout_slice(heldout: str, n_chars: int = TRANSFORMER_CHARS) -> str:
    """The first n_chars characters of the held-out text, cut back to the last line end (no word is cut).

    A pretrained transformer scores only this slice (it needs ~15 ms a byte on 2 cores); chapter 7's
    lecture and its benchmark both use it, so they print the same numbers.
    """
    text = heldout[:n_chars]
    return text[:text.rfind("\n") + 1] or text
