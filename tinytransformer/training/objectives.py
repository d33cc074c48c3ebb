"""Training objectives: what the loss is, and which positions it looks at.

Both objectives below are the same cross-entropy, over different targets:

    next-token (GPT, Radford et al., 2018): a decoder with a causal mask predicts
        token t + 1 from tokens 0..t, at every position: targets = ids shifted left.
    masked LM (BERT, Devlin et al., 2019): an encoder with no causal mask sees the
        whole sequence with some tokens hidden and predicts the hidden ones only.

Cross-entropy fused with the logits. For logits z [N, V] and targets y [N],

    L = -1/N sum_n log softmax(z_n)[y_n]
    dL/dz_n = (softmax(z_n) - onehot(y_n)) / N

The gradient needs only the probabilities the loss already computed, so the
two are computed together (llm.c's fused `crossentropy_softmax_backward`), and
the [N, V] probabilities are never stored apart from the gradient itself.
Positions whose target is IGNORE (-100, PyTorch's ignore_index) count neither in
the loss nor in N: that is how the masked LM puts its loss on chosen positions only.

    >>> import numpy as np
    >>> loss, dlogits = cross_entropy(np.zeros((1, 4)), np.array([2]))
    >>> round(loss, 4), dlogits.round(2).tolist()      # log 4; (1/4 - onehot) / 1
    (1.3863, [[0.25, 0.25, -0.75, 0.25]])

BERT's masking: choose 15% of the (non-special) positions; of those, replace
80% by [MASK], 10% by a random token, keep 10%. The random and kept tokens stop
the model from learning that only [MASK] positions matter.

Does not handle: label smoothing, z-loss, span masking (SpanBERT, T5), whole-word masking.
"""
from __future__ import annotations

import numpy as np

from tinytransformer._validate import float_array, leading_index_array, positive_int

__all__ = ["IGNORE", "cross_entropy", "next_token_targets", "mask_tokens"]

IGNORE = -100  # target value that the loss skips (PyTorch's default ignore_index)


def cross_entropy(logits, targets, *, ignore_index: int = IGNORE):
    """(mean loss, dlogits): softmax cross-entropy over the last axis and its gradient.

    logits [..., V] float; targets int [...] (the same leading shape), each in
    [0, V) or ignore_index. loss = mean over counted positions of -log p[target]
    (a Python float); dlogits [..., V] = (p - onehot(target)) / N, zero on ignored
    rows. With no counted position the loss is 0.0 and the gradient zeros.
    """
    logits = float_array(logits, "logits")
    targets = leading_index_array(targets, logits, "targets", "logits")
    V = logits.shape[-1]
    z = logits.reshape(-1, V)  # [N, V]
    y = targets.reshape(-1)  # [N]
    counted = y != ignore_index
    if np.any((y[counted] < 0) | (y[counted] >= V)):
        bad = y[counted][(y[counted] < 0) | (y[counted] >= V)][0]
        raise ValueError(f"targets: expected values in [0, {V}) or {ignore_index} (ignored), got {bad}")
    n = int(counted.sum())
    rows = np.flatnonzero(counted)
    grad = z - z.max(axis=-1, keepdims=True)  # shifted logits z - max z; their softmax is the same
    picked = grad[rows, y[rows]]  # shifted logit of each counted row's target
    np.exp(grad, out=grad)
    total = grad.sum(axis=-1, keepdims=True)  # sum_v exp(z_v - max z), [N, 1]
    grad /= total  # p = softmax(z), [N, V]
    loss = -float(np.sum(picked - np.log(total[rows, 0]), dtype=np.float64)) / max(n, 1)  # -log p[target]
    grad[rows, y[rows]] -= 1.0  # p - onehot(y)
    grad[~counted] = 0.0
    grad *= grad.dtype.type(1.0 / max(n, 1))  # / N
    return loss, grad.reshape(logits.shape)


def next_token_targets(ids, *, ignore_index: int = IGNORE):
    """Targets for the next-token objective: ids shifted left by one, the last one ignored.

    ids int [B, T] -> targets [B, T] with targets[:, t] = ids[:, t + 1]. A loader
    that reads T + 1 tokens and uses ids[:, :-1] and ids[:, 1:] loses nothing at the end.
    """
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu" or ids.ndim < 1:
        raise ValueError(f"ids: expected an integer array [..., T], got dtype {ids.dtype} shape {ids.shape}")
    targets = np.full(ids.shape, ignore_index, dtype=np.int64)
    targets[..., :-1] = ids[..., 1:]
    return targets


def mask_tokens(ids, *, vocab_size: int, mask_id: int, rng, special_ids=(), select: float = 0.15,
                replace_mask: float = 0.8, replace_random: float = 0.1, ignore_index: int = IGNORE):
    """BERT's masking: (inputs, targets) for the masked-LM objective.

    ids int [...]. Each position that is not a special token is chosen with
    probability `select` (independently, as Hugging Face's data collator does;
    BERT's own code picks exactly round(15%) per sequence). A chosen position
    becomes `mask_id` with probability replace_mask, a random non-special token
    with probability replace_random, and stays itself otherwise (the rest, 10%).
    targets holds the original id at chosen positions and ignore_index elsewhere,
    so that `cross_entropy` counts chosen positions only. Special tokens
    (`special_ids`, which should include mask_id, padding, [CLS], [SEP]) are never
    chosen and never drawn as the random replacement. rng: a numpy Generator.
    """
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"ids: expected an integer array, got dtype {ids.dtype}")
    vocab_size = positive_int(vocab_size, "vocab_size")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"ids: expected values in [0, vocab_size={vocab_size}), got [{ids.min()}, {ids.max()}]")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id: expected a token id in [0, {vocab_size}), got {mask_id}")
    for value, name in ((select, "select"), (replace_mask, "replace_mask"), (replace_random, "replace_random")):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: expected a probability in [0, 1], got {value}")
    if replace_mask + replace_random > 1.0:
        raise ValueError(f"replace_mask + replace_random: expected at most 1, got {replace_mask + replace_random}")
    special_ids = np.asarray(list(special_ids), dtype=np.int64)
    if special_ids.size and (special_ids.min() < 0 or special_ids.max() >= vocab_size):
        raise ValueError(f"special_ids: expected token ids in [0, {vocab_size}), got {special_ids.tolist()}")
    special = np.zeros(vocab_size, dtype=bool)
    special[special_ids] = True
    ordinary = np.flatnonzero(~special)  # the tokens a random replacement may be
    if replace_random > 0 and ordinary.size == 0:
        raise ValueError("special_ids: every token is special, so there is no token to draw at random")

    chosen = (rng.random(ids.shape) < select) & ~special[ids]  # 15% of the ordinary positions
    action = rng.random(ids.shape)  # one draw decides [MASK] / random / keep
    to_mask = chosen & (action < replace_mask)
    to_random = chosen & (action >= replace_mask) & (action < replace_mask + replace_random)
    inputs = ids.copy()
    inputs[to_mask] = mask_id
    inputs[to_random] = ordinary[rng.integers(0, max(ordinary.size, 1), size=int(to_random.sum()))]
    targets = np.where(chosen, ids, ignore_index).astype(np.int64)
    return inputs, targets
