"""Hypothesis strategies shared by the test files, one module per domain:

    basics      Seeds and float dtypes: the draws every chapter's tests share.
    attention   Attention shapes (ragged: T != S, every GQA group ratio, lengths off every tile size) and q, k, v.
    models      Small TransformerConfigs over every choice the one decoder has.
    tokenizers  Text that tokenizers get wrong, tiny vocabularies, and edits that corrupt tokenizer files.
    ngram       Sentences, orders and contexts for the n-gram chapter; corruptions of ARPA files.
    gguf        GGUF values, headers and corruptions; tiny Llama configs and token ids for the pretrained-model chapter.
    kernels     Cases for the CUDA kernels and the paged KV cache.
    quant       Tensors to quantise, drawn from the cases quantisers get wrong; calibration layers.
    serving     Small models and ragged prompts for the serving chapter.
    training    Activation shapes and gradient-check coordinates for the training chapter.

Shapes are deliberately small and ragged: sequence lengths that are not
multiples of any tile size, every GQA group ratio, T != S.
Import from the domain's module: `from strategies.attention import attention_shapes`.
"""
