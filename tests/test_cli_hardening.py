"""The `tinytransformer` command line against hostile input: bad numbers, bytes that are not UTF-8,
a prompt on stdin, a closed stdout (issue 26). On the tiny random model of tinytransformer.random_llama."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest

from tinytransformer import cli
from tinytransformer.random_llama import write_random_llama
from tinytransformer.threads import check_threads, max_threads


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_random_llama(tmp_path_factory.mktemp("cli_hardening") / "tiny.gguf", seed=3)


@pytest.fixture
def no_loading(monkeypatch):
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))


def _run(argv, **kwargs):
    """The command as a subprocess, bounded in time."""
    return subprocess.run([sys.executable, "-m", "tinytransformer.cli", *argv], capture_output=True, timeout=120,
                          **kwargs)


@pytest.mark.parametrize("flags, message", [
    (["--seed", "-1"], "--seed: expected an integer >= 0, got -1"),
    (["--temperature", "0.5", "--seed", "-7"], "--seed: expected an integer >= 0, got -7"),
    (["--threads", "100000"], "--threads: expected at most "),
    (["--threads", "-3"], "--threads: expected an integer >= 1, got -3"),
    (["--top-p", "nan"], "--top-p: expected a number in"),
    (["--temperature", "inf"], "--temperature: expected a finite number >= 0"),
])
def test_bad_numbers_are_refused_before_the_model_loads(tiny_path, capsys, no_loading, flags, message):
    assert cli.main(["generate", "Hi", "--model", str(tiny_path), *flags]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("tinytransformer: " + message) and err.count("\n") == 1


def test_the_thread_bound_is_four_per_core_and_named_in_the_error():
    assert check_threads(max_threads()) == max_threads()
    with pytest.raises(ValueError, match=r"at most \d+ threads \(4 per core of this machine's \d+ cores\), got"):
        check_threads(max_threads() + 1, "--threads")


@pytest.mark.parametrize("prompt", ["caf\udce9", "\udcff\udcfehello"])  # argv's surrogateescape of b"caf\xe9", ...
def test_a_prompt_that_is_not_utf8_is_refused_naming_its_bytes(tiny_path, capsys, no_loading, prompt):
    assert cli.main(["generate", prompt, "--model", str(tiny_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("tinytransformer: the prompt: expected UTF-8 text, got the bytes b'\\x")
    assert "surrogates not allowed" not in err


def test_a_system_message_that_is_not_utf8_is_refused(tiny_path, capsys, no_loading):
    assert cli.main(["generate", "hi", "--chat", "--system", "\udce9t\udce9", "--model", str(tiny_path)]) == 2
    assert capsys.readouterr().err.startswith("tinytransformer: --system: expected UTF-8 text")


def test_non_utf8_bytes_on_the_real_command_line_get_the_clear_error(tiny_path):
    done = _run([b"generate", b"caf\xe9 au lait", b"--model", str(tiny_path).encode()])
    assert done.returncode == 2 and b"Traceback" not in done.stderr
    assert done.stderr.startswith(b"tinytransformer: the prompt: expected UTF-8 text, got the bytes b'\\xe9' at byte 3")


def test_dash_reads_the_prompt_from_stdin_and_says_what_the_argument_says(tiny_path, capsys, monkeypatch):
    argv = ["generate", "--model", str(tiny_path), "--max-new-tokens", "5"]
    assert cli.main(argv[:1] + ["the cat"] + argv[1:]) == 0
    from_argument = capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("the cat".encode())))
    assert cli.main(argv[:1] + ["-"] + argv[1:]) == 0
    assert capsys.readouterr().out == from_argument


def test_stdin_prompts_are_bounded_and_must_be_utf8(tiny_path, capsys, monkeypatch, no_loading):
    for data, message in [(b"x" * (cli.MAX_STDIN_PROMPT_BYTES + 1), "expected at most 1048576 bytes"),
                          (b"caf\xe9", "expected UTF-8 text, got the bytes b'\\xe9' at byte 3"),
                          (b" \n", "the prompt is empty")]:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        assert cli.main(["generate", "-", "--model", str(tiny_path)]) == 2
        assert message in capsys.readouterr().err


def test_dash_as_a_subprocess_reads_a_pipe(tiny_path):
    done = _run(["generate", "-", "--model", str(tiny_path), "--max-new-tokens", "3"], input="the cat".encode())
    assert done.returncode == 0 and done.stdout.startswith(b"the cat"), done.stderr


def test_a_closed_stdout_ends_with_one_line_and_no_traceback(tiny_path):
    done = subprocess.run(f"{sys.executable} -m tinytransformer.cli generate hi --model {tiny_path} "
                          "--max-new-tokens 3 >&-", shell=True, executable="/bin/bash", capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr == "tinytransformer: stdout is closed: nothing can be written\n"


def test_a_reader_that_takes_one_byte_ends_quietly_with_the_sigpipe_status(tiny_path):
    done = subprocess.run(f"{sys.executable} -m tinytransformer.cli generate 'the cat' --model {tiny_path} "
                          f"--max-new-tokens 120 | head -c 1; exit ${{PIPESTATUS[0]}}", shell=True,
                          executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert done.stdout == "t" and done.returncode in (0, 141)  # 0 when the output fitted the pipe before head left
    assert "Traceback" not in done.stderr and "Broken pipe" not in done.stderr


# --- the paged KV cache's memory, checked at start (issue 26, Low) -----------------------


def test_a_paged_cache_larger_than_the_free_memory_is_refused_naming_the_option_and_both_numbers():
    from tinytransformer.kv_cache import check_paged_cache_memory
    from tinytransformer.model import TransformerConfig

    config = TransformerConfig(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, max_seq_len=8192)
    n_blocks = 64 * 8192 // 16  # serve --max-seqs 64 on SmolLM2-135M: 64 full contexts
    with pytest.raises(ValueError, match=r"^--max-seqs: the paged KV cache needs 24.16 GB \(32768 blocks of 16 "
                                         r"positions\), but only 23.00 GB of memory is available"):
        check_paged_cache_memory(config, n_blocks, 16, available=23 * 10**9, option="--max-seqs")
    from tinytransformer.paged_cache import PagedKVCache

    pool = PagedKVCache(30, 3, 64, n_blocks=64, block_size=16)
    assert check_paged_cache_memory(config, 64, 16, available=23 * 10**9) == pool.nbytes  # the pool's real size


def test_available_memory_is_a_positive_number_of_bytes_on_this_machine():
    from tinytransformer.kv_cache import available_memory_bytes

    found = available_memory_bytes()
    assert found is None or found > 0
