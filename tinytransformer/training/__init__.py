"""Training: gradients by hand, the optimiser, the objectives, and the loop.

Read in this order:

    tinytransformer.training.backward        the backward pass of every layer, beside its equation
    tinytransformer.training.flash_backward  the same attention gradients, tile by tile (FlashAttention-2)
    tinytransformer.training.objectives      cross-entropy fused with the logits; next-token and BERT masking
    tinytransformer.training.optim           AdamW, gradient clipping, warm-up + cosine schedule
    tinytransformer.training.gradients       the whole model's backward: loss and every parameter's gradient
    tinytransformer.training.data            seeded random batches; the tokenizer as GGUF metadata
    tinytransformer.training.loop            the Trainer: accumulation, clipping, AdamW, evaluation, GGUF checkpoints

No autograd anywhere: every gradient is written out, as in llm.c's `train_gpt2.c`,
and tested against PyTorch's autograd and against finite differences.
"""
