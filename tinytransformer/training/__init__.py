"""Training: gradients by hand, the optimiser, the objectives, and (later) the loop.

Read in this order:

    tinytransformer.training.backward        the backward pass of every layer, beside its equation
    tinytransformer.training.flash_backward  the same attention gradients, tile by tile (FlashAttention-2)
    tinytransformer.training.objectives      cross-entropy fused with the logits; next-token and BERT masking
    tinytransformer.training.optim           AdamW, gradient clipping, warm-up + cosine schedule

No autograd anywhere: every gradient is written out, as in llm.c's `train_gpt2.c`,
and tested against PyTorch's autograd and against finite differences.
"""
