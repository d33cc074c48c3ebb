"""A model's structure as text, the way PyTorch prints a module: what `print(model)` shows.

One line per part, in the order the forward runs them, with the shapes from the
config and (for a model read from a file) each tensor's storage type in the file:

    TinyTransformer(SmolLM2 135M: 134.5M parameters, vocab 49152, context 8192, attention 'sdpa')
      (token_embd): Embedding(49152, 576)  [Q8_0]
      (blk): 30 x pre-norm block, each (blk.0 shown):
        (attn_norm): RMSNorm(576, eps=1e-05)
        ...

Only block 0 is shown: every block has the same parts.

    >>> from tinytransformer.model import TinyTransformer, TransformerConfig
    >>> text = describe(TinyTransformer(TransformerConfig(vocab_size=11, d_model=8, n_layers=2, n_heads=2)))
    >>> text.splitlines()[2]
    '  (blk): 2 x pre-norm block, each (blk.0 shown):'

Does not handle: models whose blocks differ from each other (every block is printed as block 0).
"""
from __future__ import annotations

__all__ = ["describe", "parameter_count"]


def parameter_count(n: int) -> str:
    """134,515,008 -> '134.5M'; below a million, the digits: 1,234."""
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def describe(model, tensor_types: dict[str, str] | None = None) -> str:
    """The structure of `model` (a TinyTransformer), one part per line; tensor_types: name -> storage
    type (e.g. "Q8_0"), shown beside each matrix when given."""
    c = model.config
    C, F, D = c.d_model, c.ffn_dim, c.head_dim
    kind = (tensor_types or {}).get

    def tag(name):
        return f"  [{kind(name)}]" if kind(name) else ""

    norm = "RMSNorm" if c.norm == "rms" else "LayerNorm"
    pos = {"rope": f"RoPE {'interleaved' if c.rope_interleaved else 'rotate-half'} base {c.rope_base:g}",
           "alibi": "ALiBi", "learned": "learned positions", "sinusoidal": "sinusoidal positions"}[c.position]
    attention = model.attention if isinstance(model.attention, str) else getattr(model.attention, "__name__", "custom")
    ffn_text = "SwiGLU(silu(x Wg^T) * (x Wu^T)) Wd^T" if c.ffn == "swiglu" else "GELU(x Wu^T + bu) Wd^T + bd"
    lines = [f"TinyTransformer({c.name or 'decoder'}: {parameter_count(model.n_parameters)} parameters, "
             f"vocab {c.vocab_size}, context {c.max_seq_len}, attention {attention!r})",
             f"  (token_embd): Embedding({c.vocab_size}, {C}){tag('token_embd.weight')}"]
    if c.position == "learned":
        lines.append(f"  (position_embd): Embedding({c.max_seq_len}, {C})")
    b = "blk.0."
    mask = "causal" if c.causal else "bidirectional"
    lines += [f"  (blk): {c.n_layers} x {'pre' if c.block == 'pre' else 'post'}-norm block, each (blk.0 shown):",
              f"    (attn_norm): {norm}({C}, eps={c.norm_eps:g})",
              f"    (attn): {mask} attention, heads {c.n_heads} x {D}, kv_heads {c.kv_heads}, {pos}",
              f"      (attn_q): Linear({C} -> {c.n_heads * D}){tag(b + 'attn_q.weight')}",
              f"      (attn_k): Linear({C} -> {c.kv_heads * D}){tag(b + 'attn_k.weight')}",
              f"      (attn_v): Linear({C} -> {c.kv_heads * D}){tag(b + 'attn_v.weight')}",
              f"      (attn_output): Linear({c.n_heads * D} -> {C}){tag(b + 'attn_output.weight')}",
              f"    (ffn_norm): {norm}({C}, eps={c.norm_eps:g})",
              f"    (ffn): {ffn_text}"]
    if c.ffn == "swiglu":
        lines.append(f"      (ffn_gate): Linear({C} -> {F}){tag(b + 'ffn_gate.weight')}")
    lines += [f"      (ffn_up): Linear({C} -> {F}){tag(b + 'ffn_up.weight')}",
              f"      (ffn_down): Linear({F} -> {C}){tag(b + 'ffn_down.weight')}",
              f"  (output_norm): {norm}({C}, eps={c.norm_eps:g})",
              "  (output): " + ("tied to token_embd" if c.tie_embeddings
                                else f"Linear({C} -> {c.vocab_size}){tag('output.weight')}")]
    return "\n".join(lines)
