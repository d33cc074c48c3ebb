"""The decoder of `model.TinyTransformer`, written again in PyTorch: the competitor and the oracle.

The training benchmark times a training step of our NumPy model against PyTorch
eager on the same model, and the tests check that a whole training step of ours
equals the same step in PyTorch. Both need the same decoder in torch, reading
the same flat dict of parameters keyed by GGUF names (weights [out, in]). Every
choice of `TransformerConfig` is covered: RMSNorm/LayerNorm, SwiGLU/GELU (tanh),
RoPE (both pairings)/ALiBi/learned/sinusoidal positions, pre/post-LN, GQA/MQA,
tied or untied head; and causal=False for an encoder (the masked-LM objective).

torch is imported inside the functions: this module loads without it.
"""
from __future__ import annotations

import numpy as np

from tinytransformer.attention import causal_mask
from tinytransformer.positional import alibi_bias, rope_frequencies, sinusoidal_encoding

__all__ = ["torch_decoder", "torch_adamw"]


def torch_decoder(config, params: dict, *, dtype="float32", causal: bool = True):
    """(tensors, forward): leaf tensors (requires_grad) copied from `params`, and
    forward(ids [B, T] ndarray) -> logits [B, T, V] (a torch tensor)."""
    import torch

    F = torch.nn.functional
    c = config
    tdtype = getattr(torch, dtype)
    tensors = {name: torch.tensor(np.asarray(a), dtype=tdtype, requires_grad=True) for name, a in params.items()}
    C, D, Hq, Hkv = c.d_model, c.head_dim, c.n_heads, c.kv_heads

    def norm(x, name):
        if c.norm == "rms":
            return F.rms_norm(x, (C,), tensors[f"{name}.weight"], c.norm_eps)
        return F.layer_norm(x, (C,), tensors[f"{name}.weight"], tensors[f"{name}.bias"], c.norm_eps)

    def rope(x, T):
        angles = np.arange(T)[:, None] * rope_frequencies(D, c.rope_base)[None, :]  # [T, D/2]
        cos = torch.from_numpy(np.cos(angles)).to(tdtype)
        sin = torch.from_numpy(np.sin(angles)).to(tdtype)
        a, b = (x[..., 0::2], x[..., 1::2]) if c.rope_interleaved else (x[..., :D // 2], x[..., D // 2:])
        ra, rb = a * cos - b * sin, a * sin + b * cos
        return torch.stack([ra, rb], -1).flatten(-2) if c.rope_interleaved else torch.cat([ra, rb], -1)

    def attention(h, i):
        B, T, _ = h.shape
        b = f"blk.{i}."
        q = F.linear(h, tensors[b + "attn_q.weight"]).view(B, T, Hq, D).transpose(1, 2)
        k = F.linear(h, tensors[b + "attn_k.weight"]).view(B, T, Hkv, D).transpose(1, 2)
        v = F.linear(h, tensors[b + "attn_v.weight"]).view(B, T, Hkv, D).transpose(1, 2)
        if c.position == "rope":
            q, k = rope(q, T), rope(k, T)
        mask = None
        if c.position == "alibi":
            bias = alibi_bias(Hq, T, T)
            if causal:
                bias = np.where(causal_mask(T, T), bias, -np.inf)
            mask = torch.from_numpy(bias).to(tdtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                             enable_gqa=Hq != Hkv)
        return F.linear(out.transpose(1, 2).reshape(B, T, Hq * D), tensors[b + "attn_output.weight"])

    def feed_forward(h, i):
        b = f"blk.{i}."
        if c.ffn == "swiglu":
            gate = F.silu(F.linear(h, tensors[b + "ffn_gate.weight"]))
            return F.linear(gate * F.linear(h, tensors[b + "ffn_up.weight"]), tensors[b + "ffn_down.weight"])
        up = F.gelu(F.linear(h, tensors[b + "ffn_up.weight"], tensors[b + "ffn_up.bias"]), approximate="tanh")
        return F.linear(up, tensors[b + "ffn_down.weight"], tensors[b + "ffn_down.bias"])

    def forward(ids):
        ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        T = ids.shape[1]
        x = F.embedding(ids, tensors["token_embd.weight"])  # [B, T, C]
        if c.position == "learned":
            x = x + tensors["position_embd.weight"][:T]
        elif c.position == "sinusoidal":
            x = x + torch.from_numpy(sinusoidal_encoding(c.max_seq_len, C)[:T]).to(tdtype)
        for i in range(c.n_layers):
            if c.block == "pre":
                x = x + attention(norm(x, f"blk.{i}.attn_norm"), i)
                x = x + feed_forward(norm(x, f"blk.{i}.ffn_norm"), i)
            else:
                x = norm(x + attention(x, i), f"blk.{i}.attn_norm")
                x = norm(x + feed_forward(x, i), f"blk.{i}.ffn_norm")
        x = norm(x, "output_norm")
        head = tensors["token_embd.weight" if c.tie_embeddings else "output.weight"]
        return F.linear(x, head)  # [B, T, V]

    return tensors, forward


def torch_adamw(tensors: dict, *, lr, betas, eps, weight_decay):
    """torch.optim.AdamW with our decay rule: matrices decay, vectors (gains, biases) do not."""
    import torch

    decay = [t for t in tensors.values() if t.ndim >= 2]
    rest = [t for t in tensors.values() if t.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, eps=eps)
