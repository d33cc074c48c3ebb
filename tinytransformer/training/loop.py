"""The training loop: batches in, gradients, clipping, AdamW, schedule; evaluation and checkpoints.

One optimiser step of `Trainer.step()`:

    lr = warmup_cosine(step)                               the schedule
    for each of the k micro-batches:                       gradient accumulation
        loss_j, n_j, g_j = loss_and_gradients(model, ...)  the model's forward, our backward
        g += g_j * n_j / N                                 N = sum of n_j (targets counted)
    clip g to global norm <= grad_clip
    AdamW step with g at rate lr

Weighting each micro-batch by its share of the counted targets makes k
micro-batches give exactly the gradient of one batch k times the size, even
when they count different numbers of targets (the masked LM); a test checks it.
Accumulation is how a small machine trains with a large batch: the memory is
that of one micro-batch.

Two objectives (`objectives`): "next-token" (GPT; the model must be causal),
where a batch of B windows of T + 1 tokens gives inputs ids[:, :-1] and targets
ids[:, 1:]; and "masked" (BERT; the model's config has causal=False), where
windows of T tokens are masked by `mask_tokens` and only the chosen positions
are predicted.

Checkpoints are GGUF files written by `llama.save_model` with the tokenizer
(`data.tokenizer_metadata`) and a few "training.*" keys: `llama.load_model`
and the `tinytransformer` command load and run them. No pickle. `Trainer.save`
also writes what a resumed run needs: AdamW's moments (tensors "adam.m.NAME",
"adam.v.NAME") and step, the step count (the schedule's position) and the two
random streams' states (the data position and the masking draws) as JSON;
`Trainer.resume(path)` reads them back, and the run goes on step for step as if
it had never stopped.

    >>> from tinytransformer.model import TinyTransformer, TransformerConfig
    >>> model = TinyTransformer(TransformerConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2), seed=0)
    >>> tokens = np.arange(200) % 11
    >>> config = TrainingConfig(batch_size=4, context=8, total_steps=60, warmup_steps=5, max_lr=3e-2)
    >>> trainer = Trainer(model, tokens, config)
    >>> round(trainer.evaluate(tokens[:100]), 1)          # about log 11 = 2.4 nats: chance
    2.4
    >>> for _ in range(60):
    ...     _ = trainer.step()
    >>> trainer.evaluate(tokens[:100]) < 0.2              # counting mod 11 is learnt quickly
    True

Does not handle: data-parallel or multi-process training, mixed precision and
loss scaling, dropout, resuming a float64 model exactly (checkpoints hold float32).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tinytransformer._validate import nonnegative_int, positive_float, positive_int, seed_value
from tinytransformer.metrics import heldout_loss, target_loss
from tinytransformer.positional import rope_half_permutation
from tinytransformer.training.data import random_batches, tokenizer_metadata
from tinytransformer.training.gradients import ATTENTION_BACKWARDS, loss_and_gradients
from tinytransformer.training.objectives import mask_tokens
from tinytransformer.training.optim import AdamW, clip_grad_norm, global_norm, warmup_cosine

__all__ = ["TrainingConfig", "Trainer", "train_step", "save_checkpoint"]

OBJECTIVES = ("next-token", "masked")


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = 8  # B: windows per micro-batch
    context: int = 64  # T: tokens per window (the model sees T, predicts T)
    micro_batches: int = 1  # k: micro-batches accumulated into one optimiser step (batch = k * B)
    total_steps: int = 1000  # optimiser steps (the schedule ends here)
    max_lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.99)
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # None: no clipping
    objective: str = "next-token"  # or "masked"
    mask_id: int | None = None  # the [MASK] token, for the masked objective
    special_ids: tuple = ()  # tokens that masking never chooses
    checkpoint: bool = False  # activation checkpointing
    attention: str = "plain"  # attention backward: "plain" or "flash"
    seed: int = 0  # batches (and masking) come from this seed

    def __post_init__(self):
        for name in ("batch_size", "context", "micro_batches", "total_steps"):
            positive_int(getattr(self, name), name)
        if seed_value(self.seed) is None or isinstance(self.seed, np.random.Generator):  # both streams need an int
            raise ValueError(f"seed: expected an integer seed >= 0, got {self.seed!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: expected one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective == "masked" and self.mask_id is None:
            raise ValueError("mask_id: the masked objective needs the id of the [MASK] token")
        if self.attention not in ATTENTION_BACKWARDS:
            raise ValueError(f"attention: expected one of {ATTENTION_BACKWARDS}, got {self.attention!r}")
        positive_float(self.max_lr, "max_lr")
        if not 0.0 <= self.min_lr <= self.max_lr:
            raise ValueError(f"min_lr: expected a number in [0, max_lr={self.max_lr}], got {self.min_lr!r}")
        nonnegative_int(self.warmup_steps, "warmup_steps")
        if self.grad_clip is not None:
            positive_float(self.grad_clip, "grad_clip")

    def lr(self, step: int) -> float:
        """The learning rate of optimiser step `step` (0-based): warm-up, then cosine to min_lr."""
        return warmup_cosine(step, max_lr=self.max_lr, warmup_steps=self.warmup_steps,
                             total_steps=self.total_steps, min_lr=self.min_lr)


def train_step(model, optimizer: AdamW, micro_batches, *, lr: float, grad_clip: float | None = None,
               checkpoint: bool = False, attention: str = "plain") -> dict:
    """One optimiser step over a list of micro-batches (ids [B, T], targets [B, T]).

    Returns {"loss": mean over every counted target, "grad_norm": before clipping,
    "targets": how many were counted}. A loss or gradient that is not finite (the run has
    diverged) raises FloatingPointError before AdamW would write NaN into every parameter.
    """
    results = [loss_and_gradients(model, ids, targets, checkpoint=checkpoint, attention=attention)
               for ids, targets in micro_batches]
    total = sum(n for _, n, _ in results)
    grads = {name: np.zeros_like(p) for name, p in model.params.items()}
    for _, n, g in results:
        weight = n / max(total, 1)  # this micro-batch's share of the counted targets
        for name, value in g.items():
            grads[name] += value * grads[name].dtype.type(weight)
    loss = sum(loss * n for loss, n, _ in results) / max(total, 1)
    norm = clip_grad_norm(grads, grad_clip) if grad_clip is not None else global_norm(grads)
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise FloatingPointError(f"loss {loss}, gradient norm {norm}: expected finite numbers; the parameters "
                                 "were not updated (lower the learning rate, or clip the gradients)")
    optimizer.step(grads, lr=lr)
    return {"loss": loss, "grad_norm": norm, "targets": total}


class Trainer:
    """Trains `model` (in place) on a token array with a TrainingConfig.

    .step() takes one optimiser step and returns its record; .history holds
    them all; .evaluate(tokens) is the mean held-out loss; .save(path) writes a
    GGUF checkpoint.
    """

    def __init__(self, model, tokens, config: TrainingConfig, *, tokenizer=None):
        c = model.config
        if config.objective == "next-token" and not c.causal:
            raise ValueError("model: the next-token objective needs a causal model (config.causal=True)")
        if config.objective == "masked" and c.causal:
            raise ValueError("model: the masked objective needs an encoder (config.causal=False)")
        if config.context > c.max_seq_len:
            raise ValueError(f"context: expected at most the model's max_seq_len={c.max_seq_len}, "
                             f"got {config.context}")
        self.model, self.config, self.tokenizer = model, config, tokenizer
        self.optimizer = AdamW(model.params, lr=config.max_lr, betas=config.betas, eps=config.eps,
                               weight_decay=config.weight_decay)
        extra = 1 if config.objective == "next-token" else 0  # next-token windows carry one more token
        self._data_rng = np.random.default_rng(config.seed)  # the data position: its state is saved
        self._n_tokens = int(np.size(tokens))
        self._batches = random_batches(np.asarray(tokens), batch_size=config.batch_size,
                                       context=config.context - 1 + extra, seed=self._data_rng)
        self._rng = np.random.default_rng([config.seed, 1])  # masking draws
        self.step_count = 0
        self.history: list[dict] = []

    def next_micro_batch(self):
        """(ids, targets) [B, T] for the configured objective, from the seeded batch stream."""
        window = next(self._batches)
        if self.config.objective == "next-token":
            return window[:, :-1], window[:, 1:]
        c = self.config
        return mask_tokens(window, vocab_size=self.model.config.vocab_size, mask_id=c.mask_id,
                           special_ids=(c.mask_id, *c.special_ids), rng=self._rng)

    def step(self) -> dict:
        """One optimiser step (k micro-batches); returns {"step", "lr", "loss", "grad_norm", "targets", "seconds"}."""
        c = self.config
        start = time.perf_counter()
        lr = c.lr(self.step_count)
        batches = [self.next_micro_batch() for _ in range(c.micro_batches)]
        record = train_step(self.model, self.optimizer, batches, lr=lr, grad_clip=c.grad_clip,
                            checkpoint=c.checkpoint, attention=c.attention)
        record.update(step=self.step_count, lr=lr, seconds=time.perf_counter() - start)
        self.step_count += 1
        self.history.append(record)
        return record

    def evaluate(self, tokens, *, batch_size: int = 16) -> float:
        """Mean loss (nats per predicted token) on a held-out token array; see metrics.heldout_loss."""
        if self.config.objective == "masked":
            rng = np.random.default_rng([self.config.seed, 2])  # the same masks every evaluation
            windows = _windows(np.asarray(tokens), self.config.context)
            c = self.config
            ids, targets = mask_tokens(windows, vocab_size=self.model.config.vocab_size, mask_id=c.mask_id,
                                       special_ids=(c.mask_id, *c.special_ids), rng=rng)
            total, count = target_loss(self.model, ids, targets, batch_size=batch_size)
            return total / max(count, 1)
        total, count = heldout_loss(self.model, tokens, context=self.config.context, batch_size=batch_size)
        return total / max(count, 1)

    def save(self, path, **metadata) -> Path:
        """Write the model as a GGUF checkpoint (with the tokenizer, if the trainer has one)."""
        info = {"training.step": np.uint32(self.step_count), **metadata}
        if self.history:
            info["training.loss"] = np.float32(self.history[-1]["loss"])
        info["training.config"] = repr(asdict(self.config))
        info["training.tokens"] = np.uint64(self._n_tokens)
        info["training.adam_step"] = np.uint64(self.optimizer.t)
        info["training.data_rng"] = json.dumps(self._data_rng.bit_generator.state)
        info["training.mask_rng"] = json.dumps(self._rng.bit_generator.state)
        state = {f"adam.{moment}.{name}": np.asarray(array, dtype=np.float32)
                 for moment, arrays in (("m", self.optimizer.m), ("v", self.optimizer.v))
                 for name, array in arrays.items()}
        return save_checkpoint(self.model, path, tokenizer=self.tokenizer, metadata=info, extra_tensors=state)

    def resume(self, path) -> "Trainer":
        """Continue from a checkpoint that .save wrote: weights, AdamW state, step, data position.

        The trainer must have the checkpoint's TrainingConfig and as many tokens; otherwise a
        ValueError names the file and what differs.
        """
        from tinytransformer.gguf.reader import GGUFFile
        from tinytransformer.llama import load_model

        loaded = load_model(path)
        meta, where = loaded.metadata, f"checkpoint {str(path)!r}"
        missing = [k for k in ("training.step", "training.adam_step", "training.data_rng", "training.mask_rng",
                               "training.config", "training.tokens") if k not in meta]
        if missing:
            raise ValueError(f"{where}: expected a resumable checkpoint (Trainer.save); it lacks {missing}")
        if meta["training.config"] != repr(asdict(self.config)):
            raise ValueError(f"{where}: saved with TrainingConfig {meta['training.config']}, "
                             f"but this trainer has {asdict(self.config)}")
        if int(meta["training.tokens"]) != self._n_tokens:
            raise ValueError(f"{where}: trained on {int(meta['training.tokens'])} tokens, "
                             f"but this trainer has {self._n_tokens}")
        for name, p in self.model.params.items():
            if loaded.model.params[name].shape != p.shape:
                raise ValueError(f"{where}: tensor {name!r} has shape {loaded.model.params[name].shape}, "
                                 f"expected {p.shape}")
        state = {"t": np.array([int(meta["training.adam_step"])])}
        with GGUFFile(path) as f:
            for moment in ("m", "v"):
                for name in self.model.params:
                    key = f"adam.{moment}.{name}"
                    if key not in f.tensors:
                        raise ValueError(f"{where}: the optimiser tensor {key!r} is missing")
                    state[f"{moment}.{name}"] = np.array(f.tensor(key))
        self.optimizer.load_state_dict(state)
        c = self.model.config
        permuted = loaded.model.config.rope_interleaved != c.rope_interleaved  # save_model's llama row order
        for name, p in self.model.params.items():  # in place: the optimiser holds these arrays
            heads = {"attn_q": c.n_heads, "attn_k": c.kv_heads}.get(name.split(".")[-2]) if permuted else None
            if heads is None:
                p[...] = loaded.model.params[name]
            else:  # save_model wrote rows[j] of each head as row j; put them back
                order = np.argsort(rope_half_permutation(c.head_dim))
                p[(np.arange(heads)[:, None] * c.head_dim + order[None, :]).reshape(-1)] = loaded.model.params[name]
        self.step_count = int(meta["training.step"])
        self._data_rng.bit_generator.state = json.loads(meta["training.data_rng"])
        self._rng.bit_generator.state = json.loads(meta["training.mask_rng"])
        return self


def _windows(tokens, context):
    n = tokens.size // context
    if n == 0:
        raise ValueError(f"tokens: expected at least context = {context} tokens, got {tokens.size}")
    return tokens[:n * context].reshape(n, context).astype(np.int64)


def save_checkpoint(model, path, *, tokenizer=None, metadata: dict | None = None,
                    extra_tensors: dict | None = None) -> Path:
    """model as a GGUF file (float32 tensors) with the tokenizer's metadata; written once, to a
    new temporary file in the same folder (O_EXCL|O_NOFOLLOW), and renamed into place."""
    from tinytransformer.llama import save_model

    path = Path(path)
    meta = dict(metadata or {})
    if tokenizer is not None:
        meta.update(tokenizer_metadata(tokenizer))
    save_model(model, path, metadata=meta, extra_tensors=extra_tensors, checksum=True)  # write_gguf writes through _files.atomic_writer
    return path
