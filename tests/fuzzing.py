"""Run one untrusted-input case with a time and a memory bound, and say how it ended.

The fuzz tests of the file readers (GGUF, tokenizer.json, SentencePiece, ARPA)
feed each reader mutated, truncated and crafted files. A bad file must end in a
clean error (the reader's own error type, or ValueError, naming the file) or a
correct load: never a hang, a memory blow-up or an unclear error such as
IndexError from deep inside. To see a hang or a blow-up without taking the test
run down with it, each case runs in a forked child process:

    child:  address-space limit = what it already uses + `megabytes`, then the case
    parent: waits `seconds`, kills the child if it is still running

    >>> run_bounded(lambda: int("12")).kind
    'ok'
    >>> run_bounded(lambda: int("x"), clean=(ValueError,)).kind
    'clean error'

Outcome kinds: "ok", "clean error", "unclear error" (an exception not in `clean`),
"memory" (MemoryError, or killed by the limit), "hang" (over the time bound),
"crash" (the child died some other way). POSIX only (fork, resource limits).

The fuzz suites call `record(format, case, outcome)` for every case; with TT_FUZZ_TALLY
set to a file, each call appends one JSON line there, and this script prints the counts
per format (the closing notes' table):

    TT_FUZZ_TALLY=/tmp/tally python -m pytest tests/test_gguf_fuzz.py tests/test_tokenizer_fuzz.py \
        tests/test_ngram_fuzz.py
    python tests/fuzzing.py /tmp/tally
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import resource
import select
import signal
import sys
import time
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Outcome:
    kind: str
    detail: str = ""
    seconds: float = 0.0


BAD_KINDS = ("unclear error", "memory", "hang", "crash")


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def run_bounded(case, *, clean=(ValueError,), seconds: float = 5.0, megabytes: int = 512) -> Outcome:
    """Run case() in a forked child with a time and memory bound; return how it ended."""
    read_end, write_end = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: bound memory, run, report, exit without running pytest's clean-up
        os.close(read_end)
        try:
            limit = _address_space_bytes() + megabytes * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            try:
                case()
                result = ("ok", "")
            except MemoryError:
                result = ("memory", "MemoryError")
            except clean as error:
                result = ("clean error", f"{type(error).__name__}: {error}"[:300])
            except RecursionError as error:
                result = ("unclear error", f"RecursionError: {error}"[:300])
            except Exception as error:  # noqa: BLE001  (classifying every other exception is the point)
                result = ("unclear error", f"{type(error).__name__}: {error}"[:300])
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], seconds)
    data = b""
    if ready:
        while chunk := os.read(read_end, 65536):
            data += chunk
    os.close(read_end)
    elapsed = time.perf_counter() - start
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return Outcome("hang", f"still running after {seconds} s", elapsed)
    _, status = os.waitpid(pid, 0)
    if not data:
        why = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
        # a child that hits the address-space limit inside C code usually dies by SIGSEGV/SIGABRT
        return Outcome("memory" if os.WIFSIGNALED(status) else "crash", why, elapsed)
    kind, detail = json.loads(data)
    return Outcome(kind, detail, elapsed)


def tally(outcomes) -> dict[str, int]:
    """Counts per outcome kind, for the closing notes' tables."""
    return dict(collections.Counter(o.kind for o in outcomes))


def record(fmt: str, case: str, outcome: Outcome) -> None:
    """Append [format, kind, seconds, case, detail] to the file named by TT_FUZZ_TALLY, if set."""
    if os.environ.get("TT_FUZZ_TALLY"):
        with open(os.environ["TT_FUZZ_TALLY"], "a", encoding="utf-8") as out:
            out.write(json.dumps([fmt, outcome.kind, round(outcome.seconds, 3), case, outcome.detail[:200]]) + "\n")


def tally_table(path) -> str:
    """A Markdown table of a TT_FUZZ_TALLY file: cases per format and how each ended."""
    counts: dict = collections.defaultdict(collections.Counter)
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        fmt, kind = json.loads(line)[:2]
        counts[fmt][kind] += 1
    kinds = ("ok", "clean error", *BAD_KINDS)
    rows = ["| format | cases | " + " | ".join("load" if k == "ok" else k for k in kinds) + " |",
            "|---|---|" + "---|" * len(kinds)]
    for fmt, counter in sorted(counts.items()):
        rows.append(f"| {fmt} | {sum(counter.values())} | " + " | ".join(str(counter[k]) for k in kinds) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/fuzzing.py TALLY_FILE")
    print(tally_table(sys.argv[1]))
