"""Training the model: its gradients, a whole training step against PyTorch, accumulation,
checkpointing, held-out evaluation, and checkpoints that the loader and the command line run."""
from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import require
from strategies.basics import seeds
from strategies.models import model_configs
from tinytransformer.generation import generate
from tinytransformer.model import TinyTransformer, TransformerConfig, init_params
from tinytransformer.testing import assert_close
from tinytransformer.training.data import byte_tokenizer, encode, random_batches
from tinytransformer.training.gradients import loss_and_gradients
from tinytransformer.training.loop import Trainer, TrainingConfig, save_checkpoint, train_step
from tinytransformer.training.objectives import IGNORE, mask_tokens, next_token_targets
from tinytransformer.training.optim import AdamW

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _model(config, seed, dtype=np.float64, spread=0.3):
    """A model with random parameters away from the initial ones (norm gains not all 1, biases not 0)."""
    rng = np.random.default_rng(seed)
    params = {n: (a + spread * rng.standard_normal(a.shape)).astype(dtype) for n, a in init_params(config, seed).items()}
    return TinyTransformer(config, params)


def _batch(config, seed, B=2, T=None):
    rng = np.random.default_rng(seed + 1)
    T = T or int(rng.integers(1, config.max_seq_len + 1))
    ids = rng.integers(0, config.vocab_size, size=(B, T))
    if config.causal:
        return ids, next_token_targets(ids)
    targets = np.where(rng.random((B, T)) < 0.5, ids, IGNORE)  # the masked LM predicts some positions
    return ids, targets


def _torch_loss(torch, forward, ids, targets, V):
    logits = forward(ids).reshape(-1, V)
    return torch.nn.functional.cross_entropy(logits, torch.from_numpy(targets).reshape(-1), ignore_index=IGNORE)


encoders = st.booleans().map(lambda causal: {"causal": causal})


@given(model_configs(), encoders, seeds())
def test_model_gradients_equal_torch_autograd_for_every_config(config, causal, seed):
    torch = require("torch", "autograd is the oracle for the model's backward pass")
    from tinytransformer.bench.torch_decoder import torch_decoder

    config = dataclasses.replace(config, **causal)
    model = _model(config, seed)
    ids, targets = _batch(config, seed)
    if not (targets != IGNORE).any():
        targets[0, 0] = ids[0, 0]
    loss, n, grads = loss_and_gradients(model, ids, targets)
    tensors, forward = torch_decoder(config, model.params, dtype="float64", causal=config.causal)
    expected = _torch_loss(torch, forward, ids, targets, config.vocab_size)
    expected.backward()
    assert n == int((targets != IGNORE).sum())
    assert_close(loss, expected.item())
    assert grads.keys() == model.params.keys()
    for name, tensor in tensors.items():
        assert_close(grads[name], tensor.grad.numpy(), err_msg=name)


def _train_both(torch, config, seed, steps, batch_size, T, training):
    """Train one model in our trainer and in PyTorch (float64, same weights, same batches, same AdamW,
    schedule and clipping); training.micro_batches batches are accumulated (torch sees them as one) and
    training.checkpoint and .attention choose our backward. An encoder gets BERT-masked batches."""
    from tinytransformer.bench.torch_decoder import torch_adamw, torch_decoder

    model = _model(config, seed, spread=0.05)
    tensors, forward = torch_decoder(config, model.params, dtype="float64", causal=config.causal)
    optimizer = AdamW(model.params, lr=training.max_lr, betas=training.betas, eps=training.eps,
                      weight_decay=training.weight_decay)
    theirs = torch_adamw(tensors, lr=training.max_lr, betas=training.betas, eps=training.eps,
                         weight_decay=training.weight_decay)
    tokens = np.random.default_rng(seed).integers(0, config.vocab_size, size=500)
    batches = random_batches(tokens, batch_size=batch_size, context=T, seed=seed)
    masking = np.random.default_rng(seed + 2)
    for step in range(steps):
        micro = []
        for _ in range(training.micro_batches):
            window = next(batches)
            micro.append((window[:, :-1], window[:, 1:]) if config.causal else
                          mask_tokens(window[:, :-1], vocab_size=config.vocab_size, mask_id=0, special_ids=[0],
                                      rng=masking, select=0.3))
        lr = training.lr(step)
        train_step(model, optimizer, micro, lr=lr, grad_clip=training.grad_clip, checkpoint=training.checkpoint,
                   attention=training.attention)
        ids, targets = np.concatenate([m[0] for m in micro]), np.concatenate([m[1] for m in micro])
        theirs.zero_grad()
        _torch_loss(torch, forward, ids, targets, config.vocab_size).backward()
        torch.nn.utils.clip_grad_norm_(list(tensors.values()), training.grad_clip)
        for group in theirs.param_groups:
            group["lr"] = lr
        theirs.step()
    return model, tensors


