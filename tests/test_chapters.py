"""Every lecture script runs headless, top to bottom, in quick mode, and saves figures."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT

SCRIPTS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py"))


def test_there_is_a_lecture_script_per_chapter():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_lecture_script_runs_headless_in_quick_mode(script, tmp_path):
    pytest.importorskip("matplotlib", reason="lecture scripts save figures with matplotlib")
    env = {**os.environ, "MPLBACKEND": "Agg", "TT_QUICK": "1", "TT_FIGURES": str(tmp_path)}
    env.pop("DISPLAY", None)
    start = time.time() - 1
    done = subprocess.run([sys.executable, str(script), "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{script.name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert done.stdout.strip(), f"{script.name} printed nothing"
    # figures go under $TT_FIGURES/<chapter>/ when set (chapters/_lecture.py), else figures/<chapter>/
    figures = list(tmp_path.rglob("*.png")) + [
        f for f in (ROOT / "figures" / script.stem).rglob("*.png") if f.stat().st_mtime >= start]
    assert figures, f"{script.name} saved no figure"
