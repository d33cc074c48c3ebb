# %% [markdown]
# # Chapter 7: n-gram language models
# Before attention there was counting: P(w | the n-1 words before it) estimated from
# how often each n-gram occurred, smoothed for what never did. This chapter counts,
# smooths (add-k, Kneser-Ney), samples, watches the counts go sparse as n grows, writes
# the model as an ARPA file, scores one sentence under nltk's convention and ours, and
# ends with what a transformer buys over counting, measured on the same bytes.
# Package: `tinytransformer/ngram/`. Run: `python chapters/07_ngrams.py [--quick]`
# Every lesson printed below is also asserted, so a wrong lesson fails the chapter's test.

# %%
import math
import tempfile
import textwrap
from pathlib import Path

import numpy as np
from _lecture import QUICK, heading, plt, save

from tinytransformer.corpus import heldout_slice, split_corpus
from tinytransformer.llama import load_model
from tinytransformer.metrics import text_bits_per_byte
from tinytransformer.ngram import EOS, MLE, NGramLM, padded_everygram_pipeline, read_arpa, text_to_sentences
from tinytransformer.ngram.comparison import best_by_level, bits_per_byte_table
from tinytransformer.ngram.nltk_compat import ngrams, pad_both_ends

CHAPTER = "07_ngrams"
ORDERS = (1, 2, 3) if QUICK else (1, 2, 3, 4, 5)

# %% [markdown]
# ## 1. Counting on a toy corpus
# Jurafsky and Martin's three sentences. Each sentence is padded with `<s>` and `</s>`;
# a bigram model's estimate is c(h w) / c(h .): how often h was followed by w, over how
# often h was followed by anything.

# %%
heading("bigram MLE on a toy corpus")
toy = [["I", "am", "Sam"], ["Sam", "I", "am"], ["I", "do", "not", "like", "green", "eggs", "and", "ham"]]
mle = NGramLM(2, "mle").fit(toy)
for word, previous in [("I", "<s>"), ("Sam", "<s>"), ("am", "I"), ("do", "I"), ("</s>", "Sam"), ("Sam", "ham")]:
    print(f"P({word:4s} | {previous:3s}) = c({previous} {word}) / c({previous} .) = {mle.score(word, [previous]):.3f}")
assert math.isclose(mle.score("am", ["I"]), 2 / 3) and mle.score("Sam", ["ham"]) == 0
unseen_perplexity = mle.perplexity([["Sam", "like", "ham"]])
print("an unseen bigram gets 0, so any text containing one has infinite perplexity:", unseen_perplexity)
assert math.isinf(unseen_perplexity)
kn = NGramLM(2, "kneser-ney").fit(toy)
kn_perplexity = kn.perplexity([["Sam", "like", "ham"]])
print(f"Kneser-Ney: P(ham | Sam) = {kn.score('ham', ['Sam']):.4f}, perplexity {kn_perplexity:.2f}; "
      f"discounts {kn.discounts}")
assert kn.score("ham", ["Sam"]) > 0 and math.isfinite(kn_perplexity)
total = kn.distribution(["Sam"]).sum()
print("each distribution sums to 1 over the vocabulary:", round(total, 12))
assert abs(total - 1) < 1e-12

# %% [markdown]
# ## 2. The built-in corpus: 1- to 5-gram models
# The Python documentation topics, split into training text and a held-out tail.
# Word-level tokens are runs of letters, runs of spaces and single punctuation marks,
# so the tokens spell the text back exactly; each line of the corpus is a sentence, and
# its `</s>` stands for the line break. The samples below print each `</s>` as a line
# break and start every line with `│`. A unigram model does not know that a space comes
# between two words, so its words run together; from n = 3 on, the lines look like the
# corpus.

# %%
heading("the corpus")
train, heldout = split_corpus(max_train_bytes=80_000 if QUICK else None)
if QUICK:
    heldout = heldout[:10_000]
