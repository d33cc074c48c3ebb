r"""ARPA files: the text format in which back-off n-gram models travel (SRILM, KenLM).

An ARPA file lists, for every stored n-gram, log10 P*(h w), its words, and (below the
top order) log10 bow of the n-gram as a context, after a `\data\` header that gives
the count per order; fields are separated by whitespace, so words cannot contain any.
The model scores by the back-off rule of `backoff`, so from the lines
`-0.6 a -0.2` (1-grams) and no stored `a a`:

    log10 P(a | a) = log10 bow(a) + log10 P*(a) = -0.2 + -0.6

    >>> import os, tempfile
    >>> from tinytransformer.ngram import NGramLM
    >>> lm = NGramLM(3, "kneser-ney").fit([["a", "b"], ["b", "a", "a"]])
    >>> path = os.path.join(tempfile.mkdtemp(), "model.arpa")
    >>> lm.to_arpa(path)
    >>> loaded = read_arpa(path)
    >>> float(abs(loaded.logscores([["a", "b", "z"]]) - lm.logscores([["a", "b", "z"]])).max())
    0.0

A whole small file is drawn in docs/07_ngrams.md. Files are untrusted (see
`read_arpa`); writes are atomic (see `write_arpa`).

Does not handle: gzip-compressed files, KenLM's binary format, words that contain
whitespace, MLE and add-k models (after an unseen context they do not back off).
"""
from __future__ import annotations

import math
import os
import re

import numpy as np

from tinytransformer._files import atomic_writer, open_regular_file
from tinytransformer._validate import integer
from tinytransformer.ngram.backoff import BackoffLM, BackoffTable
from tinytransformer.ngram.counting import lookup
from tinytransformer.ngram.scoring import BOS, EOS, UNK

__all__ = ["read_arpa", "write_arpa", "MAX_ARPA_LINE"]

MAX_ARPA_LINE = 1 << 20  # bytes; an ARPA line is a few numbers and n words
_MAX_DIGITS = 18  # an order or a count in the header: at most 10^18 - 1 (an int64)
_UNK_LOG10P = -100.0  # KenLM's log10 P(<unk>) when the file does not list <unk>


# ---------------------------------------------------------------------- writing
def _fmt(x: float) -> str:
    """A float written so that it reads back exactly (repr), ARPA style for -inf."""
    x = float(x)
    if x == 0:
        return "0"
    return "-inf" if x == -math.inf else repr(x)


def write_arpa(model: BackoffLM, path) -> None:
    """Write `model` to `path` as an ARPA file: log10 P* and log10 bow of every stored n-gram.

    Everything is checked before the file is touched (words without whitespace,
    log10 P* in [-inf, 0], finite or -inf weights); the file is written next to `path`
    under a temporary name and renamed over it at the end.
    """
    if not isinstance(model, BackoffLM):
        raise TypeError(f"model: expected a BackoffLM (a Kneser-Ney model or one read from ARPA), "
                        f"got {type(model).__name__}")
    where = f"ARPA file {os.fspath(path)!r}" if isinstance(path, (str, os.PathLike)) else "path"
    for w in model.vocab:
        if not w or any(c.isspace() for c in w):
            raise ValueError(f"to_arpa: the vocabulary word {w!r} is empty or contains whitespace, "
                             "which ARPA files use to separate words")
    for k, table in enumerate(model.tables, 1):
        if np.isnan(table.logp).any() or (table.logp > 0).any():
            raise ValueError(f"to_arpa: a {k}-gram has log10 P that is NaN or > 0")
        if np.isnan(table.bow).any() or np.isposinf(table.bow).any():
            raise ValueError(f"to_arpa: a {k}-gram has a log10 back-off weight that is NaN or +inf")
    n = model.order
    vocab = np.array(model.vocab, dtype=object)
    with atomic_writer(path, where) as handle:
        header = ["\\data\\"] + [f"ngram {k}={t.keys.size}" for k, t in enumerate(model.tables, 1)]
        handle.write(("\n".join(header) + "\n").encode("utf-8"))
        for k, table in enumerate(model.tables, 1):
            text = [" ".join(row) for row in vocab[model.ngrams(k)]]
            if k < n:
                lines = [f"{_fmt(p)}\t{t}\t{_fmt(b)}" for p, t, b in zip(table.logp, text, table.bow)]
            else:
                lines = [f"{_fmt(p)}\t{t}" for p, t in zip(table.logp, text)]
            handle.write(("\n".join(["", f"\\{k}-grams:", *lines]) + "\n").encode("utf-8"))
        handle.write(b"\n\\end\\\n")