LLAMA_LIKE = TransformerConfig(vocab_size=23, d_model=12, n_layers=2, n_heads=3, n_kv_heads=1, d_ff=20,
                               max_seq_len=16)  # RMSNorm, SwiGLU, RoPE, pre-LN, MQA, tied head
GPT2_LIKE = TransformerConfig(vocab_size=23, d_model=12, n_layers=2, n_heads=2, d_ff=20, max_seq_len=16, norm="layer",
                              ffn="gelu", position="learned", block="post", tie_embeddings=False)
ENCODER = TransformerConfig(vocab_size=23, d_model=12, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=20, max_seq_len=16,
                            norm="layer", position="alibi", causal=False)  # GQA, ALiBi, no causal mask
TRAINERS = {  # model, and what our trainer does differently from the plain path
    "llama-like": (LLAMA_LIKE, {}),
    "gpt2-like-post-ln": (GPT2_LIKE, {}),
    "masked-encoder-accumulated-checkpointed-flash": (ENCODER, dict(micro_batches=2, checkpoint=True,
                                                                     attention="flash")),
}


@pytest.mark.parametrize("name", TRAINERS)
def test_twenty_training_steps_equal_pytorch(name):
    """The law that proves the trainer: same float64 weights, same batches, same AdamW, schedule and
    clipping; after 20 steps every parameter agrees with PyTorch's to 1e-8 relative, entry by entry.
    (Every other configuration choice is covered by test_model_gradients_equal_torch_autograd_for_every_config.)"""
    torch = require("torch", "PyTorch's training step is the oracle")
    config, options = TRAINERS[name]
    training = TrainingConfig(total_steps=20, warmup_steps=5, max_lr=1e-2, min_lr=1e-3, weight_decay=0.1,
                              grad_clip=0.5, **options)
    model, tensors = _train_both(torch, config, 7, 20, batch_size=3, T=9, training=training)
    for name, tensor in tensors.items():
        assert_close(model.params[name], tensor.detach().numpy(), rtol=1e-8, atol=0.0, err_msg=name)


@given(st.integers(2, 4), st.booleans(), seeds())
def test_accumulating_k_micro_batches_equals_one_batch_k_times_larger(k, masked, seed):
    config = TransformerConfig(vocab_size=17, d_model=8, n_layers=2, n_heads=2, d_ff=12, max_seq_len=16,
                               causal=not masked)
    rng = np.random.default_rng(seed)
    micro = []
    for _ in range(k):
        ids = rng.integers(1, 17, size=(2, 7))
        if masked:  # a different number of chosen positions in each micro-batch
            micro.append(mask_tokens(ids, vocab_size=17, mask_id=0, special_ids=[0], rng=rng, select=0.4))
            micro[-1][1][0, 0] = ids[0, 0]  # at least one target each
        else:
            micro.append((ids, next_token_targets(ids)))
    whole = (np.concatenate([m[0] for m in micro]), np.concatenate([m[1] for m in micro]))
    results = []
    for batches in (micro, [whole]):
        model = _model(config, seed)
        optimizer = AdamW(model.params, lr=1e-2)
        record = train_step(model, optimizer, batches, lr=1e-2, grad_clip=None)
        results.append((record, model.params))
    (micro_record, micro_params), (whole_record, whole_params) = results
    assert micro_record["targets"] == whole_record["targets"]
    assert_close(micro_record["loss"], whole_record["loss"])
    assert_close(micro_record["grad_norm"], whole_record["grad_norm"])
    for name in micro_params:
        assert_close(micro_params[name], whole_params[name], err_msg=name)


@given(model_configs(), encoders, seeds())
def test_checkpointing_and_flash_attention_give_the_same_gradients(config, causal, seed):
    config = dataclasses.replace(config, **causal)
    model = _model(config, seed)
    ids, targets = _batch(config, seed)
    plain = loss_and_gradients(model, ids, targets)
    for options in ({"checkpoint": True}, {"attention": "flash"}, {"checkpoint": True, "attention": "flash"}):
        loss, n, grads = loss_and_gradients(model, ids, targets, **options)
        assert loss == pytest.approx(plain[0], rel=1e-12) and n == plain[1]
        for name in grads:
            assert_close(grads[name], plain[2][name], err_msg=f"{name} with {options}")


