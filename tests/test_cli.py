"""The `tinytransformer` command line (tinytransformer.cli) on a tiny random GGUF model."""
from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest

from tinytransformer import cli, llama
from tinytransformer.generation import generate
from tinytransformer.llama import INSTALL_COMMAND, load_model
from tinytransformer.random_llama import write_random_llama


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_random_llama(tmp_path_factory.mktemp("cli") / "tiny.gguf", seed=3)


def test_generate_prints_the_prompt_its_continuation_and_the_speed(tiny_path, capsys):
    assert cli.main(["generate", "the cat", "--model", str(tiny_path), "--max-new-tokens", "6"]) == 0
    out, err = capsys.readouterr()
    loaded = load_model(tiny_path)
    model, tokenizer = loaded.model, loaded.tokenizer
    ids = tokenizer.encode("the cat")
    new = generate(model, ids, 6)
    expected = tokenizer.decode([t for t in new if t != model.config.eos_id])
    assert out == "the cat" + expected + "\n"
    assert "tokens/s" in err and f"prompt {len(ids)} tokens" in err


@pytest.mark.parametrize("flags", [["--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--seed", "5"],
                                   ["--no-cache"], ["--chat", "--system", "Be brief."], ["--keep-quantized"]])
def test_generate_options_run_and_are_reproducible(tiny_path, capsys, flags):
    argv = ["generate", "hello", "--model", str(tiny_path), "--max-new-tokens", "5"] + flags
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == first
    assert first.startswith("hello") != ("--chat" in flags)


def test_generate_with_the_weights_kept_quantised_says_what_the_float_model_says(tiny_path, capsys):
    argv = ["generate", "the cat", "--model", str(tiny_path), "--max-new-tokens", "6"]
    assert cli.main(argv) == 0
    dense = capsys.readouterr().out
    assert cli.main(argv + ["--keep-quantized"]) == 0
    assert capsys.readouterr().out == dense


def _chat(tiny_path, capsys, monkeypatch, lines, *flags):
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    code = cli.main(["chat", "--model", str(tiny_path), "--max-new-tokens", "4", *flags])
    return code, *capsys.readouterr()


def test_chat_answers_each_line_and_an_empty_line_does_not_end_it(tiny_path, capsys, monkeypatch):
    code, out, err = _chat(tiny_path, capsys, monkeypatch, "hi there\n\nand again\n")  # then end of input
    assert code == 0 and out.count("you> ") == 4 and out.count("model> ") == 2
    assert "/quit" in err and "empty message" in err
    code, out, _ = _chat(tiny_path, capsys, monkeypatch, "hi\n/quit\nnever read\n")
    assert code == 0 and out.count("model> ") == 1


def test_chat_with_the_kv_cache_kept_between_turns_says_what_recomputing_says(tiny_path, capsys, monkeypatch):
    lines = "hi there\nand again\none more time\n"
    _, cached, _ = _chat(tiny_path, capsys, monkeypatch, lines, "--temperature", "0.9", "--seed", "4")
    _, recomputed, _ = _chat(tiny_path, capsys, monkeypatch, lines, "--temperature", "0.9", "--seed", "4",
                             "--no-cache")
    assert cached == recomputed and cached.count("model> ") == 3


def test_ctrl_c_during_a_reply_stops_that_reply_and_keeps_the_conversation(tiny_path, capsys, monkeypatch):
    real_stream, calls = cli.stream, []

    def stream(model, *args, **kwargs):  # the first reply is interrupted after two tokens
        calls.append(1)
        for i, token in enumerate(real_stream(model, *args, **kwargs)):
            if len(calls) == 1 and i == 2:
                raise KeyboardInterrupt
            yield token

    monkeypatch.setattr(cli, "stream", stream)
    code, out, err = _chat(tiny_path, capsys, monkeypatch, "hi there\nand again\n")
    assert code == 0 and out.count("model> ") == 2 and "(reply stopped)" in err and len(calls) == 2


def test_info_prints_metadata_and_structure(tiny_path, capsys):
    assert cli.main(["info", str(tiny_path)]) == 0
    out = capsys.readouterr().out
    assert "llama.block_count = 2" in out and "(265 items)" in out and "2 x pre-norm block" in out
    assert out.startswith("tiny.gguf\n")  # the file's name, not its whole path


