"""Quantisation: storing weights in fewer bits, and what each way of doing it costs.

A float32 weight takes 32 bits. Quantisation stores it as a small integer q and
recovers x ~ s * (q - z) with a scale s and a zero point z shared by a group of
weights; the error is at most half a step s/2 per weight, and the art is in
choosing the groups, the grid and the rounding. One module per idea, each
building on the one before:

    uniform       absmax (symmetric) and zero-point (asymmetric) int8/int4, per tensor,
                  per row, in blocks; bits per weight counting every scale and zero point
    normal_float  NF4 and FP4 with blockwise absmax (QLoRA, bitsandbytes), and double
                  quantisation of the block scales
    int8_matmul   LLM.int8(): vector-wise int8 matrix multiply, outlier columns in float
    gptq          GPTQ: round column by column, pushing each error onto the columns not
                  yet rounded through the inverse Hessian of the layer's inputs
    awq           AWQ: scale up the input channels that see large activations before rounding
    weights       a weight kept in its GGUF blocks, dequantised a chunk at a time as it multiplies

A whole model is quantised by `tinytransformer.model_quantization` (every projection, by any
of the above) and measured by `tinytransformer.metrics.compare` (perplexity, KL divergence and
same-top-token rate against the unquantised model): evaluating a model is not a codec.

GGUF's own block types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the k-quants Q4_K, Q5_K,
Q6_K, byte for byte as llama.cpp writes them) are part of the file format and live
with it, in `tinytransformer.gguf.legacy_quants` and `tinytransformer.gguf.kquants`;
`weights` keeps a model's weights in those blocks.

Convention: a weight matrix is [out, in] (rows are output features) and is
applied as x @ W.T, as in the model's parameter dict; blocks and groups run
along the last (input) axis.
"""