def test_checkpointing_keeps_less_in_memory():
    config = TransformerConfig(vocab_size=32, d_model=32, n_layers=12, n_heads=1, d_ff=32, max_seq_len=32)
    model = TinyTransformer(config, seed=0)  # many blocks, small weights: activations dominate the memory
    ids = np.random.default_rng(0).integers(0, 32, size=(8, 32))
    targets = next_token_targets(ids)
    peaks = {}
    for checkpoint in (False, True):
        tracemalloc.start()
        loss_and_gradients(model, ids, targets, checkpoint=checkpoint)
        peaks[checkpoint] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[True] < 0.5 * peaks[False], peaks  # measured: 0.36


@given(seeds(), st.integers(1, 5), st.integers(1, 12))
def test_batches_are_windows_of_the_tokens_drawn_reproducibly_from_the_seed(seed, batch_size, context):
    tokens = np.arange(3, 3 + context + 1 + 20)  # each token says where it is
    first, second = (random_batches(tokens, batch_size=batch_size, context=context, seed=seed) for _ in range(2))
    other = random_batches(tokens, batch_size=batch_size, context=context, seed=seed + 1)
    draws = [next(first) for _ in range(30)]
    assert all(np.array_equal(a, next(second)) for a in draws)  # the same seed, the same batches
    assert not all(np.array_equal(a, next(other)) for a in draws)  # another seed, others (30 draws of 21 offsets)
    for batch in draws:
        assert batch.shape == (batch_size, context + 1) and batch.dtype == np.int64
        assert np.all(np.diff(batch, axis=1) == 1)  # consecutive tokens of the text
    starts = np.concatenate([b[:, 0] for b in draws]) - 3
    assert starts.min() >= 0 and starts.max() <= tokens.size - context - 1


def test_trainers_given_the_same_seed_see_the_same_batches_of_the_built_in_corpus():
    from tinytransformer.corpus import builtin_corpus
    from tinytransformer.training.data import byte_corpus

    tokenizer, train, heldout, n_bytes = byte_corpus(max_train_bytes=60_000, max_heldout_chars=4000)
    assert tokenizer.decode(train.tolist()) in builtin_corpus()  # one token per byte of the corpus
    assert heldout[0] == tokenizer.special_tokens["<|endoftext|>"] and heldout.size == n_bytes + 1
    config = TransformerConfig(vocab_size=tokenizer.vocab_size, d_model=8, n_layers=1, n_heads=2, max_seq_len=16)
    training = TrainingConfig(batch_size=3, context=16, seed=5)
    one, two = (Trainer(TinyTransformer(config, seed=0), train, training) for _ in range(2))
    for _ in range(3):
        (ids, targets), (ids2, targets2) = one.next_micro_batch(), two.next_micro_batch()
        assert np.array_equal(ids, ids2) and np.array_equal(targets, targets2)
        assert ids.shape == (3, 16) and np.array_equal(ids[:, 1:], targets[:, :-1])  # targets: the ids shifted


def _trained_bpe():
    from tinytransformer.tokenizers.bpe import BPETokenizer
    from tinytransformer.tokenizers.unicode_regex import GPT2_PATTERN

    text = "the cat sat on the mat. the dog ate the hat! héllo wörld " * 20
    return BPETokenizer.train(text, 256 + 20 + 1, pattern=GPT2_PATTERN, special_tokens=["<|endoftext|>"])


