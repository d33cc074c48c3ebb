"""ARPA files under attack: every mutated, truncated or crafted file ends in a correct load or a clear error.

Each case runs in a forked child with a time and memory bound (tests/fuzzing.py). An error is clear when
it is a ValueError that names the file; a load is correct when no probability is NaN or above 1 (+1e-3,
the margin `backoff` allows for printed rounding). Anything else (an unclear error, a hang, a memory
blow-up, a crash) fails the test. HYPOTHESIS_PROFILE=thorough runs twelve times more cases; set
TT_FUZZ_TALLY=path to append each case's outcome to that file, and `python tests/fuzzing.py path` prints
the counts.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzzing import record, run_bounded
from strategies.ngram import apply_arpa_mutation, arpa_mutations
from test_ngram_arpa import ARPA_BY_HAND, ARPA_KATZ
from tinytransformer.ngram import NGramLM, read_arpa
from tinytransformer.ngram.backoff import BACK_OFF_MASS_TOLERANCE

CORPUS = [list(s) for s in ("abcab", "bca", "cabd", "dab", "abcd", "ba", "", "aabb", "cd", "dcba", "abcabc")]


def _seed_files() -> dict[str, bytes]:
    files = {"hand-written": ARPA_BY_HAND.encode(), "katz": ARPA_KATZ.encode()}
    with tempfile.TemporaryDirectory() as folder:
        for order, smoothing in ((1, "kneser-ney"), (2, "kneser-ney"), (4, "modified-kneser-ney")):
            path = Path(folder) / f"{order}.arpa"
            NGramLM(order, smoothing).fit(CORPUS).to_arpa(path)
            files[f"{smoothing} order {order}"] = path.read_bytes()
    return files


SEEDS = _seed_files()


class BadLoad(Exception):
    """A file that loaded into a wrong model, or an error that does not say which file."""


def load_and_check(path) -> None:
    """Read the file; on success check that the model is a model: no NaN, no probability above 1."""
    try:
        lm = read_arpa(path)
    except ValueError as error:
        if str(path) not in str(error):
            raise BadLoad(f"ValueError that does not name the file: {error}") from None
        raise
    contexts = [()]
    for k in sorted({1, 2, 3, lm.order - 1} & set(range(1, lm.order))):  # a query costs O(order^2) lookups
        contexts += [tuple(lm.vocab[i] for i in row) for row in lm.ngrams(k)[:6]]
        contexts.append(("zz",) * k)
    for context in contexts:
        p = lm.distribution(context)
        if np.isnan(p).any() or p.max() > 1 + BACK_OFF_MASS_TOLERANCE:
            raise BadLoad(f"P(. | {' '.join(context)}) has NaN or a value above 1: max {p.max()}")
    scores = lm.logscores([["a", "b", "zz"], [], ["c", "a"]])
    if np.isnan(scores).any() or (scores > math.log2(1 + BACK_OFF_MASS_TOLERANCE)).any():
        raise BadLoad(f"sentence scores {scores}")


def run_case(data: bytes, folder) -> object:
    path = folder / "case.arpa"
    path.write_bytes(data)
    outcome = run_bounded(lambda: load_and_check(path), clean=(ValueError,), seconds=10, megabytes=256)
    record("ARPA", path.name, outcome)
    return outcome


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_every_seed_file_loads_correctly(seed, tmp_path):
    assert run_case(SEEDS[seed], tmp_path).kind == "ok"


@settings(max_examples=settings.default.max_examples * 3, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                                HealthCheck.too_slow])
@given(data=st.data(), seed=st.sampled_from(sorted(SEEDS)))
def test_a_mutated_arpa_file_loads_correctly_or_gets_a_clear_error(data, seed, tmp_path):
    original = SEEDS[seed]
    mutation = data.draw(arpa_mutations(original.count(b"\n") + 1, len(original)), label="mutation")
    outcome = run_case(apply_arpa_mutation(original, mutation), tmp_path)
    assert outcome.kind in ("ok", "clean error"), f"{seed}, {str(mutation)[:200]}: {outcome}"


def crafted_files() -> dict[str, bytes]:
    """Files built to be expensive or odd: huge declared counts, deep orders, long lines, many words."""
    hand = ARPA_BY_HAND
    many_words = "\n".join(f"-{i % 7 + 5}.5\tw{i}" for i in range(20_000))
    deep = ["\\data\\", "ngram 1=2"] + [f"ngram {k}=1" for k in range(2, 65)]
    deep += ["", "\\1-grams:", "-1\t<s>\t0", "-1\t</s>\t0"]
    for k in range(2, 65):  # "<s> <s> ... <s>", each the context of the next
        deep += ["", f"\\{k}-grams:", "-1\t" + " ".join(["<s>"] * k) + ("\t0" if k < 64 else "")]
    deep += ["", "\\end\\", ""]
    return {
        "count of 5,000 digits": hand.replace("ngram 1=5", "ngram 1=" + "9" * 5000).encode(),
        "count of 10^18 - 1": hand.replace("ngram 2=3", f"ngram 2={10**18 - 1}").encode(),
        "count of 10^17 in a tiny file": hand.replace("ngram 1=5", f"ngram 1={10**17}").encode(),
        "order 65 > max_order": (hand.replace("ngram 2=3", "ngram 2=3\n" + "\n".join(
            f"ngram {k}=1" for k in range(3, 66)))).encode(),
        "64 orders, one n-gram each": "\n".join(deep).encode(),
        "a 3 MB line": b"\\data\\\nngram 1=3\n\n\\1-grams:\n-1\t" + b"x" * (3 << 20) + b"\n",
        "20,000 one-word lines": (f"\\data\\\nngram 1={20_002}\n\n\\1-grams:\n-1\t<s>\t0\n-1\t</s>\n{many_words}\n\n"
                                  "\\end\\\n").encode(),
        "back-off weight 1e308": ARPA_KATZ.replace(f"\t{math.log10(1.5)!r}", "\t1e308").encode(),
        "every probability -1e308": "\n".join(
            ("-1e308" + line[line.index("\t"):]) if line[:1] == "-" else line for line in hand.split("\n")).encode(),
        "CRLF line ends": hand.replace("\n", "\r\n").encode(),
        "UTF-8 byte order mark": b"\xef\xbb\xbf" + hand.encode(),
        "empty file": b"",
        "NUL bytes only": b"\x00" * 4096,
    }


CRAFTED = crafted_files()


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_a_crafted_arpa_file_loads_correctly_or_gets_a_clear_error(name, tmp_path):
    outcome = run_case(CRAFTED[name], tmp_path)
    assert outcome.kind in ("ok", "clean error"), f"{name}: {outcome}"
