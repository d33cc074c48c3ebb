"""Sentences, orders and contexts for the n-gram chapter; corruptions of ARPA files."""
from __future__ import annotations

from hypothesis import strategies as st


NGRAM_WORDS = ("a", "b", "c", "d", "e", "f")  # few words, so n-grams repeat and counts of counts fill


def ngram_sentences(*, max_sentences: int = 10, max_len: int = 8, words=NGRAM_WORDS, min_sentences: int = 1):
    """A small corpus: a list of sentences, each a list of str tokens (possibly empty)."""
    sentence = st.lists(st.sampled_from(words), min_size=0, max_size=max_len)
    return st.lists(sentence, min_size=min_sentences, max_size=max_sentences)


def ngram_orders(max_order: int = 4):
    return st.integers(1, max_order)


def ngram_smoothings():
    return st.sampled_from(("mle", "laplace", "add-k", "kneser-ney", "modified-kneser-ney"))


NGRAM_QUERY_WORDS = NGRAM_WORDS + ("zz", "<s>", "</s>")  # "zz" is never in training: the <unk> path


def ngram_contexts(sentences, order, rng, extra=4):
    """(contexts of the scored tokens of the training text, a few random contexts, some unseen)."""
    seen = set()
    for s in sentences:
        padded = ["<s>"] * (order - 1) + list(s) + ["</s>"]
        for i in range(order - 1, len(padded)):
            seen.add(tuple(padded[i - order + 1:i]))
    drawn = set()
    for _ in range(extra):
        length = int(rng.integers(0, order))
        drawn.add(tuple(str(w) for w in rng.choice(NGRAM_QUERY_WORDS, length)))
    return sorted(seen), sorted(drawn - seen)


# Replacement fields and lines for corrupting ARPA files: numbers at and past the edges of float64,
# counts of thousands of digits, words with odd characters, lines out of place.
ARPA_FIELDS = ("0", "-0", "1", "0.5", "-99", "-1e308", "1e308", "-inf", "inf", "nan", "+3", "9" * 5000, "1e-320",
               "1_0", "0x10", "--1", "<s>", "</s>", "<unk>", "a", "\\end\\", "\\data\\", "\u00a0", "é", "x" * 300)


ARPA_COUNTS = ("0", "1", "2", "-1", "9" * 5000, str(10**18 - 1), str(10**17), "99999999999")


ARPA_LINES = ("\\3-grams:", "ngram 9=1", "-1 a b c d e", "-0.5\t" + "x" * 10000, "\\data\\", "\\end\\",
              "-1\t<s>\t" + "1" * 400, "\ufeff-1\ta", "-1\ta\x00b", "ngram 1=" + "9" * 30,
              "\\99999999999999999999-grams:", "-1 \u2028 a", "-1\t<s> <s>\t2", "ngram 2 = 1")


ARPA_POSITIVE_WEIGHTS = ("0.001", "0.3", "1", "5", "300", "1e308")


@st.composite
def arpa_mutations(draw, n_lines: int, size: int):
    """Ways to corrupt an ARPA file of `n_lines` lines and `size` bytes: a truncation, flipped bytes,
    a field replaced, a line duplicated, deleted, moved or inserted, a header count changed, a
    positive back-off weight planted."""
    kind = draw(st.sampled_from(["truncate", "flip", "field", "duplicate", "delete", "swap", "count",
                                 "insert", "weight"]))
    if kind == "truncate":
        return ("truncate", draw(st.integers(0, size - 1)))
    if kind == "flip":
        new = st.sampled_from(list(b"0123456789-+.e \t\n\\=<>/s\x00\xff\xc3"))
        return ("flip", draw(st.lists(st.tuples(st.integers(0, size - 1), new), min_size=1, max_size=8)))
    if kind == "count":
        return ("count", (draw(st.integers(1, 4)), draw(st.sampled_from(ARPA_COUNTS))))
    line = draw(st.integers(0, n_lines - 1))
    if kind == "field":
        return ("field", (line, draw(st.integers(0, 5)), draw(st.sampled_from(ARPA_FIELDS))))
    if kind == "swap":
        return ("swap", (line, draw(st.integers(0, n_lines - 1))))
    if kind == "insert":
        return ("insert", (line, draw(st.sampled_from(ARPA_LINES))))
    if kind == "weight":
        return ("weight", (line, draw(st.sampled_from(ARPA_POSITIVE_WEIGHTS))))
    return (kind, line)


def apply_arpa_mutation(data: bytes, mutation) -> bytes:
    kind, arg = mutation
    if kind == "truncate":
        return data[:arg]
    if kind == "flip":
        out = bytearray(data)
        for position, byte in arg:
            out[position] = byte
        return bytes(out)
    lines = data.split(b"\n")
    if kind == "count":
        order, count = arg
        prefix = f"ngram {order}=".encode()
        return b"\n".join(prefix + count.encode() if line.startswith(prefix) else line for line in lines)
    if kind == "field":
        line, index, value = arg
        fields = lines[line].split()
        fields[min(index, len(fields)):index + 1] = [value.encode()]
        lines[line] = b"\t".join(fields)
    elif kind == "weight":  # the last field of an n-gram line with a back-off weight, else appended
        line, value = arg
        fields = lines[line].split()
        lines[line] = b"\t".join((fields[:-1] if len(fields) >= 3 else fields) + [value.encode()])
    elif kind == "swap":
        a, b = arg
        lines[a], lines[b] = lines[b], lines[a]
    elif kind == "insert":
        line, text = arg
        lines.insert(line, text.encode())
    elif kind == "duplicate":
        lines.insert(arg, lines[arg])
    else:  # delete
        del lines[arg]
    return b"\n".join(lines)
