"""The backward pass of the whole model: loss and gradients of every parameter, by hand.

The forward is the model's own (`model.TinyTransformer.hidden_states` and
`.logits`), run once with its training hook: a dict `saved` into which it
stores what the backward needs, the input of every block and sublayer and
attention's q, k, v and output. The backward then walks the same path in
reverse, one layer's backward (`training.backward`) at a time:

    loss, dlogits = cross_entropy(logits, targets)                    (softmax - onehot) / N
    dh   = output head backward        logits = h W^T (W = token_embd when tied)
    dx   = output_norm backward
    for block L-1 .. 0:                (pre_ln_block_backward or post_ln_block_backward)
        FFN, its norm, attention (Wo, attention, RoPE^T, Wq/Wk/Wv), its norm, residuals
    dtoken_embd += embedding backward  (a tied table gets both its gradients)

Activation checkpointing (Chen et al., 2016, "Training Deep Nets with Sublinear
Memory Cost") trades compute for memory: the forward keeps only each block's
input, and the backward of block i first runs block i's forward again (the
model's `block`, with the hook) to get its internals back. Memory for
activations drops from every internal of every block to the block inputs plus
one block's internals; the price is one more forward pass. The gradients are
the same (a test checks it).

With attention="flash" the attention gradients come from the tiled backward
(`training.flash_backward`), which recomputes P from the log-sum-exp instead of
forming the T x S matrix; they are the same gradients.

Shapes: ids and targets [B, T]; hidden [B, T, C]; gradients have their
parameter's shape and dtype, keyed by the same GGUF names as `model.params`.

Does not handle: a model with quantised weights (train in float32 or float64),
KV caches (training runs whole sequences), dropout.
"""
from __future__ import annotations

import functools
import re

import numpy as np

from tinytransformer.attention import merge_heads, split_heads
from tinytransformer.flash import flash_attention_with_lse
from tinytransformer.layers import gelu_tanh
from tinytransformer.positional import alibi_slopes
from tinytransformer.training.backward import (
    embedding_backward,
    ffn_backward,
    gelu_backward,
    layer_norm_backward,
    linear_backward,
    post_ln_block_backward,
    pre_ln_block_backward,
    rms_norm_backward,
    rope_backward,
    swiglu_backward,
)
from tinytransformer.training.backward import attention_backward as plain_attention_backward
from tinytransformer.training.flash_backward import flash_attention_backward
from tinytransformer.training.objectives import IGNORE, cross_entropy

__all__ = ["loss_and_gradients"]

ATTENTION_BACKWARDS = ("plain", "flash")


def loss_and_gradients(model, ids, targets, *, checkpoint: bool = False, attention: str = "plain"):
    """(loss, n_targets, grads) of the mean cross-entropy of `model` on ids [B, T] against targets [B, T].

    targets: the token to predict at each position, IGNORE (-100) where nothing is
    predicted (the next-token objective: `objectives.next_token_targets`; the masked
    LM: `objectives.mask_tokens`, with a model whose config has causal=False).
    loss: mean over the n_targets counted positions (a float); grads: name -> array,
    one for every parameter of model.params.
    checkpoint: keep only block inputs in the forward and recompute each block in the backward.
    attention: "plain" (attention_backward) or "flash" (flash_attention_backward).
    """
    if attention not in ATTENTION_BACKWARDS:
        raise ValueError(f"attention: expected one of {ATTENTION_BACKWARDS}, got {attention!r}")
    not_arrays = [n for n, a in model.params.items() if not isinstance(a, np.ndarray) or a.dtype.kind != "f"]
    if not_arrays:
        raise ValueError(f"model: expected float parameters to train, got {not_arrays[0]!r} of type "
                         f"{type(model.params[not_arrays[0]]).__name__} (quantised weights cannot be trained)")
    ids, targets = np.asarray(ids), np.asarray(targets)
    if ids.ndim != 2 or targets.shape != ids.shape:
        raise ValueError(f"ids, targets: expected two integer arrays [B, T] of the same shape, got "
                         f"{ids.shape} and {targets.shape}")
    c, p = model.config, model.params
    saved = _BlockInputsOnly() if checkpoint else {}
    hidden = model.hidden_states(ids, saved=saved)  # [B, T, C], the model's own forward
    logits = model.logits(hidden)  # [B, T, V]
    loss, dlogits = cross_entropy(logits, targets)
    n_targets = int(np.sum(targets != IGNORE))
    del logits

    grads: dict[str, np.ndarray] = {}
    head = "token_embd.weight" if c.tie_embeddings else "output.weight"
    dh, grads[head] = linear_backward(dlogits, hidden, p[head])  # [B, T, C], [V, C]
    del dlogits
    dx = _norm_vjp(model, "output_norm", saved["output_norm"], grads)(dh)
    positions = saved["positions"]  # [B, T]
    for i in reversed(range(c.n_layers)):
        inside = saved
        if checkpoint:  # run block i's forward again, this time keeping its internals
            inside = {}
            model.block(saved[f"blk.{i}"], i, positions, saved=inside)
        dx = _block_backward(model, i, dx, inside, positions, grads, attention)
        if checkpoint:
            del inside

    dtable = embedding_backward(dx, ids, c.vocab_size)  # [V, C]
    grads["token_embd.weight"] = grads["token_embd.weight"] + dtable if c.tie_embeddings else dtable
    if c.position == "learned":
        grads["position_embd.weight"] = embedding_backward(dx, np.asarray(positions), c.max_seq_len)
    return loss, n_targets, {name: grads[name].astype(p[name].dtype, copy=False) for name in p}