@pytest.mark.parametrize("tokenizer", [byte_tokenizer, _trained_bpe], ids=["byte-level", "trained-bpe"])
def test_checkpoint_file_loads_and_runs_with_load_model_and_the_command_line(tokenizer, tmp_path, capsys):
    from tinytransformer import cli
    from tinytransformer.llama import load_model

    tokenizer = tokenizer()
    text = "the cat sat on the mat. " * 40
    config = TransformerConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=32,
                               eos_id=tokenizer.special_tokens["<|endoftext|>"], name="tiny byte model")
    model = TinyTransformer(config, seed=0)
    trainer = Trainer(model, encode(tokenizer, text), TrainingConfig(batch_size=4, context=16, total_steps=3,
                                                                     warmup_steps=1), tokenizer=tokenizer)
    for _ in range(3):
        trainer.step()
    path = trainer.save(tmp_path / "tiny.gguf")
    loaded = load_model(path)
    eos = tokenizer.special_tokens["<|endoftext|>"]
    c = loaded.model.config
    assert (c.vocab_size, c.eos_id, c.name) == (eos + 1, eos, config.name)
    assert loaded.metadata["training.step"] == 3
    for probe in ("the cat", "héllo wörld, the hat!<|endoftext|>the  dog\n"):  # the same ids, merges and all
        assert loaded.tokenizer.encode(probe) == encode(tokenizer, probe).tolist()
    ids = encode(tokenizer, "the cat")
    assert_close(loaded.model.forward(ids), model.forward(ids))
    assert not list(tmp_path.glob("*.partial"))
    assert cli.main(["generate", "the cat", "--model", str(path), "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("the cat")  # the prompt, then what the model continues with


def test_masked_language_model_trains_and_saves_as_an_encoder(tmp_path):
    from tinytransformer.llama import load_model

    tokenizer = byte_tokenizer(("<|endoftext|>", "<|mask|>"))
    mask_id = tokenizer.special_tokens["<|mask|>"]
    config = TransformerConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=16,
                               causal=False)
    training = TrainingConfig(batch_size=8, context=16, total_steps=40, warmup_steps=2, max_lr=1e-2,
                              objective="masked", mask_id=mask_id, special_ids=(256,))
    tokens = encode(tokenizer, "abcdefgh" * 50)
    trainer = Trainer(TinyTransformer(config, seed=0), tokens, training, tokenizer=tokenizer)
    before = trainer.evaluate(tokens[:200])
    for _ in range(40):
        trainer.step()
    assert trainer.evaluate(tokens[:200]) < before / 2
    loaded = load_model(save_checkpoint(trainer.model, tmp_path / "encoder.gguf", tokenizer=tokenizer)).model
    assert loaded.config.causal is False
    with pytest.raises(ValueError, match="an encoder"):
        generate(loaded, [1, 2], 3)


def test_a_diverged_step_raises_and_leaves_the_parameters_alone():
    config = TransformerConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, max_seq_len=16)
    model = _model(config, 0)
    model.params["output_norm.weight"][0] = np.inf  # the logits become inf - inf = NaN
    before = {name: array.copy() for name, array in model.params.items()}
    ids = np.arange(10).reshape(2, 5)
    with pytest.raises(FloatingPointError, match="expected finite numbers; the parameters were not updated"), \
            np.errstate(invalid="ignore", over="ignore"):  # NumPy's own warnings about the NaN on the way
        train_step(model, AdamW(model.params), [(ids, next_token_targets(ids))], lr=1e-2, grad_clip=1.0)
    for name, array in model.params.items():
        assert np.array_equal(array, before[name], equal_nan=True), name


def _regex_free_bpe():
    from tinytransformer.tokenizers.bpe import BPETokenizer

    return BPETokenizer.train("aaab aaab " * 5, 256 + 2)  # merges learnt across spaces: not GPT-2's form


@pytest.mark.parametrize("call, message", [
    (lambda m: loss_and_gradients(m, np.zeros((2, 3), int), np.zeros((2, 4), int)), "ids, targets: expected"),
    (lambda m: loss_and_gradients(m, np.zeros((1, 3), int), np.zeros((1, 3), int), attention="fast"),
     "attention: expected one of"),
    (lambda m: Trainer(m, np.arange(50), TrainingConfig(context=64)), "context: expected at most"),
    (lambda m: Trainer(m, np.arange(50), TrainingConfig(objective="masked", mask_id=1, context=8)),
     "the masked objective needs an encoder"),
    (lambda m: TrainingConfig(objective="masked"), "mask_id: the masked objective needs"),
    (lambda m: TrainingConfig(objective="bert"), "objective: expected one of"),
    (lambda m: TrainingConfig(batch_size=0), "batch_size: expected an integer >= 1"),
    (lambda m: random_batches(np.arange(5), batch_size=2, context=8, seed=0), "tokens: expected at least context"),
    (lambda m: Trainer(m, np.arange(5), TrainingConfig(context=8)), "tokens: expected at least context"),
    (lambda m: TrainingConfig(attention="fast"), "attention: expected one of"),
    (lambda m: TrainingConfig(max_lr=0.0), "max_lr: expected a finite number > 0"),
    (lambda m: TrainingConfig(max_lr=1e-5, min_lr=1e-4), r"min_lr: expected a number in \[0, max_lr"),
    (lambda m: TrainingConfig(warmup_steps=-1), "warmup_steps: expected an integer >= 0"),
    (lambda m: TrainingConfig(grad_clip=0.0), "grad_clip: expected a finite number > 0"),
    (lambda m: save_checkpoint(m, "/nonexistent/never.gguf", tokenizer=_regex_free_bpe()), "tokenizer: a GGUF byte-level"),
])
def test_bad_input_raises_a_clear_value_error(call, message):
    model = TinyTransformer(TransformerConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, max_seq_len=32))
    with pytest.raises(ValueError, match=message):
        call(model)
