"""`tinytransformer serve`: the OpenAI-compatible server of `serving.server` on a model.

    tinytransformer serve                          # SmolLM2-135M-Instruct on http://127.0.0.1:8000/v1
    tinytransformer serve --model tiny.gguf --port 8001 --policy static --max-seqs 4

It listens on 127.0.0.1 (this machine only) unless --host says otherwise; there
is no authentication. Needs the serve extra: pip install "tinytransformer[serve]".
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from tinytransformer.serving.scheduler import POLICIES

__all__ = ["add_serve_command", "cmd_serve"]


def add_serve_command(commands) -> argparse.ArgumentParser:
    """Add the `serve` subcommand to an argparse subparsers object."""
    from tinytransformer.serving.server import DEFAULT_MAX_BODY_BYTES

    serve = commands.add_parser("serve", help="an OpenAI-compatible HTTP endpoint (/v1/completions, "
                                              "/v1/chat/completions) with continuous batching")
    serve.add_argument("--model", metavar="PATH.gguf", help="a Llama GGUF file (default: SmolLM2-135M-Instruct)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                          "only; there is no authentication)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--name", default=None, help="the model name the API reports (default: the model's)")
    serve.add_argument("--policy", choices=POLICIES, default="continuous", help="batching policy (default continuous)")
    serve.add_argument("--max-seqs", type=int, default=8, help="requests decoded together (default 8)")
    serve.add_argument("--blocks", type=int, default=None,
                       help="KV cache blocks (default: enough for max-seqs requests of the full context)")
    serve.add_argument("--block-size", type=int, default=16, help="positions per KV cache block (default 16)")
    serve.add_argument("--max-tokens-per-step", type=int, default=256,
                       help="tokens computed per engine step, prefill and decode together (default 256)")
    serve.add_argument("--max-wait", type=float, default=0.05,
                       help="dynamic policy: seconds a request may wait for a fuller batch (default 0.05)")
    serve.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                       help=f"largest request body accepted (default {DEFAULT_MAX_BODY_BYTES})")
    serve.add_argument("--threads", type=int, default=1, metavar="N", help="BLAS threads (default 1)")
    serve.add_argument("--attention", choices=("sdpa", "sdpa-padded", "flash", "cuda"), default="sdpa-padded",
                       help="the model's attention (default sdpa-padded: one padded call per layer for the whole "
                            "batch)")
    return serve


def cmd_serve(args, load=None) -> int:
    """Load the model and serve it until interrupted. load(args) -> the llama.LoadedModel of
    args.model (default: llama.load_model(args.model))."""
    try:
        import uvicorn

        from tinytransformer.kv_cache import check_paged_cache_memory
        from tinytransformer.serving.server import create_app
    except ImportError as e:
        print(f"tinytransformer serve: needs the serve extra ({e}): pip install \"tinytransformer[serve]\"",
              file=sys.stderr)
        return 1
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port: expected a port number in [0, 65535], got {args.port}")
    if args.model is not None and not os.path.isfile(args.model):
        raise ValueError(f"--model: expected a GGUF file, got {args.model!r}, which is not a file")
    if args.attention == "cuda":  # a step would fail on the first request; refuse before loading
        from tinytransformer.cuda import build

        ok, why = build.cuda_status()
        if not ok:
            raise ValueError(f"--attention cuda: {why}; choose another --attention (sdpa-padded, the default)")
    if load is None:
        from tinytransformer.llama import load_model

        def load(args):
            return load_model(args.model)

    loaded = load(args)
    model = loaded.model
    model.attention = args.attention
    n_blocks = args.blocks or args.max_seqs * -(-model.config.max_seq_len // args.block_size)
    check_paged_cache_memory(model.config, n_blocks, args.block_size, dtype=model.dtype,
                             option="--blocks" if args.blocks else "--max-seqs")  # before the pool is allocated
    app = create_app(loaded, model_name=args.name, max_body_bytes=args.max_body_bytes, n_blocks=args.blocks,
                     block_size=args.block_size, policy=args.policy, max_seqs=args.max_seqs,
                     max_tokens_per_step=args.max_tokens_per_step, max_wait=args.max_wait)
    if not _is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach this address can use the model "
              "(there is no authentication)", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {model.config.name or 'the model'} ({args.policy} batching, {args.max_seqs} slots) on "
          f"http://{shown}:{args.port}/v1 (Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
