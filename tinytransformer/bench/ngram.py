"""Benchmark: n-gram models on the built-in corpus, next to nltk and to the pretrained transformer.

    python -m tinytransformer.bench ngram                 # everything (a few minutes on 2 cores)
    python -m tinytransformer.bench ngram --quick         # small sizes, no transformer
    python -m tinytransformer.bench ngram --json out.json --plot out.png
    python -m tinytransformer.bench ngram --threads 2     # BLAS threads of the transformer (default 1)

Three measurements, each taken in this one run:
1. speed: our trigram Kneser-Ney next to `nltk.lm.KneserNeyInterpolated`, both fitted on
   the same training sentences; fit time, and time per scored held-out trigram (nltk
   scores only the first `--nltk-trigrams`, it needs ~40 ms each), and both perplexities
   on those trigrams.
2. bits per byte of the held-out text for n = 1..5 under every estimator, word-level and
   byte-level (`tinytransformer.ngram.comparison.bits_per_byte_table`).
3. the pretrained transformer (SmolLM2 via `tinytransformer.load_model`) on the first
   `--transformer-bytes` characters of the held-out text (`corpus.heldout_slice`, cut back to
   a line end: 2,944 bytes of the built-in corpus), in bits per byte (`metrics.text_bits_per_byte`),
   next to the n-gram models on the same bytes, and how many times fewer bits it needs;
   reported as not available, with the reason, when the model cannot load. Chapter 7's
   lecture scores the same slice and prints the same numbers.

Times are wall-clock (`time.perf_counter`), one run each; the report says which BLAS
library ran and with how many threads. The JSON and PNG files are written whole or not
at all (a temporary file in the same folder, renamed into place).

Does not handle: timing on a GPU, corpora other than a UTF-8 text file (`--corpus`).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from tinytransformer.bench.common import save_figure, write_report
from tinytransformer.corpus import TRANSFORMER_CHARS, heldout_slice, split_corpus
from tinytransformer.metrics import text_bits_per_byte
from tinytransformer.ngram import NGramLM, text_to_sentences
from tinytransformer.ngram.comparison import ORDERS, best_by_level, bits_per_byte_table
from tinytransformer.threads import blas_description, blas_threads


def best_against_transformer(rows, transformer):
    """{level: best n-gram row on the slice}, and how many times fewer bits the transformer needs than
    the best of them (None when the transformer did not run)."""
    best = best_by_level(rows, "bpb_slice")
    overall = min(r["bpb_slice"] for r in best.values())
    ratio = overall / transformer["bpb"] if "bpb" in transformer else None
    return best, ratio


def print_comparison(rows, transformer, n_bytes):
    """The lines that compare the n-gram models with the transformer on the first n_bytes held-out bytes."""
    best, ratio = best_against_transformer(rows, transformer)
    for level, r in best.items():
        print(f"  best {level}-level n-gram ({r['order']}-gram {r['smoothing']}): {r['bpb_slice']:.3f} bits/byte")
    if "error" in transformer:
        print(f"  transformer: not available ({transformer['error']})")
        return
    print(f"  transformer (SmolLM2-135M): {transformer['bpb']:.3f} bits/byte "
          f"({transformer['tokens']} tokens, {transformer['seconds']:.1f} s)")
    print(f"  the transformer needs {ratio:.2f}x fewer bits than the best n-gram on these {n_bytes:,} bytes")


def nltk_speed(train, heldout, n_trigrams=1000):
    """Trigram interpolated Kneser-Ney, ours vs nltk: fit and per-trigram scoring times."""
    result = {"n_trigrams": 0}
    sentences, held = text_to_sentences(train), text_to_sentences(heldout)
    start = time.perf_counter()
    ours = NGramLM(3, "kneser-ney").fit(sentences)
    result["ours_fit_s"] = time.perf_counter() - start
    start = time.perf_counter()
    all_scores = ours.logscores(held)
    result["ours_all_trigrams"] = int(all_scores.size)
    result["ours_all_s"] = time.perf_counter() - start
    result["ours_all_perplexity"] = float(np.exp2(-all_scores.mean()))

    padded = [["<s>", "<s>"] + s + ["</s>"] for s in held]
    trigrams = [tuple(t[i - 2:i + 1]) for t in padded for i in range(2, len(t))][:n_trigrams]
    result["n_trigrams"] = len(trigrams)
    # our scores of the same trigrams: one vectorized call over the sentences that hold them
    covering = int(np.searchsorted(np.cumsum([len(s) + 1 for s in held]), len(trigrams))) + 1
    start = time.perf_counter()
    ours_first = ours.logscores(held[:covering])[:len(trigrams)]
    result["ours_same_s"] = time.perf_counter() - start
    result["ours_same_perplexity"] = float(np.exp2(-ours_first.mean()))
    try:
        from nltk.lm import KneserNeyInterpolated
        from nltk.lm.preprocessing import padded_everygram_pipeline
    except ImportError as error:
        result["nltk"] = f"not available: {error}"
        return result
    start = time.perf_counter()
    train_grams, vocab = padded_everygram_pipeline(3, sentences)
    reference = KneserNeyInterpolated(3)
    reference.fit(train_grams, vocab)
    result["nltk_fit_s"] = time.perf_counter() - start
    start = time.perf_counter()
    scores, errors = [], 0
    for gram in trigrams:
        try:
            scores.append(reference.logscore(gram[-1], gram[:-1]))
        except ZeroDivisionError:
            errors += 1
            scores.append(-math.inf)
    result["nltk_s"] = time.perf_counter() - start
    scores = np.array(scores)
    result["nltk_zero_probability"] = int(np.isneginf(scores).sum())
    result["nltk_errors"] = errors
    with np.errstate(over="ignore"):
        result["nltk_perplexity"] = float(np.exp2(-scores.mean()))
    finite = np.isfinite(scores)
    result["nltk_perplexity_finite_only"] = float(np.exp2(-scores[finite].mean())) if finite.any() else math.nan
    result["ours_perplexity_same_finite_only"] = float(np.exp2(-ours_first[finite].mean())) if finite.any() else math.nan
    per_ours = result["ours_all_s"] / max(result["ours_all_trigrams"], 1)
    per_nltk = result["nltk_s"] / max(len(trigrams), 1)
    result["speedup_per_trigram"] = per_nltk / per_ours
    result["speedup_same_trigrams"] = result["nltk_s"] / result["ours_same_s"]
    result["speedup_fit"] = result["nltk_fit_s"] / result["ours_fit_s"]
    return result


def transformer_column(text, chunk=256):
    """metrics.text_bits_per_byte of the text under the default pretrained model (`tinytransformer.load_model`),
    or {"error": reason} when the model is not available."""
    import tinytransformer

    try:
        loaded = tinytransformer.load_model()
        return text_bits_per_byte(loaded.model, loaded.tokenizer, text, chunk=chunk)
    except Exception as error:  # the model is optional: say why it is missing, keep the table
        return {"error": f"{type(error).__name__}: {error}"}


def format_table(rows, column="bpb"):
    """Markdown table: one row per (level, order), one column per estimator."""
    smoothings = list(dict.fromkeys(r["smoothing"] for r in rows))
    lines = ["| level | n | " + " | ".join(smoothings) + " |",
             "|---|---|" + "---|" * len(smoothings)]
    for level in dict.fromkeys(r["level"] for r in rows):
        for order in dict.fromkeys(r["order"] for r in rows if r["level"] == level):
            cells = {r["smoothing"]: r[column] for r in rows if r["level"] == level and r["order"] == order}
            lines.append(f"| {level} | {order} | " + " | ".join(
                "inf" if math.isinf(cells[s]) else f"{cells[s]:.3f}" for s in smoothings) + " |")
    return "\n".join(lines)


def plot(report, path):
    """Save the bits-per-byte figure: every estimator against n, and the transformer slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["table"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, smoothing in enumerate(dict.fromkeys(r["smoothing"] for r in rows)):
        for level, style in (("word", "-"), ("byte", "--")):
            points = [(r["order"], r["bpb"]) for r in rows if r["smoothing"] == smoothing
                      and r["level"] == level and math.isfinite(r["bpb"])]
            if points:
                axes[0].plot(*zip(*points), style, marker="o", color=f"C{i}", label=f"{smoothing} ({level})")
    orders = sorted({r["order"] for r in rows})
    axes[0].set(xlabel="n", ylabel="bits per byte", xticks=orders, title=f"held-out text ({report['heldout_bytes']:,} bytes)")
    axes[0].legend(fontsize=7)
    transformer = report.get("transformer", {})
    if transformer:
        for level, style in (("word", "o-"), ("byte", "s--")):
            points = [(r["order"], r["bpb_slice"]) for r in rows
                      if r["smoothing"] == "modified-kneser-ney" and r["level"] == level]
            axes[1].plot(*zip(*points), style, label=f"modified Kneser-Ney ({level})")
        if "bpb" in transformer:
            axes[1].axhline(transformer["bpb"], color="k", linestyle=":", label="SmolLM2-135M")
        axes[1].set(xlabel="n", ylabel="bits per byte", xticks=orders,
                    title=f"first {transformer['slice_bytes']:,} held-out bytes", ylim=(0, None))
        axes[1].legend(fontsize=8)
    else:
        axes[1].set_axis_off()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def run(args) -> dict:
    """Every measurement of the benchmark, printed as it is taken; returns the report."""
    train, heldout = split_corpus(args.corpus, max_train_bytes=60_000 if args.quick else None)
    if args.quick:
        heldout = heldout[:8000]
        args.nltk_trigrams = min(args.nltk_trigrams, 100)
        args.transformer_bytes = 0
    print(f"corpus: {len(train.encode())} training bytes, {len(heldout.encode())} held-out bytes")
    print(f"BLAS: {blas_description()}; times are wall-clock (time.perf_counter), one run each")
    report = {"train_bytes": len(train.encode()), "heldout_bytes": len(heldout.encode()),
              "blas": blas_description()}

    print("\n== speed: trigram interpolated Kneser-Ney, ours vs nltk.lm.KneserNeyInterpolated ==")
    speed = nltk_speed(train, heldout, args.nltk_trigrams)
    report["speed"] = speed
    for key, value in speed.items():
        print(f"  {key:34s} {value:.6g}" if isinstance(value, float) else f"  {key:34s} {value}")

    slice_text = heldout_slice(heldout, args.transformer_bytes) if args.transformer_bytes else ""
    print("\n== bits per byte of the held-out text ==")
    rows = bits_per_byte_table(train, heldout, orders=(1, 2, 3) if args.quick else ORDERS,
                               extra_texts={"slice": slice_text} if slice_text else None)
    report["table"] = rows
    print(format_table(rows))
    if slice_text:
        n_bytes = len(slice_text.encode())
        print(f"\n== the first {n_bytes} held-out bytes: n-gram vs transformer ==")
        column = transformer_column(slice_text)
        report["transformer"] = {**column, "slice_bytes": n_bytes}
        print_comparison(rows, column, n_bytes)
        report["transformer"]["fewer_bits_than_best_ngram"] = best_against_transformer(rows, column)[1]
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinytransformer.bench ngram", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, no transformer")
    parser.add_argument("--corpus", default=None, help="a UTF-8 text file instead of the built-in corpus")
    parser.add_argument("--nltk-trigrams", type=int, default=1000, help="held-out trigrams nltk scores")
    parser.add_argument("--transformer-bytes", type=int, default=TRANSFORMER_CHARS,
                        help="held-out characters the transformer scores, cut back to a line end (0: skip it)")
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS threads for the transformer's matrix products (default 1)")
    parser.add_argument("--json", default=None, help="also write the measurements to this file")
    parser.add_argument("--plot", default=None, help="also save the bits-per-byte figure (PNG) here")
    args = parser.parse_args(argv)
    for name in ("nltk_trigrams", "transformer_bytes"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')}: expected an integer >= 0, got {getattr(args, name)}")
    if args.threads < 1:
        parser.error(f"--threads: expected an integer >= 1, got {args.threads}")
    for name in ("json", "plot"):  # checked now, not after minutes of measuring
        value = getattr(args, name)
        if value is not None and not Path(value).resolve().parent.is_dir():
            parser.error(f"--{name}: the folder of {value!r} does not exist")

    with blas_threads(args.threads):
        report = run(args)
    if args.json:
        write_report(report, args.json)
        print(f"\n[wrote {args.json}]")
    if args.plot:
        plot(report, args.plot)
        print(f"[saved {args.plot}]")
    return 0