def test_info_escapes_control_characters_from_the_file(tmp_path, tiny_path, capsys):
    from tinytransformer.gguf import GGUFFile, write_gguf

    with GGUFFile(tiny_path) as f:
        metadata = {**f.metadata, "general.name": "evil\x1b[2J\x1b]0;title\x07"}
        tensors = {name: (f.raw_tensor(name).copy(), info.type, info.shape) for name, info in f.tensors.items()}
    write_gguf(tmp_path / "evil.gguf", metadata, tensors)
    assert cli.main(["info", str(tmp_path / "evil.gguf")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "evil" in out


def test_missing_default_model_names_the_install_command(monkeypatch, capsys):
    monkeypatch.setattr(llama.importlib.util, "find_spec", lambda name: None)
    assert cli.main(["generate", "hi"]) == 1
    assert INSTALL_COMMAND in capsys.readouterr().err


def test_corrupt_model_file_gives_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    assert cli.main(["generate", "hi", "--model", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "not a GGUF file" in err and str(bad) in err


def test_progress_bar_appears_only_for_slow_loads():
    quick, slow = io.StringIO(), io.StringIO()
    bar = cli._ProgressBar("loading", stream=quick, delay=10.0)
    for i in range(1, 11):
        bar(i, 10)
    assert quick.getvalue() == ""
    slow.isatty = lambda: True  # a terminal: the bar is redrawn as it grows
    bar = cli._ProgressBar("loading", stream=slow, delay=0.0, width=10)
    for i in range(1, 11):
        bar(i, 10)
    assert slow.getvalue().count("\r") == 10 and "[##########] 10/10" in slow.getvalue()
    assert slow.getvalue().endswith("\n")
    log = io.StringIO()  # not a terminal: only the finished bar
    bar = cli._ProgressBar("loading", stream=log, delay=0.0, width=10)
    for i in range(1, 11):
        bar(i, 10)
    assert log.getvalue().count("\r") == 1 and "10/10" in log.getvalue()


def test_module_runs_as_a_script_with_help():
    done = subprocess.run([sys.executable, "-m", "tinytransformer.cli", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "generate" in done.stdout and "info" in done.stdout


def test_no_command_prints_the_help_with_examples(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "usage: tinytransformer" in err and "examples:" in err and "generate" in err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("tinytransformer 0.")


def test_every_option_has_help_and_the_help_reads_cleanly():
    parser = cli._parser()
    subparsers = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
    assert "`" not in parser.format_help() and parser.format_help().rstrip().endswith("tinytransformer info")


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "-1"], "--temperature: expected a finite number >= 0, got -1.0"),
    (["--max-new-tokens", "-5"], "--max-new-tokens: expected an integer >= 1, got -5"),
    (["--top-p", "1.5"], r"--top-p: expected a number in \(0, 1\], got 1.5"),
    (["--top-k", "0"], "--top-k: expected an integer >= 1, got 0"),
    (["--temperature", "0", "--top-k", "5"], "--top-k: no effect at --temperature 0"),
    (["--threads", "0"], "--threads: expected an integer >= 1"),
])
def test_bad_options_are_refused_before_loading_on_a_line_of_their_own(tiny_path, capsys, monkeypatch, flags,
                                                                       message):
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    assert cli.main(["generate", "Hi", "--model", str(tiny_path), *flags]) == 2
    out, err = capsys.readouterr()
    assert out == "" and re.match("tinytransformer: " + message, err)


def test_too_many_new_tokens_for_the_context_are_refused_before_generating(tiny_path, capsys):
    assert cli.main(["generate", "Hi", "--model", str(tiny_path), "--max-new-tokens", "100000"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "at most 126 new tokens fit" in err  # "Hi" is 2 tokens of the 128 positions


def test_an_empty_prompt_gets_a_message_for_a_person(capsys):
    assert cli.main(["generate", "  "]) == 2
    assert "the prompt is empty" in capsys.readouterr().err


def test_sampling_options_at_the_default_temperature_turn_sampling_on(tiny_path, capsys):
    argv = ["generate", "hello", "--model", str(tiny_path), "--max-new-tokens", "8"]
    assert cli.main(argv + ["--top-k", "50", "--seed", "1"]) == 0
    out, err = capsys.readouterr()
    assert "sampling at temperature 1.0" in err
    assert cli.main(argv + ["--temperature", "1.0", "--top-k", "50", "--seed", "1"]) == 0
    assert capsys.readouterr().out == out


def test_a_character_cut_by_the_token_limit_is_held_back_not_replaced():
    out = io.StringIO()
    text = cli._TextStream(out)
    text.write("한".encode()[:2])  # two of the three bytes of a Hangul syllable
    assert text.close() and out.getvalue() == ""
    text.write("한국".encode())
    assert not text.close() and out.getvalue() == "한국"


def test_piping_into_head_ends_quietly(tiny_path):
    done = subprocess.run(f"{sys.executable} -m tinytransformer.cli generate 'the cat' --model {tiny_path} "
                          f"--max-new-tokens 120 | head -c 3; exit ${{PIPESTATUS[0]}}", shell=True,
                          executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert done.stdout == "the" and done.returncode in (0, 141)
    assert "Broken pipe" not in done.stderr and "Traceback" not in done.stderr
