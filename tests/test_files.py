"""Laws of the shared file helpers (tinytransformer._files): untrusted reads never block,
and writes replace a file whole or not at all."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from fuzzing import run_bounded
from tinytransformer._files import atomic_writer, open_regular_file


def test_only_regular_files_are_opened_and_nothing_blocks(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (tmp_path, "a directory"), ("/dev/null", "a device")):
        outcome = run_bounded(lambda: open_regular_file(path, "the file"), clean=(ValueError,), seconds=5)
        assert outcome.kind == "clean error" and f"the file: expected a regular file, got {kind}" in outcome.detail
    (tmp_path / "plain").write_bytes(b"abc")
    with open_regular_file(tmp_path / "plain", "plain") as f:
        assert f.read() == b"abc"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_writer(path, "notes") as f:
            f.write(b"new, but")
            raise RuntimeError("half-way")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["notes.txt"]


def test_a_write_replaces_the_file_whole_keeping_its_permissions(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("old")
    path.chmod(0o600)
    with open(path) as reader:  # a reader of the old file keeps reading the old file
        with atomic_writer(path, "notes") as f:
            f.write(b"new")
        assert reader.read() == "old"
    assert path.read_text() == "new" and (path.stat().st_mode & 0o777) == 0o600


def test_a_write_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    target, link = tmp_path / "target.txt", tmp_path / "link.txt"
    target.write_text("old")
    link.symlink_to(target)
    with atomic_writer(link, "notes") as f:
        f.write(b"new")
    assert link.is_symlink() and target.read_text() == "new"


# --- every reader and writer of the package goes through these helpers ------------------------

def _readers():
    from tinytransformer import cli
    from tinytransformer.gguf import GGUFFile
    from tinytransformer.llama import load_model
    from tinytransformer.ngram import read_arpa
    from tinytransformer.tokenizers import BPETokenizer, ByteLevelBPETokenizer, SentencePieceTokenizer

    def info(path):
        if cli.main(["info", str(path)]) != 2:
            raise AssertionError("tinytransformer info did not refuse the path")
        raise ValueError(f"{path}: expected a regular file, got a FIFO (the CLI's message is checked below)")

    return {"GGUFFile": GGUFFile, "load_model": load_model, "read_arpa": read_arpa,
            "from_tokenizer_json": ByteLevelBPETokenizer.from_tokenizer_json,
            "ByteLevelBPETokenizer.from_gguf": ByteLevelBPETokenizer.from_gguf,
            "SentencePieceTokenizer": SentencePieceTokenizer, "BPETokenizer.load": BPETokenizer.load, "cli info": info}


@pytest.mark.parametrize("reader", sorted(_readers()))
def test_every_file_reader_refuses_a_fifo_at_once_naming_it(tmp_path, reader):
    fifo = tmp_path / "model.file"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    outcome = run_bounded(lambda: _readers()[reader](fifo), clean=(ValueError,), seconds=10)
    assert outcome.kind == "clean error", outcome
    assert str(fifo) in outcome.detail and "regular file" in outcome.detail, outcome


def test_the_cli_names_the_argument_that_is_not_a_file(tmp_path, capsys):
    from tinytransformer import cli

    assert cli.main(["info", str(tmp_path)]) == 2
    assert "path: expected a GGUF file" in capsys.readouterr().err
    assert cli.main(["generate", "--model", str(tmp_path), "hi"]) == 2
    assert "--model: expected a GGUF file" in capsys.readouterr().err


def test_a_benchmark_report_that_cannot_be_written_leaves_the_old_report_whole(tmp_path, monkeypatch):
    from tinytransformer.bench import quant

    path = tmp_path / "report.json"
    path.write_text('{"old": 1}')
    monkeypatch.setattr(quant, "report", lambda results: None)  # the table printed from the results
    monkeypatch.setattr(quant, "run", lambda args: {"rows": [], "bad": object()})
    with pytest.raises(TypeError, match="not a number or a JSON type"):
        quant.main(["--json", str(path), "--no-memory"])
    assert path.read_text() == '{"old": 1}' and os.listdir(tmp_path) == ["report.json"]
    monkeypatch.setattr(quant, "run", lambda args: {"rows": [], "perplexity": np.float32(0.5)})
    quant.main(["--json", str(path), "--no-memory"])
    assert json.loads(path.read_text()) == {"rows": [], "perplexity": 0.5}


def test_no_benchmark_writes_a_file_in_place():
    """Reports and figures go through bench.write_report / bench.save_figure (a temporary file, then a rename)."""
    folder = Path(__file__).resolve().parent.parent / "tinytransformer" / "bench"
    in_place = re.compile(r"""open\([^)]*["'][wa]b?["']|json\.dump\(|\.savefig\((?!handle)""")
    found = [f"{source.name}:{i}: {line.strip()}" for source in sorted(folder.glob("*.py"))
             for i, line in enumerate(source.read_text().splitlines(), 1) if in_place.search(line)]
    assert found == [], found