# ---------------------------------------------------------------------- reading
def read_arpa(path, *, max_order: int = 64) -> BackoffLM:
    """Read an ARPA file (ours, KenLM's, SRILM's) into a BackoffLM that scores as KenLM does.

    Raises ValueError naming the file and line on a malformed file: a missing
    `\\data\\` header or section, counts that disagree with the header, a bad number,
    an n-gram whose context is missing, a back-off weight that gives a probability
    above 1. `<unk>` missing from the file gets log10 P = -100, as in KenLM. Files are
    untrusted: reading takes time and memory in proportion to the file.
    """
    max_order = integer(max_order, "max_order", low=1)
    where = f"ARPA file {os.fspath(path)!r}" if isinstance(path, (str, os.PathLike)) else "path"
    handle = open_regular_file(path, where)

    def fail(number, message):
        raise ValueError(f"{where}, line {number}: {message}")

    declared: dict[int, int] = {}
    grams: list[list[tuple[str, ...]]] = []
    logps: list[list[float]] = []
    bows: list[list[float]] = []
    state = "preamble"  # preamble -> header -> sections -> end
    current = 0
    number = 0
    with handle:
        lines = iter(lambda: handle.readline(MAX_ARPA_LINE + 1), b"")
        for number, raw in enumerate(lines, 1):
            if len(raw) > MAX_ARPA_LINE:
                fail(number, f"longer than {MAX_ARPA_LINE} bytes (is this an ARPA file?)")
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as error:
                fail(number, f"not valid UTF-8 ({error.reason} at byte {error.start})")
            if state == "preamble":
                if line == "\\data\\":
                    state = "header"
                continue
            if not line:
                continue
            if state == "end":
                fail(number, f"text after \\end\\: {line!r:.60}")
            if state == "header" and line.startswith("ngram "):
                match = re.fullmatch(r"ngram\s+(\d+)\s*=\s*(\d+)", line)
                if not match:
                    fail(number, f"expected 'ngram K=COUNT', got {line!r:.60}")
                if max(len(match.group(1)), len(match.group(2))) > _MAX_DIGITS:
                    fail(number, f"an order or count of more than {_MAX_DIGITS} digits: {line!r:.60}")
                k, c = int(match.group(1)), int(match.group(2))
                if k != len(declared) + 1:
                    fail(number, f"expected the count of order {len(declared) + 1}, got order {k}")
                if k > max_order:
                    fail(number, f"order {k} is larger than max_order={max_order}")
                declared[k] = c
                continue
            section = re.fullmatch(r"\\(\d+)-grams:", line)
            if section:
                if not declared:
                    fail(number, "a section before any 'ngram K=COUNT' line in \\data\\")
                k = int(section.group(1)) if len(section.group(1)) <= _MAX_DIGITS else -1
                if current and len(grams[current - 1]) != declared[current]:
                    fail(number, f"the header declares {declared[current]} {current}-grams but the "
                                 f"section has {len(grams[current - 1])}")
                if k != current + 1 or k not in declared:
                    fail(number, f"expected section \\{current + 1}-grams:, got {line!r:.60}")
                current = k
                grams.append([])
                logps.append([])
                bows.append([])
                state = "sections"
                continue
            if line == "\\end\\":
                if state != "sections":
                    fail(number, "\\end\\ before any n-gram section")
                if current != len(declared):
                    fail(number, f"the header declares {len(declared)} orders but only "
                                 f"{current} sections were found")
                if len(grams[current - 1]) != declared[current]:
                    fail(number, f"the header declares {declared[current]} {current}-grams but the "
                                 f"section has {len(grams[current - 1])}")
                state = "end"
                continue
            if state != "sections":
                fail(number, f"expected 'ngram K=COUNT' or a section heading, got {line!r:.60}")
            fields = line.split()
            k = current
            if len(fields) not in (k + 1, k + 2) or (k == len(declared) and len(fields) != k + 1):
                expected = f"{k + 1}" if k == len(declared) else f"{k + 1} or {k + 2}"
                fail(number, f"a {k}-gram line needs {expected} fields (log10 P, {k} words"
                             f"{'' if k == len(declared) else ', optional back-off'}), got {len(fields)}")
            if len(grams[k - 1]) >= declared[k]:
                fail(number, f"more {k}-grams than the {declared[k]} the header declares")
            logp = _arpa_float(fields[0], "log10 probability", number, fail)
            bow = _arpa_float(fields[k + 1], "log10 back-off weight", number, fail) if len(fields) == k + 2 else 0.0
            if logp > 0:
                fail(number, f"log10 probability {fields[0]} is > 0 (a probability above 1)")
            grams[k - 1].append(tuple(fields[1:k + 1]))
            logps[k - 1].append(logp)
            bows[k - 1].append(bow)
    if state == "preamble":
        raise ValueError(f"{where}: no \\data\\ line (is this an ARPA file?)")
    if state != "end":
        fail(number + 1, "the file ends without \\end\\" if grams else "the file has no n-gram sections")
    return _model_from_lists(where, grams, logps, bows)


