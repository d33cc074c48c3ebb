# %% [markdown]
# # Chapter 7: n-gram language models
# Before attention there was counting: P(w | the n-1 words before it) estimated from
# how often each n-gram occurred, smoothed for what never did. This chapter counts,
# smooths (add-k, Kneser-Ney), samples, watches the counts go sparse as n grows, and
# ends with what a transformer buys over counting, measured on the same bytes.
# Module: `tinytransformer/ngram.py`. Run: `python chapters/07_ngrams.py [--quick]`

# %%
import math
import tempfile
from pathlib import Path

import numpy as np
from _lecture import QUICK, heading, plt, save

from tinytransformer.bench.ngram import bits_per_byte_table, split_corpus, transformer_column
from tinytransformer.ngram import NGramLM, text_to_sentences

CHAPTER = "07_ngrams"
ORDERS = (1, 2, 3) if QUICK else (1, 2, 3, 4, 5)

# %% [markdown]
# ## 1. Counting on a toy corpus
# Jurafsky and Martin's three sentences. Each sentence is padded with `<s>` and `</s>`;
# a bigram model's estimate is c(h w) / c(h .).

# %%
heading("bigram MLE on a toy corpus")
toy = [["I", "am", "Sam"], ["Sam", "I", "am"], ["I", "do", "not", "like", "green", "eggs", "and", "ham"]]
mle = NGramLM(2, "mle").fit(toy)
for word, previous in [("I", "<s>"), ("Sam", "<s>"), ("am", "I"), ("do", "I"), ("</s>", "Sam"), ("Sam", "ham")]:
    print(f"P({word:4s} | {previous:3s}) = c({previous} {word}) / c({previous} .) = {mle.score(word, [previous]):.3f}")
print("an unseen bigram gets 0, so any text containing one has infinite perplexity:",
      mle.perplexity([["Sam", "like", "ham"]]))
kn = NGramLM(2, "kneser-ney").fit(toy)
print(f"Kneser-Ney: P(ham | Sam) = {kn.score('ham', ['Sam']):.4f}, perplexity {kn.perplexity([['Sam', 'like', 'ham']]):.2f}; "
      f"discounts {kn.discounts}")
print("each distribution sums to 1 over the vocabulary:", round(kn.distribution(["Sam"]).sum(), 12))

# %% [markdown]
# ## 2. The built-in corpus: 1- to 5-gram models
# The Python documentation topics, split into training text and a held-out tail.
# Word-level tokens are runs of letters, runs of spaces and single punctuation marks,
# so the tokens spell the text back exactly.

# %%
heading("the corpus")
train, heldout = split_corpus(max_train_bytes=80_000 if QUICK else None)
if QUICK:
    heldout = heldout[:10_000]
train_words, held_words = text_to_sentences(train), text_to_sentences(heldout)
print(f"training: {len(train.encode()):,} bytes, {sum(map(len, train_words)):,} word tokens in "
      f"{len(train_words):,} lines; held-out: {len(heldout.encode()):,} bytes")

models = {n: NGramLM(n, "modified-kneser-ney").fit(train_words) for n in ORDERS}
heading("samples (seed 0), modified Kneser-Ney")
for n, lm in models.items():
    words = lm.generate(40, seed=0)
    print(f"{n}-gram: " + "".join(" | " if w == "</s>" else w for w in words)[:160])

# %% [markdown]
# ## 3. Sparsity: why counting stops working as n grows
# The number of distinct n-grams explodes, and most held-out n-grams were never seen.

# %%
heading("distinct n-grams and unseen held-out n-grams")
top = models[max(ORDERS)]
distinct = [top.distinct_ngrams(n) for n in ORDERS]
unseen = [float((top.training_counts(held_words, order=n) == 0).mean()) for n in ORDERS]
for n, d, u in zip(ORDERS, distinct, unseen):
    print(f"n={n}: {d:8,d} distinct n-grams in training, {100 * u:5.1f}% of held-out n-grams never seen")
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
axes[0].plot(ORDERS, distinct, "o-")
axes[0].set(xlabel="n", ylabel="distinct n-grams in training", title="the table grows", xticks=ORDERS)
axes[1].plot(ORDERS, [100 * u for u in unseen], "o-", color="C3")
axes[1].set(xlabel="n", ylabel="% of held-out n-grams unseen", title="and covers less", xticks=ORDERS, ylim=(0, 100))
save(fig, CHAPTER, "sparsity")

# %% [markdown]
# ## 4. Perplexity against n for each smoother
# MLE is infinite on held-out text (one unseen n-gram suffices). Add-k gets *worse* as n
# grows: it spreads k over |V| continuations of every context. Kneser-Ney keeps improving.

