"""Quantising a whole model: every projection of every block, by any method of `tinytransformer.quant`.

Every format in `tinytransformer.quant` is applied to the seven projection
matrices of every block (attn_q, attn_k, attn_v, attn_output, ffn_gate,
ffn_up, ffn_down); embeddings and norms keep their values. A k-quant needs
rows that are whole super-blocks of 256; other matrices fall back to the type
llama.cpp's llama-quantize uses (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0). For accuracy only
the values matter, so each weight is replaced by its dequantised values ("fake
quantisation"), except LLM.int8, whose product depends on the activations and
stays an `Int8Linear`. Methods that look at activations (GPTQ, AWQ) first run
calibration text through the model and keep, per projection, the statistics
of its input x [n, C_in]: G = x^T x / n and mean |x|.

What it cost is measured as people trust it (`tinytransformer.metrics.compare`): the
quantised model against the one it came from, on held-out text, token by token:
perplexity, KL divergence from the reference, and how often the most likely next token agrees.

    >>> import numpy as np
    >>> from tinytransformer.metrics import compare, reference_log_probs
    >>> from tinytransformer.model import TinyTransformer, TransformerConfig
    >>> model = TinyTransformer(TransformerConfig(vocab_size=40, d_model=64, n_layers=1, n_heads=2, d_ff=64))
    >>> windows = np.arange(24).reshape(2, 12) % 40
    >>> reference = reference_log_probs(model, windows)
    >>> q8, bits = quantize_model(model, "Q8_0")
    >>> r = compare(q8, windows, reference)
    >>> bits, bool(0 < r.kl < 1e-3)
    (8.5, True)

Does not handle: quantising embeddings or the output head, quantising the
blocks one after the other with calibration inputs from the quantised blocks
before (GPTQ's sequential mode), AWQ's scale for attention's v -> o pair.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytransformer import gguf
from tinytransformer.model import TinyTransformer
from tinytransformer.quant import normal_float, uniform
from tinytransformer.quant.awq import awq_search_statistics
from tinytransformer.quant.gptq import gptq_quantize
from tinytransformer.quant.int8_matmul import Int8Linear

__all__ = ["PROJECTIONS", "METHODS", "awq_fold_scales", "K_QUANT_FALLBACK", "gguf_type_for", "projection_names",
           "InputStatistics", "calibration_statistics", "quantize_model"]

PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
GGUF_TYPES = ("Q8_0", "Q6_K", "Q5_K", "Q5_0", "Q4_K", "Q4_1", "Q4_0")
METHODS = GGUF_TYPES + ("int8-row", "llm.int8", "int4-row", "rtn-g128", "gptq-g128", "awq-g128", "nf4", "nf4-dq",
                        "fp4")
NEEDS_CALIBRATION = ("gptq-g128", "awq-g128")
# A row that is not a whole number of 256-weight super-blocks cannot be a k-quant; llama.cpp's
# llama-quantize then uses these instead (SmolLM2's d_model 576 = 2.25 x 256: every matrix but ffn_down).
K_QUANT_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def gguf_type_for(method: str, in_features: int) -> str:
    """The ggml type a GGUF method stores a matrix with rows of `in_features` as (llama.cpp's fallback)."""
    if method in K_QUANT_FALLBACK and in_features % 256:
        return K_QUANT_FALLBACK[method]
    return method


def projection_names(config) -> list[str]:
    return [f"blk.{i}.{p}.weight" for i in range(config.n_layers) for p in PROJECTIONS]


# --- calibration ---------------------------------------------------------------------------

@dataclass
class InputStatistics:
    """What GPTQ and AWQ need to know about the inputs x [n, C_in] of one projection."""

    gram: np.ndarray  # x^T x summed, float64 [C_in, C_in]
    abs_sum: np.ndarray  # |x| summed over tokens, float64 [C_in]
    n: int = 0

    @property
    def mean_gram(self) -> np.ndarray:
        return self.gram / max(self.n, 1)

    @property
    def mean_abs(self) -> np.ndarray:
        return self.abs_sum / max(self.n, 1)


class _Recorder:
    """A weight that records the statistics of what it is applied to (it has .shape and .linear)."""

    def __init__(self, weight):
        self.weight, self.shape = weight, weight.shape
        self.stats = InputStatistics(np.zeros((weight.shape[1],) * 2), np.zeros(weight.shape[1]))

    def linear(self, x):
        rows = np.asarray(x, np.float64).reshape(-1, self.shape[1])  # [n, C_in]
        self.stats.gram += rows.T @ rows
        self.stats.abs_sum += np.abs(rows).sum(axis=0)
        self.stats.n += rows.shape[0]
        return x @ self.weight.T


def calibration_statistics(model: TinyTransformer, windows) -> dict[str, InputStatistics]:
    """Run the token windows [B, T] through the model; the input statistics of every projection."""
    recorders = {name: _Recorder(model.params[name]) for name in projection_names(model.config)}
    probe = TinyTransformer(model.config, {**model.params, **recorders}, attention=model.attention)
    for ids in np.asarray(windows):
        probe.forward(ids)
    return {name: r.stats for name, r in recorders.items()}


# --- quantising every projection ----------------------------------------------------------

def _fake(method: str, w: np.ndarray) -> tuple[np.ndarray, float]:
    """(dequantised values, bits per weight) of one matrix in a format that needs no calibration."""
    if method in GGUF_TYPES:
        kind = getattr(gguf, gguf_type_for(method, w.shape[1]))
        info = gguf.GGML_TYPES[kind]
        return gguf.dequantize(gguf.quantize(w, kind), kind, w.shape), 8 * info.type_size / info.block_size
    if method in ("int8-row", "int4-row"):
        q = uniform.quantize_absmax(w, bits=int(method[3]), group="row")
    elif method == "rtn-g128":
        return uniform.round_to_nearest(w, bits=4, group_size=128)
    elif method in ("nf4", "nf4-dq", "fp4"):
        q = normal_float.quantize_4bit(w, method[:3], double_quant=method == "nf4-dq")
    else:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    return q.dequantize(), q.bits_per_weight


def quantize_model(model: TinyTransformer, method: str, statistics: dict | None = None,
                   *, n_grid: int = 20) -> tuple[TinyTransformer, float]:
    """A copy of the model with every projection quantised by `method`; and the bits per weight of those.

    GPTQ and AWQ take `statistics` from `calibration_statistics`. AWQ's scales are folded into
    attn_norm (for q, k, v), ffn_norm (for gate, up) and the rows of ffn_up (for down).
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if method in NEEDS_CALIBRATION and statistics is None:
        raise ValueError(f"statistics: {method} needs calibration_statistics(model, windows), got None")
    params, config = dict(model.params), model.config
    names = projection_names(config)
    bits, count = 0.0, 0
    if method == "awq-g128":
        params = awq_fold_scales(params, config, statistics, n_grid)
    for name in names:
        w = np.asarray(params[name], dtype=np.float32)
        if method == "llm.int8":
            params[name] = Int8Linear(w)
            b = params[name].bits_per_weight
        elif method == "gptq-g128":
            q = gptq_quantize(w, 2 * statistics[name].mean_gram, bits=4, group_size=128)
            params[name], b = q.weight, q.bits_per_weight
        elif method == "awq-g128":  # the weights were scaled by s already
            params[name], b = uniform.round_to_nearest(w, bits=4, group_size=128)
        else:
            params[name], b = _fake(method, w)
        bits, count = bits + b * w.size, count + w.size
    quantized = TinyTransformer(config, params, attention=model.attention, fast_linear=model.fast_linear)
    return quantized, bits / count


def awq_fold_scales(params: dict, config, statistics: dict, n_grid: int = 20) -> dict:
    """AWQ's search per group of projections sharing an input; W <- W diag(s), and 1/s folded into what
    comes before (attn_norm, ffn_norm, the rows of ffn_up). The function of the float model is unchanged."""
    params = dict(params)
    for i in range(config.n_layers):
        b = f"blk.{i}."
        for norm, group in ((b + "attn_norm.weight", ("attn_q", "attn_k", "attn_v")),
                            (b + "ffn_norm.weight", ("ffn_gate", "ffn_up")),
                            (b + "ffn_up.weight", ("ffn_down",))):
            names = [b + p + ".weight" for p in group]
            stats = statistics[names[0]]
            if norm.endswith("ffn_up.weight"):  # down's input is silu(gate) * up: fold 1/s into up's rows
                stats = statistics[b + "ffn_down.weight"]
            search = awq_search_statistics([params[n] for n in names], stats.mean_gram, stats.mean_abs,
                                           bits=4, group_size=128, n_grid=n_grid)
            s = search.scales  # [C_in of the group]
            for n in names:
                params[n] = np.asarray(params[n], np.float32) * s  # W diag(s)
            if norm.endswith("ffn_up.weight"):
                params[norm] = np.asarray(params[norm], np.float32) / s[:, None]  # up's rows / s
            else:
                params[norm] = np.asarray(params[norm], np.float32) / s  # gamma / s
    return params