def _block_backward(model, i, dy, saved, positions, grads, attention):
    """dx of block i from dy, given what its forward saved; adds its parameters' gradients to grads."""
    c = model.config
    b = f"blk.{i}."
    block_backward = pre_ln_block_backward if c.block == "pre" else post_ln_block_backward
    return block_backward(
        dy,
        functools.partial(_attention_vjp, model, i, saved, positions, grads, attention),
        functools.partial(_feed_forward_vjp, model, i, saved[b + "ffn"], grads),
        _norm_vjp(model, b + "attn_norm", saved[b + "attn_norm"], grads),
        _norm_vjp(model, b + "ffn_norm", saved[b + "ffn_norm"], grads),
    )


def _norm_vjp(model, name, x, grads):
    """The backward of the norm `name` at input x: d_out -> d_in, storing its parameters' gradients."""
    c, p = model.config, model.params

    def vjp(d):
        if c.norm == "rms":
            dx, grads[f"{name}.weight"] = rms_norm_backward(d, x, p[f"{name}.weight"], c.norm_eps)
        else:
            dx, grads[f"{name}.weight"], grads[f"{name}.bias"] = layer_norm_backward(d, x, p[f"{name}.weight"],
                                                                                    c.norm_eps)
        return dx
    return vjp


def _attention_vjp(model, i, saved, positions, grads, attention, d):
    """Backward of block i's self-attention sublayer: d [B, T, C] -> d of its input [B, T, C].

    Forward (model._self_attention): q, k, v = RoPE(x Wq^T), RoPE(x Wk^T), x Wv^T;
    out = attention(q, k, v); y = merge(out) Wo^T.
    """
    c, p = model.config, model.params
    b = f"blk.{i}."
    x, q, k, v, out = (saved[b + name] for name in ("attn", "q", "k", "v", "out"))
    dmerged, grads[b + "attn_output.weight"] = linear_backward(d, merge_heads(out), p[b + "attn_output.weight"])
    dout = split_heads(dmerged, c.n_heads)  # [B, T, Hq*D] -> [B, Hq, T, D]
    slopes = alibi_slopes(c.n_heads) if c.position == "alibi" else None
    if attention == "flash":
        out, lse = flash_attention_with_lse(q, k, v, causal=c.causal, alibi_slopes=slopes)  # lse: what flash saves
        dq, dk, dv = flash_attention_backward(q, k, v, out, lse, dout, causal=c.causal, alibi_slopes=slopes)
    else:
        dq, dk, dv = plain_attention_backward(dout, q, k, v, causal=c.causal, alibi_slopes=slopes)
    if c.position == "rope":  # the rotation's transpose: rotate back
        dq = rope_backward(dq, positions, base=c.rope_base, interleaved=c.rope_interleaved)
        dk = rope_backward(dk, positions, base=c.rope_base, interleaved=c.rope_interleaved)
    dx = 0
    for name, dhead in (("attn_q", dq), ("attn_k", dk), ("attn_v", dv)):
        dpart, grads[b + name + ".weight"] = linear_backward(merge_heads(dhead), x, p[b + name + ".weight"])
        dx = dx + dpart  # x feeds all three projections: their gradients add
    return dx


def _gelu_tanh_backward(dy, x):
    return gelu_backward(dy, x, approximate="tanh")


def _feed_forward_vjp(model, i, x, grads, d):
    """Backward of block i's FFN (SwiGLU, or GELU with GPT-2's tanh form as in the model) at input x."""
    p, b = model.params, f"blk.{i}."
    if model.config.ffn == "swiglu":
        dx, grads[b + "ffn_gate.weight"], grads[b + "ffn_up.weight"], grads[b + "ffn_down.weight"] = \
            swiglu_backward(d, x, p[b + "ffn_gate.weight"], p[b + "ffn_up.weight"], p[b + "ffn_down.weight"])
        return dx
    dx, grads[b + "ffn_up.weight"], grads[b + "ffn_up.bias"], grads[b + "ffn_down.weight"], \
        grads[b + "ffn_down.bias"] = ffn_backward(d, x, p[b + "ffn_up.weight"], p[b + "ffn_up.bias"],
                                                  p[b + "ffn_down.weight"], gelu_tanh, _gelu_tanh_backward)
    return dx


class _BlockInputsOnly(dict):
    """The `saved` dict of a checkpointed forward: it keeps the positions, each block's
    input and the final norm's input, and drops everything recorded inside a block."""

    _KEEP = re.compile(r"positions|output_norm|blk\.\d+")

    def __setitem__(self, key, value):
        if self._KEEP.fullmatch(key):
            super().__setitem__(key, value)

    def update(self, other=(), **more):
        for key, value in dict(other, **more).items():
            self[key] = value