# %%
heading("held-out perplexity (word level)")
smoothers = {"laplace": {}, "add-k": {"k": 0.01}, "kneser-ney": {}, "modified-kneser-ney": {}}
perplexity = {}
for name, kwargs in smoothers.items():
    perplexity[name] = [NGramLM(n, name, **kwargs).fit(train_words).perplexity(held_words) for n in ORDERS]
    print(f"{name:20s} " + "  ".join(f"n={n}: {p:8.1f}" for n, p in zip(ORDERS, perplexity[name])))
print("mle                  ", "  ".join(f"n={n}: {NGramLM(n, 'mle').fit(train_words).perplexity(held_words)}"
                                        for n in ORDERS))
fig, ax = plt.subplots(figsize=(5.5, 3.8))
for name, values in perplexity.items():
    ax.plot(ORDERS, values, "o-", label=name)
ax.set(xlabel="n", ylabel="held-out perplexity (word tokens)", yscale="log", xticks=ORDERS,
       title="perplexity against n")
ax.legend()
save(fig, CHAPTER, "perplexity_vs_n")

# %% [markdown]
# ## 5. ARPA files: the model in KenLM's format
# An interpolated Kneser-Ney model is a back-off model: each seen n-gram stores its
# probability, each seen context a back-off weight. ARPA separates words by whitespace,
# so this model is trained on whitespace-split words (the usual KenLM set-up).
# Export, read back, score the same.

# %%
heading("ARPA export and import")
split_train = [line.split() for line in train.split("\n")]
split_held = [line.split() for line in heldout.split("\n")]
trigram = NGramLM(3, "modified-kneser-ney").fit(split_train)
with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "trigram.arpa"
    trigram.to_arpa(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    print("\n".join(lines[:5]), "\n...\n" + "\n".join(lines[6:10]), "\n...")
    loaded = NGramLM.from_arpa(path)
    same = np.abs(loaded.logscores(split_held) - trigram.logscores(split_held)).max()
    print(f"{path.stat().st_size:,} bytes; largest log2 difference after the round trip: {same:.1e}")
print("to score the same way with KenLM: kenlm.Model(path).full_scores('<s> <s> ' + sentence + ' </s>', "
      "bos=False, eos=False), dropping the first 2 scores")

# %% [markdown]
# ## 6. n-grams against the transformer, in bits per byte
# Perplexity depends on the tokenizer (a byte model predicts more, easier tokens), so we
# compare bits per byte of the same held-out text: total -log2 P / UTF-8 bytes.
# Unknown words cost P(<unk>) plus the bits to spell them out.

# %%
heading("bits per byte, n-gram models vs SmolLM2-135M")
slice_text = heldout[:1500]  # SmolLM2 on 2 cores: ~15 ms a byte (docs/07_ngrams.md uses 3,000)
slice_text = slice_text[:slice_text.rfind("\n") + 1]
rows = bits_per_byte_table(train, heldout, orders=ORDERS, smoothings=("laplace", "modified-kneser-ney"),
                           extra_texts={"slice": slice_text})
for r in rows:
    print(f"{r['level']:4s} {r['order']}-gram {r['smoothing']:20s} held-out {r['bpb']:.3f}  "
          f"first {len(slice_text.encode())} bytes {r['bpb_slice']:.3f}")
if QUICK:
    transformer = {"error": "skipped in quick mode (scoring takes about a minute)"}
else:
    transformer = transformer_column(slice_text)
if "error" in transformer:
    print(f"transformer: not available ({transformer['error']})")
else:
    print(f"transformer SmolLM2-135M on the first {len(slice_text.encode())} bytes: {transformer['bpb']:.3f} bits/byte")
fig, ax = plt.subplots(figsize=(5.5, 3.8))
for level, style in (("word", "o-"), ("byte", "s-")):
    values = [r["bpb_slice"] for r in rows if r["level"] == level and r["smoothing"] == "modified-kneser-ney"]
    ax.plot(ORDERS, values, style, label=f"{level}-level n-gram (modified KN)")
if "error" not in transformer:
    ax.axhline(transformer["bpb"], color="k", linestyle="--", label="SmolLM2-135M")
ax.set(xlabel="n", ylabel="bits per byte (lower is better)", xticks=ORDERS,
       title=f"first {len(slice_text.encode())} held-out bytes")
ax.legend()
save(fig, CHAPTER, "bits_per_byte")
print(f"\nA byte costs {math.log2(256):.0f} bits uncompressed; the best n-gram here needs "
      f"{min(r['bpb_slice'] for r in rows):.2f}.")
