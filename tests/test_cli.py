"""The `tinytransformer` command line (tinytransformer.cli) on a tiny random GGUF model."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest

from tinytransformer import cli, llama
from tinytransformer.llama import INSTALL_COMMAND, load_model
from tinytransformer.testing import write_random_llama


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_random_llama(tmp_path_factory.mktemp("cli") / "tiny.gguf", seed=3)


def test_generate_prints_the_prompt_its_continuation_and_the_speed(tiny_path, capsys):
    assert cli.main(["generate", "the cat", "--model", str(tiny_path), "--max-new-tokens", "6"]) == 0
    out, err = capsys.readouterr()
    model = load_model(tiny_path)
    ids = model.tokenizer.encode("the cat")
    new = model.generate(ids, 6)
    expected = model.tokenizer.decode([t for t in new if t != model.config.eos_id])
    assert out == "the cat" + expected + "\n"
    assert "tokens/s" in err and f"prompt {len(ids)} tokens" in err


@pytest.mark.parametrize("flags", [["--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--seed", "5"],
                                   ["--no-cache"], ["--chat", "--system", "Be brief."]])
def test_generate_options_run_and_are_reproducible(tiny_path, capsys, flags):
    argv = ["generate", "hello", "--model", str(tiny_path), "--max-new-tokens", "5"] + flags
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == first
    assert first.startswith("hello") != ("--chat" in flags)


def test_chat_answers_each_line_until_an_empty_one(tiny_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi there\nand again\n\n"))
    assert cli.main(["chat", "--model", str(tiny_path), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("you> ") == 3 and out.count("model> ") == 2


def test_info_prints_metadata_and_structure(tiny_path, capsys):
    assert cli.main(["info", str(tiny_path)]) == 0
    out = capsys.readouterr().out
    assert "llama.block_count = 2" in out and "(265 items)" in out and "2 x pre-norm block" in out


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
