"""Benchmarks: `python -m tinytransformer.bench NAME [options]`.

Each benchmark is a module here with a `main(argv)` function. Benchmarks are
not tests: they measure, side by side in one run, our code and the competitor
it is compared with, and print (or write as JSON) what they measured.

    attention   the CUDA kernels next to torch SDPA (GPU), the NumPy references (CPU);
                its GPU half (CUDA-event timing, competitors, validation) in `attention_gpu`
    gguf        opening a GGUF file's metadata, ours next to gguf-py's GGUFReader
    model       SmolLM2's prefill and decode, next to transformers
    ngram       n-gram models on the built-in corpus, next to nltk and the transformer
    quant       every quantisation format on SmolLM2, against llama.cpp's quantisers, and kept quantised
    serve       continuous vs static batching, the cost-model simulation; its speculative
                part (prompt lookup against transformers, the model draft) in `serve_speculative`
    tokenizer   our tokenizers next to Hugging Face `tokenizers` and `sentencepiece`
    train       a training step next to PyTorch eager, and what 15 minutes of training buys

The modules without a `main` are the benchmarks' helpers: `common` (timers, reports and
figures written whole), `torch_decoder` (our decoder written again in PyTorch, the
training benchmark's competitor and the tests' oracle), `attention_gpu`, `serve_speculative`.

Benchmarks are leaves: nothing in the package, no lecture, imports them; what a lecture
needs from a measurement (a metric, a corpus split, an n-gram table) lives in the library.
"""
