"""Benchmark: training our NumPy model next to PyTorch eager, and what 15 minutes of training buys.

    python -m tinytransformer.bench train                       # everything (about 40 minutes on 2 cores)
    python -m tinytransformer.bench train --only step,memory    # the step time and memory alone
    python -m tinytransformer.bench train --quick               # small sizes, to check that it runs
    python -m tinytransformer.bench train --json out.json --plot-dir docs/

Four measurements, each taken in this one run, with the BLAS threads and torch's
threads set to the same number (--threads):

1. step: the time of one training step (forward, backward, clipping, AdamW) of the
   same model in our NumPy trainer and in PyTorch eager (4 layers, d = 128, 4 heads,
   T = 128, batch 8, byte vocabulary, float32), best of --repeats, alternating.
2. memory: the peak of NumPy's allocations during our step (tracemalloc), with and
   without activation checkpointing.
3. bpb: a byte-level decoder trained for --minutes (CPU time) on the built-in corpus, its bits
   per byte on chapter 7's held-out bytes as it trains, next to the best n-gram
   (byte 5-gram, modified Kneser-Ney) fitted and scored in the same run, and when the
   two curves meet (measured, or extrapolated by `crossing`).
4. nanogpt: nanoGPT's CPU configuration for character-level text (4 layers, 4 heads,
   128 wide, context 64, batch 12, --nanogpt-iters iterations, GPT-2's LayerNorm, GELU
   and learned positions) trained on our corpus by our trainer and by PyTorch from the
   same initial weights on the same batches: the two loss curves.

PyTorch is needed for 1 and 4 (pip install -e ".[parity]"); without it they are skipped
with the reason.

Does not handle: GPUs, torch.compile, multi-process training.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import time
import tracemalloc

import numpy as np

from tinytransformer.bench.common import save_figure, write_report
from tinytransformer.corpus import split_corpus
from tinytransformer.generation import generate
from tinytransformer.metrics import heldout_bits_per_byte
from tinytransformer.model import TinyTransformer, TransformerConfig
from tinytransformer.ngram.comparison import bits_per_byte_table
from tinytransformer.threads import blas_description, blas_threads
from tinytransformer.training.data import byte_corpus, encode, random_batches
from tinytransformer.training.loop import Trainer, TrainingConfig, train_step
from tinytransformer.training.objectives import IGNORE
from tinytransformer.training.optim import AdamW

SECTIONS = ("step", "memory", "bpb", "nanogpt")
STEP_MODEL = dict(d_model=128, n_layers=4, n_heads=4, max_seq_len=128)  # + the byte vocabulary
NANOGPT = dict(d_model=128, n_layers=4, n_heads=4, max_seq_len=64, norm="layer", ffn="gelu", position="learned")
NANOGPT_TRAINING = dict(batch_size=12, context=64, max_lr=1e-3, min_lr=1e-4, warmup_steps=100, weight_decay=0.1,
                        betas=(0.9, 0.99), grad_clip=1.0)


# --- data and the n-gram to beat ------------------------------------------------------------

QUICK_CORPUS = dict(max_train_bytes=60_000, max_heldout_chars=4000)  # --quick: the split's small version


def best_ngram(quick: bool = False) -> dict:
    """The byte-level 5-gram (modified Kneser-Ney) on the same split, fitted and scored now."""
    sizes = QUICK_CORPUS if quick else {}
    train, heldout = split_corpus(max_train_bytes=sizes.get("max_train_bytes"))
    if quick:
        heldout = heldout[:sizes["max_heldout_chars"]]
    order = 3 if quick else 5
    row = bits_per_byte_table(train, heldout, orders=(order,), smoothings=("modified-kneser-ney",),
                              levels=("byte",))[0]
    return {"order": order, "bpb": row["bpb"], "fit_s": row["fit_s"]}


# --- 1. step time ----------------------------------------------------------------------------


def torch_trainer(config, params, training: TrainingConfig, dtype="float32"):
    """step(ids, targets, lr) -> loss: the same training step in PyTorch (our schedule's lr)."""
    import torch

    from tinytransformer.bench.torch_decoder import torch_adamw, torch_decoder

    tensors, forward = torch_decoder(config, params, dtype=dtype)
    optimizer = torch_adamw(tensors, lr=training.max_lr, betas=training.betas, eps=training.eps,
                            weight_decay=training.weight_decay)
    leaves = list(tensors.values())

    def step(ids, targets, lr):
        optimizer.zero_grad(set_to_none=True)
        logits = forward(ids)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 torch.from_numpy(targets).reshape(-1), ignore_index=IGNORE)
        loss.backward()
        if training.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(leaves, training.grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        return loss.item()

    return step, tensors


def measure_step(repeats: int, quick: bool) -> dict:
    """Best wall-clock seconds of one training step, ours and PyTorch's, alternating."""
    sizes = dict(STEP_MODEL, n_layers=1, max_seq_len=32) if quick else STEP_MODEL
    config = TransformerConfig(vocab_size=257, **sizes)
    B, T = (2, 32) if quick else (8, 128)
    model = TinyTransformer(config, seed=0)
    training = TrainingConfig(batch_size=B, context=T)
    ids = np.random.default_rng(0).integers(0, 257, size=(B, T + 1))
    batch = (ids[:, :-1], ids[:, 1:])
    optimizer = AdamW(model.params, lr=1e-3, betas=training.betas, weight_decay=training.weight_decay)
    tasks = {"ours (NumPy)": lambda: train_step(model, optimizer, [batch], lr=1e-3, grad_clip=1.0)}
    try:
        step, _ = torch_trainer(config, {n: a.copy() for n, a in model.params.items()}, training)
        tasks["PyTorch eager"] = lambda: step(*batch, 1e-3)
    except ImportError as error:
        print(f"  PyTorch skipped: {error}")
    for task in tasks.values():  # warm up (first calls allocate, torch builds its kernels)
        task()
    best = {name: float("inf") for name in tasks}
    for _ in range(repeats):
        for name, task in tasks.items():
            start = time.perf_counter()
            task()
            best[name] = min(best[name], time.perf_counter() - start)
    result = {"model": sizes, "batch": B, "context": T, "seconds": best,
              "tokens_per_s": {name: B * T / s for name, s in best.items()}}
    if len(best) == 2:
        result["speed_vs_torch"] = best["PyTorch eager"] / best["ours (NumPy)"]
    return result


# --- 2. memory -------------------------------------------------------------------------------


def measure_memory(quick: bool) -> dict:
    """Peak bytes allocated by NumPy during one of our training steps, with and without checkpointing."""
    sizes = dict(STEP_MODEL, n_layers=2, max_seq_len=32) if quick else STEP_MODEL
    config = TransformerConfig(vocab_size=257, **sizes)
    B, T = (2, 32) if quick else (8, 128)
    ids = np.random.default_rng(0).integers(0, 257, size=(B, T + 1))
    peaks = {}
    for checkpoint in (False, True):
        model = TinyTransformer(config, seed=0)
        optimizer = AdamW(model.params, lr=1e-3)
        train_step(model, optimizer, [(ids[:, :-1], ids[:, 1:])], lr=1e-3, checkpoint=checkpoint)  # moments exist
        tracemalloc.start()
        train_step(model, optimizer, [(ids[:, :-1], ids[:, 1:])], lr=1e-3, checkpoint=checkpoint)
        peaks["with checkpointing" if checkpoint else "without"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    params = sum(a.nbytes for a in TinyTransformer(config, seed=0).params.values())
    return {"model": sizes, "batch": B, "context": T, "peak_bytes": peaks, "parameter_bytes": params}


# --- 3. bits per byte against training time --------------------------------------------------


def train_for(minutes: float, *, quick: bool, eval_every: float, sizes: dict, training: TrainingConfig,
              on_eval=None, fit_schedule: bool = True) -> dict:
    """Train a byte-level decoder for `minutes` of CPU time of this process (on a shared machine the
    wall time depends on the other jobs, the CPU time much less); evaluate held-out bits per byte every
    `eval_every` minutes (evaluation time not counted as training time). fit_schedule: after 20 steps,
    set total_steps so that the cosine schedule ends when the budget does, and shorten the warm-up to
    a tenth of that (at least the 20 steps already taken)."""
    tokenizer, train_tokens, heldout_tokens, n_bytes = byte_corpus(**(QUICK_CORPUS if quick else {}))
    config = TransformerConfig(vocab_size=tokenizer.vocab_size, eos_id=256, name="byte-level decoder", **sizes)
    model = TinyTransformer(config, seed=training.seed)
    trainer = Trainer(model, train_tokens, training, tokenizer=tokenizer)
    bpb = heldout_bits_per_byte(model, heldout_tokens, n_bytes, training.context)
    curve = [{"minutes": 0.0, "step": 0, "bpb": bpb}]
    trained, wall, next_eval = 0.0, 0.0, eval_every
    losses, cpu = [], []
    while trained < minutes * 60 and trainer.step_count < trainer.config.total_steps:
        start = time.process_time()
        record = trainer.step()
        cpu.append(time.process_time() - start)
        trained += cpu[-1]
        wall += record["seconds"]
        losses.append(record["loss"])
        if fit_schedule and trainer.step_count == 20:  # size the cosine to the budget (still in warm-up)
            per_step = float(np.median(cpu[5:]))
            total = max(21, int(minutes * 60 / per_step))
            # the warm-up takes at most a tenth of the budget (100 steps of a 110-step budget leave no cosine)
            warmup = max(20, min(trainer.config.warmup_steps, total // 10))
            trainer.config = dataclasses.replace(trainer.config, total_steps=total, warmup_steps=warmup)
        if trained >= next_eval * 60 or trained >= minutes * 60 or trainer.step_count == training.total_steps:
            bpb = heldout_bits_per_byte(model, heldout_tokens, n_bytes, training.context)
            point = {"minutes": trained / 60, "wall_minutes": wall / 60, "step": trainer.step_count, "bpb": bpb,
                     "train_bpb": float(np.mean(losses[-50:])) / math.log(2)}
            curve.append(point)
            if on_eval is not None:
                on_eval(point)
            next_eval += eval_every
    return {"model": sizes, "training": {k: v for k, v in vars(trainer.config).items()}, "curve": curve,
            "heldout_bytes": n_bytes, "trainer": trainer}


def crossing(curve: list[dict], target: float, *, fit_points: int = 4) -> dict | None:
    """When the held-out curve reaches `target` bits per byte (the n-gram's), in CPU minutes of training.

    {"minutes": t, "measured": True} at the first evaluation at or below target; otherwise an
    extrapolation, {"minutes": t, "measured": False, "fit": (a, b)}: bits per byte = a + b ln(minutes)
    fitted by least squares to the last `fit_points` evaluations (a loss curve that flattens is
    close to a straight line against log time over a short stretch), solved for target. None when
    there are fewer than two evaluations after the start, or the fitted line does not fall. An
    extrapolation is a guess: the true curve flattens further, so the crossing, if any, comes later.
    """
    for point in curve:
        if point["minutes"] > 0 and point["bpb"] <= target:
            return {"minutes": point["minutes"], "measured": True}
    points = [p for p in curve if p["minutes"] > 0][-fit_points:]
    if len(points) < 2:
        return None
    log_t = np.log([p["minutes"] for p in points])
    b, a = np.polyfit(log_t, [p["bpb"] for p in points], 1)  # bpb = a + b ln t
    if not b < 0:
        return None
    return {"minutes": float(np.exp((target - a) / b)), "measured": False, "fit": (float(a), float(b))}


def describe_crossing(curve: list[dict], target: float, meet: dict | None) -> str:
    """One line for the report: the best held-out bits per byte, and when the n-gram is (or would be) reached."""
    best = min(p["bpb"] for p in curve)
    line = f"best held-out {best:.3f} bits/byte against the n-gram's {target:.3f}: "
    if meet is None:
        return line + "the curve is not falling over its last evaluations; no crossing to estimate"
    if meet["measured"]:
        return line + f"the decoder reached the n-gram after {meet['minutes']:.1f} CPU minutes"
    a, b = meet["fit"]
    return line + (f"not reached; bits/byte = {a:.3f} {b:+.3f} ln(minutes), fitted to the last evaluations, "
                   f"would meet it after about {meet['minutes']:.0f} CPU minutes (an extrapolation)")


# --- 4. nanoGPT's configuration, ours and PyTorch's ------------------------------------------


def nanogpt_curves(iters: int, quick: bool, eval_every: int = 250) -> dict:
    """Loss per iteration of the same run in our trainer and in PyTorch (same weights, same batches)."""
    tokenizer, train_tokens, heldout_tokens, n_bytes = byte_corpus(**(QUICK_CORPUS if quick else {}))
    sizes = dict(NANOGPT, n_layers=2) if quick else NANOGPT
    config = TransformerConfig(vocab_size=tokenizer.vocab_size, **sizes)
    training = TrainingConfig(total_steps=iters, **NANOGPT_TRAINING)
    model = TinyTransformer(config, seed=0)
    step, tensors = torch_trainer(config, {n: a.copy() for n, a in model.params.items()}, training)
    optimizer = AdamW(model.params, lr=training.max_lr, betas=training.betas, eps=training.eps,
                      weight_decay=training.weight_decay)
    batches = random_batches(train_tokens, batch_size=training.batch_size, context=training.context, seed=0)
    theirs_model = TinyTransformer(config, {n: t.detach().numpy() for n, t in tensors.items()})  # shares memory
    curves = {"ours": [], "pytorch": []}
    heldout = {"ours": [], "pytorch": [], "iter": []}
    seconds = {"ours": 0.0, "pytorch": 0.0}
    for it in range(iters):
        window = next(batches)
        ids, targets = window[:, :-1], window[:, 1:]
        lr = training.lr(it)
        start = time.perf_counter()
        curves["ours"].append(train_step(model, optimizer, [(ids, targets)], lr=lr, grad_clip=training.grad_clip)["loss"])
        middle = time.perf_counter()
        curves["pytorch"].append(step(ids, targets, lr))
        seconds["ours"] += middle - start
        seconds["pytorch"] += time.perf_counter() - middle
        if (it + 1) % eval_every == 0 or it + 1 == iters:
            heldout["iter"].append(it + 1)
            for name, m in (("ours", model), ("pytorch", theirs_model)):
                bpb = heldout_bits_per_byte(m, heldout_tokens[:8001], min(8000, n_bytes), training.context)
                heldout[name].append(bpb * math.log(2))  # nats per byte on the first 8,000 held-out bytes
    ours, theirs = np.array(curves["ours"]), np.array(curves["pytorch"])
    window = min(100, iters)
    smooth = np.convolve(ours - theirs, np.ones(window) / window, mode="valid")
    return {"model": sizes, "training": {k: v for k, v in vars(training).items()}, "loss": curves,
            "heldout_nats": heldout, "seconds": seconds,
            "max_smoothed_difference": float(np.max(np.abs(smooth))),
            "final_mean_loss": {"ours": float(ours[-window:].mean()), "pytorch": float(theirs[-window:].mean())}}


# --- report ----------------------------------------------------------------------------------


def plot(report: dict, folder: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saved = []
    if "bpb" in report:
        fig, ax = plt.subplots(figsize=(6, 3.8))
        curve = report["bpb"]["curve"]
        ax.plot([p["minutes"] for p in curve], [p["bpb"] for p in curve], "o-", label="our decoder, held-out")
        ax.plot([p["minutes"] for p in curve[1:]], [p["train_bpb"] for p in curve[1:]], ":", label="training batches")
        ngram = report["bpb"]["ngram"]
        ax.axhline(ngram["bpb"], color="k", linestyle="--", label=f"byte {ngram['order']}-gram (modified KN)")
        meet = report["bpb"].get("crossing")
        if meet and not meet["measured"]:  # the fitted line, from the last evaluation to where it meets the n-gram
            a, b = meet["fit"]
            t = np.geomspace(curve[-1]["minutes"], meet["minutes"], 50)
            ax.plot(t, a + b * np.log(t), color="C0", linestyle=(0, (1, 3)),
                    label=f"extrapolated (a + b ln t): meets it at ~{meet['minutes']:.0f} min")
        ax.set(xlabel="training time (CPU minutes)", ylabel="bits per byte", ylim=(0, 5),
               title="held-out bits per byte as the decoder trains")
        ax.legend()
        saved.append(_save(fig, folder, "11_training_bits_per_byte.png"))
    if "nanogpt" in report:
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for name, style in (("ours", "-"), ("pytorch", "--")):
            loss = np.array(report["nanogpt"]["loss"][name])
            smooth = np.convolve(loss, np.ones(20) / 20, mode="valid")
            ax.plot(np.arange(len(smooth)) + 20, smooth, style, label=f"{name} (training loss, mean of 20)")
        held = report["nanogpt"]["heldout_nats"]
        ax.plot(held["iter"], held["ours"], "o", color="C0", label="ours, held-out")
        ax.plot(held["iter"], held["pytorch"], "x", color="C1", label="PyTorch, held-out")
        ax.set(xlabel="iteration", ylabel="loss (nats per byte)", title="nanoGPT's CPU configuration, two trainers")
        ax.legend()
        saved.append(_save(fig, folder, "11_training_nanogpt.png"))
    return saved


def _save(fig, folder, name):
    import matplotlib.pyplot as plt

    path = os.path.join(folder, name)
    save_figure(fig, path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinytransformer.bench train", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads and torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per trainer (best is kept)")
    parser.add_argument("--minutes", type=float, default=15.0, help="training time of the bits-per-byte run")
    parser.add_argument("--eval-every", type=float, default=1.0, help="minutes of training between evaluations")
    parser.add_argument("--nanogpt-iters", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check that it runs")
    parser.add_argument("--json", default=None, help="also write the measurements to this file")
    parser.add_argument("--plot-dir", default=None, help="also save the figures (PNG) in this folder")
    args = parser.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown sections {sorted(unknown)}; expected some of {SECTIONS}")
    if args.quick:
        args.repeats, args.minutes, args.eval_every, args.nanogpt_iters = 2, 0.1, 0.05, 30
    try:
        import torch

        torch.set_num_threads(args.threads)
        torch_version = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        torch_version = "torch not installed"
    report: dict = {}
    with blas_threads(args.threads):
        report["machine"] = (f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs; NumPy "
                             f"{np.__version__}, {blas_description()}; {torch_version}")
        print(report["machine"])
        if "step" in sections:
            print("\n== one training step (forward, backward, clipping, AdamW), float32 ==")
            result = report["step"] = measure_step(args.repeats, args.quick)
            for name, seconds in result["seconds"].items():
                print(f"  {name:15s} {seconds * 1000:8.1f} ms   {result['tokens_per_s'][name]:8.0f} tokens/s")
            if "speed_vs_torch" in result:
                print(f"  ours / PyTorch speed: {result['speed_vs_torch']:.2f}x (goal: at least 0.5x)")
        if "memory" in sections:
            print("\n== peak NumPy memory of one training step (tracemalloc) ==")
            result = report["memory"] = measure_memory(args.quick)
            for name, peak in result["peak_bytes"].items():
                print(f"  {name:20s} {peak / 2**20:7.1f} MiB")
            print(f"  (parameters: {result['parameter_bytes'] / 2**20:.1f} MiB)")
        if "bpb" in sections:
            print(f"\n== a byte-level decoder trained for {args.minutes:g} minutes: held-out bits per byte ==")
            ngram = best_ngram(args.quick)
            print(f"  byte {ngram['order']}-gram, modified Kneser-Ney: {ngram['bpb']:.3f} bits/byte")
            sizes = dict(STEP_MODEL, n_layers=1, max_seq_len=32) if args.quick else STEP_MODEL
            context = sizes["max_seq_len"]
            training = TrainingConfig(batch_size=4 if args.quick else 16, context=context, total_steps=10 ** 6,
                                      warmup_steps=100, max_lr=2e-3, min_lr=2e-4, weight_decay=0.1,
                                      betas=(0.9, 0.99))
            result = train_for(args.minutes, quick=args.quick, eval_every=args.eval_every, sizes=sizes,
                               training=training,
                               on_eval=lambda p: print(f"  {p['minutes']:5.1f} min, step {p['step']:6d}: held-out "
                                                       f"{p['bpb']:.3f} bits/byte (training {p['train_bpb']:.3f})"))
            trainer = result.pop("trainer")
            result["ngram"] = ngram
            result["crossing"] = meet = crossing(result["curve"], ngram["bpb"])
            report["bpb"] = result
            print("  " + describe_crossing(result["curve"], ngram["bpb"], meet))
            new = generate(trainer.model, encode(trainer.tokenizer, "The ").tolist(), context - 4, temperature=0.8,
                           top_k=40, seed=0)
            sample = trainer.tokenizer.decode(new)
            print(f"  sample: {'The ' + sample!r}")
        if "nanogpt" in sections:
            print(f"\n== nanoGPT's CPU configuration, {args.nanogpt_iters} iterations: ours and PyTorch ==")
            try:
                result = report["nanogpt"] = nanogpt_curves(args.nanogpt_iters, args.quick,
                                                            eval_every=max(1, min(250, args.nanogpt_iters // 4)))
                for name in ("ours", "pytorch"):
                    print(f"  {name:8s} final mean training loss {result['final_mean_loss'][name]:.4f} nats; "
                          f"held-out {result['heldout_nats'][name][-1]:.4f} nats/byte; "
                          f"{result['seconds'][name]:.0f} s of training")
                print(f"  largest gap between the curves (means of 100 iterations): "
                      f"{result['max_smoothed_difference']:.4f} nats")
            except ImportError as error:
                print(f"  skipped: {error}")
    if args.json:
        write_report(report, args.json, default=float)
        print(f"\n[wrote {args.json}]")
    if args.plot_dir:
        for path in plot(report, args.plot_dir):
            print(f"[saved {path}]")
    return 0
