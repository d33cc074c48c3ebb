"""What every lecture script shares: quick mode, where figures go, and a headless matplotlib.

    python chapters/01_attention.py            # the full lecture
    python chapters/01_attention.py --quick    # smaller sizes, as the test suite runs it (or TT_QUICK=1)

Figures are saved under figures/<chapter>/ (or $TT_FIGURES/<chapter>/ when set).
The lectures draw with matplotlib, which the base install leaves out: pip install -e ".[lectures]".
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

try:
    import matplotlib
except ImportError:
    sys.exit("The lecture scripts draw their figures with matplotlib, which is not installed.\n"
             "Install it with the lectures extra, from the repository root:  pip install -e \".[lectures]\"")

matplotlib.use("Agg")  # headless: no display needed, figures go to files
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QUICK = "--quick" in sys.argv or os.environ.get("TT_QUICK") == "1"


def figures_dir(chapter: str) -> Path:
    base = Path(os.environ["TT_FIGURES"]) if os.environ.get("TT_FIGURES") else ROOT / "figures"
    folder = base / chapter
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save(fig, chapter: str, name: str) -> Path:
    """Save a figure as figures/<chapter>/<name>.png, close it, and say where it went."""
    path = figures_dir(chapter) / f"{name}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"[saved {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}]")
    return path


def heading(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 70 - len(text)))