def _arpa_float(text, what, number, fail):
    try:
        value = float(text)
    except ValueError:
        fail(number, f"{what} {text!r:.40} is not a number")
    if math.isnan(value) or value == math.inf:
        fail(number, f"{what} {text!r:.40} is not a finite number or -inf")
    return value


def _model_from_lists(where, grams, logps, bows) -> BackoffLM:
    """The BackoffLM of the parsed sections: word ids, sorted keys, checked contexts."""
    order = len(grams)
    unigrams = [g[0] for g in grams[0]]
    for special in (BOS, EOS):
        if special not in unigrams:
            raise ValueError(f"{where}: the 1-grams have no {special} entry")
    extra = [w for w in unigrams if w not in (UNK, BOS, EOS)]
    vocab = [UNK, BOS, EOS] + extra
    index = {w: i for i, w in enumerate(vocab)}
    if len(index) != len(vocab) or len(set(unigrams)) != len(unigrams):
        raise ValueError(f"{where}: a 1-gram is listed twice")
    V = len(vocab)
    logp1 = np.full(V, _UNK_LOG10P)  # <unk> missing from the file: KenLM gives it -100; so do we
    bow1 = np.zeros(V)
    ids1 = np.array([index[w] for w in unigrams], dtype=np.int64)
    logp1[ids1] = logps[0]
    bow1[ids1] = bows[0]
    tables = [BackoffTable(keys=np.arange(V, dtype=np.int64), logp=logp1, bow=bow1)]
    for k in range(2, order + 1):
        rows = grams[k - 1]
        unknown = [g for g in rows if any(w not in index for w in g)]
        if unknown:
            raise ValueError(f"{where}: the {k}-gram {' '.join(unknown[0])!r} uses a word that is not a 1-gram")
        if tables[-1].keys.size * V >= 2**62:
            raise ValueError(f"{where}: too many {k - 1}-grams for a {V}-word vocabulary")
        ids = np.array([[index[w] for w in g] for g in rows], dtype=np.int64).reshape(len(rows), k)
        prefix = lookup([t.keys for t in tables], ids[:, :-1], V) if len(rows) else np.zeros(0, np.int64)
        if (prefix < 0).any():
            bad = rows[int(np.flatnonzero(prefix < 0)[0])]
            raise ValueError(f"{where}: the {k}-gram {' '.join(bad)!r} has no entry for its "
                             f"context {' '.join(bad[:-1])!r} among the {k - 1}-grams")
        keys = prefix * V + ids[:, -1]
        order_by = np.argsort(keys, kind="stable")
        keys = keys[order_by]
        if keys.size and (np.diff(keys) == 0).any():
            bad = rows[int(order_by[np.flatnonzero(np.diff(keys) == 0)[0]])]
            raise ValueError(f"{where}: the {k}-gram {' '.join(bad)!r} is listed twice")
        tables.append(BackoffTable(keys=keys, logp=np.asarray(logps[k - 1], dtype=np.float64)[order_by],
                                   bow=np.asarray(bows[k - 1], dtype=np.float64)[order_by]))
    tables[-1].bow = np.zeros(tables[-1].keys.size)  # the top order is never a context
    try:
        return BackoffLM(vocab, tables)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