train_words, held_words = text_to_sentences(train), text_to_sentences(heldout)
print(f"training: {len(train.encode()):,} bytes, {sum(map(len, train_words)):,} word tokens in "
      f"{len(train_words):,} lines; held-out: {len(heldout.encode()):,} bytes")

models = {n: NGramLM(n, "modified-kneser-ney").fit(train_words) for n in ORDERS}
heading("samples (seed 0, 40 tokens each), modified Kneser-Ney; each </s> printed as a line break")
for n, lm in models.items():
    words = lm.generate(40, seed=0)
    text = "".join("\n" if w == EOS else w for w in words)
    print(f"{n}-gram:")
    print(textwrap.indent(text, "    │ ", lambda line: True))
    assert len(words) == 40 and set(words) <= set(lm.vocab)

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
assert all(a < b for a, b in zip(distinct, distinct[1:])), "the table grows with n"
assert all(a < b for a, b in zip(unseen, unseen[1:])), "and covers less of the held-out text"
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
mle_perplexity = [NGramLM(n, "mle").fit(train_words).perplexity(held_words) for n in ORDERS]
print("mle                  ", "  ".join(f"n={n}: {p}" for n, p in zip(ORDERS, mle_perplexity)))
assert all(math.isinf(p) for p in mle_perplexity)
assert perplexity["laplace"][-1] > perplexity["laplace"][1], "add-1 gets worse as n grows"
for name in ("kneser-ney", "modified-kneser-ney"):
    assert all(b < a for a, b in zip(perplexity[name], perplexity[name][1:])), f"{name} improves with n"
    assert all(k < a for k, a in zip(perplexity[name][1:], perplexity["add-k"][1:])), "and beats add-k"
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
# Export, read back as a `BackoffLM` (`read_arpa`), score the same.

