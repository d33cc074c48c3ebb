"""Every lecture script runs headless, top to bottom, in quick mode, and saves figures."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py"))


def test_there_is_a_lecture_script_per_chapter():
    numbers = [int(s.name[:2]) for s in SCRIPTS]
    assert len(set(numbers)) == len(numbers) and set(range(1, 13)) <= set(numbers)
    for script in SCRIPTS:
        assert list((ROOT / "docs").glob(f"{script.name[:2]}_*.md")), f"{script.name} has no page under docs/"


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_lecture_script_runs_headless_in_quick_mode_and_leaves_no_temporary_file(script, tmp_path):
    pytest.importorskip("matplotlib", reason="lecture scripts save figures with matplotlib")
    scratch = tmp_path / "tmp"  # the script's temporary folder: empty again when it ends
    scratch.mkdir()
    env = {**os.environ, "MPLBACKEND": "Agg", "TT_QUICK": "1", "TT_FIGURES": str(tmp_path), "TMPDIR": str(scratch)}
    env.pop("DISPLAY", None)
    done = subprocess.run([sys.executable, str(script), "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{script.name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert list(scratch.iterdir()) == [], f"{script.name} left temporary files behind"
    assert done.stdout.strip(), f"{script.name} printed nothing"
    figures = list((tmp_path / script.stem).glob("*.png"))  # chapters/_lecture.py honours TT_FIGURES
    assert figures, f"{script.name} saved no figure under $TT_FIGURES/{script.stem}/"


def test_a_lecture_without_matplotlib_says_how_to_install_it():
    script = ROOT / "chapters" / "01_attention.py"
    hide_matplotlib = ("import runpy, sys; sys.modules['matplotlib'] = None; "  # `import matplotlib` now fails
                       f"sys.path.insert(0, {str(script.parent)!r}); sys.argv = [{str(script)!r}, '--quick']; "
                       f"runpy.run_path({str(script)!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", hide_matplotlib], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert 'pip install -e ".[lectures]"' in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_readme_and_setup_cfg_name_the_install_the_lectures_ask_for():
    import configparser

    command = 'pip install -e ".[lectures]"'
    assert command in (ROOT / "chapters" / "_lecture.py").read_text(encoding="utf-8")
    assert command in (ROOT / "README.md").read_text(encoding="utf-8")
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg", encoding="utf-8")
    assert "matplotlib" in setup["options.extras_require"]["lectures"]