# %%
heading("ARPA export and import")
split_train = [line.split() for line in train.split("\n")]
split_held = [line.split() for line in heldout.split("\n")]
trigram = NGramLM(3, "modified-kneser-ney").fit(split_train)
with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "trigram.arpa"
    trigram.to_arpa(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    print("\n".join(lines[:10] + ["..."]))
    loaded = read_arpa(path)
    same = np.abs(loaded.logscores(split_held) - trigram.logscores(split_held)).max()
    print(f"{path.stat().st_size:,} bytes; largest log2 difference after the round trip: {same:.1e}")
assert same < 1e-9
print("to score the same way with KenLM: kenlm.Model(path).full_scores('<s> <s> ' + sentence + ' </s>', "
      "bos=False, eos=False), dropping the first 2 scores")

# %% [markdown]
# ## 6. One sentence, two conventions: nltk's and ours
# nltk scores the n-grams it is given; its usual test n-grams pad a sentence with n-1
# `</s>`, so a trigram model scores the end twice, the second time `</s>` after `</s>`,
# which is almost certain and lowers the perplexity. We (like KenLM) score one `</s>`.

# %%
heading("the same sentence scored both ways (trigram MLE on the toy corpus)")
sentence = ["I", "am", "Sam"]
ours = NGramLM(3, "mle").fit(toy)
theirs = MLE(3)
theirs.fit(*padded_everygram_pipeline(3, toy))
grams = ngrams(pad_both_ends(sentence, n=3), 3)
ours_p = 2 ** ours.logscores([sentence])
theirs_p = [theirs.score(g[-1], g[:-1]) for g in grams]
print("ours: " + ", ".join(f"P({w}) = {p:.3f}" for w, p in zip(sentence + [EOS], ours_p)))
print("nltk: " + ", ".join(f"P({g[-1]} | {' '.join(g[:-1])}) = {p:.3f}" for g, p in zip(grams, theirs_p)))
print(f"perplexity: ours {ours.perplexity([sentence]):.3f} over {len(ours_p)} tokens, "
      f"nltk {theirs.perplexity(grams):.3f} over {len(grams)}")
assert np.allclose(ours_p, theirs_p[:len(ours_p)]) and len(grams) == len(ours_p) + 1
assert theirs.perplexity(grams) < ours.perplexity([sentence])

# %% [markdown]
# ## 7. n-grams against the transformer, in bits per byte
# Perplexity depends on the tokenizer (a byte model predicts more, easier tokens), so we
# compare bits per byte of the same held-out text: total -log2 P / UTF-8 bytes.
# Unknown words cost P(<unk>) plus the bits to spell them out. The transformer scores the
# first 3,000 characters of the held-out text (cut back to a line end), the slice that
# the n-gram benchmark (`bench/ngram.py`) uses: both print the same numbers.

# %%
heading("bits per byte, n-gram models vs SmolLM2-135M")
slice_text = heldout_slice(heldout)
n_bytes = len(slice_text.encode())
rows = bits_per_byte_table(train, heldout, orders=ORDERS, smoothings=("laplace", "modified-kneser-ney"),
                           extra_texts={"slice": slice_text})
for r in rows:
    print(f"{r['level']:4s} {r['order']}-gram {r['smoothing']:20s} held-out {r['bpb']:.3f}  "
          f"first {n_bytes:,} bytes {r['bpb_slice']:.3f}")
best = best_by_level(rows, "bpb_slice")
for level, r in best.items():
    print(f"  best {level}-level n-gram ({r['order']}-gram {r['smoothing']}): {r['bpb_slice']:.3f} bits/byte")
transformer, ratio = {"error": "skipped in quick mode (scoring takes about a minute)"}, None
if not QUICK:
    try:
        loaded = load_model()
        transformer = text_bits_per_byte(loaded.model, loaded.tokenizer, slice_text)
    except Exception as error:  # the model is optional: say why it is missing, keep the table
        transformer = {"error": f"{type(error).__name__}: {error}"}
if "error" in transformer:
    print(f"  transformer: not available ({transformer['error']})")
else:
    ratio = min(r["bpb_slice"] for r in best.values()) / transformer["bpb"]
    print(f"  transformer (SmolLM2-135M): {transformer['bpb']:.3f} bits/byte "
          f"({transformer['tokens']} tokens, {transformer['seconds']:.1f} s)")
    print(f"  the transformer needs {ratio:.2f}x fewer bits than the best n-gram on these {n_bytes:,} bytes")
for level in ("word", "byte"):
    kn_top = next(r for r in rows if r["level"] == level and r["order"] == max(ORDERS)
                  and r["smoothing"] == "modified-kneser-ney")
    laplace_top = next(r for r in rows if r["level"] == level and r["order"] == max(ORDERS)
                       and r["smoothing"] == "laplace")
    assert kn_top["bpb"] < laplace_top["bpb"] < 8, "Kneser-Ney needs fewer bits than add-1, both fewer than 8"
if ratio is not None:
    assert ratio > 1, "the transformer needs fewer bits than the best n-gram"
fig, ax = plt.subplots(figsize=(5.5, 3.8))
for level, style in (("word", "o-"), ("byte", "s-")):
    values = [r["bpb_slice"] for r in rows if r["level"] == level and r["smoothing"] == "modified-kneser-ney"]
    ax.plot(ORDERS, values, style, label=f"{level}-level n-gram (modified KN)")
if "error" not in transformer:
    ax.axhline(transformer["bpb"], color="k", linestyle="--", label="SmolLM2-135M")
ax.set(xlabel="n", ylabel="bits per byte (lower is better)", xticks=ORDERS,
       title=f"first {n_bytes:,} held-out bytes", ylim=(0, None))
ax.legend()
save(fig, CHAPTER, "bits_per_byte")
print(f"\nA byte costs {math.log2(256):.0f} bits uncompressed; the best n-gram here needs "
      f"{min(r['bpb_slice'] for r in best.values()):.2f}.")
