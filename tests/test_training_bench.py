"""The training benchmark's own arithmetic (where two curves meet) and a run of its quick mode
that writes the JSON and the figures the chapter page shows."""
from __future__ import annotations

import math
import os

import pytest

from tinytransformer.bench import train as bench
from tinytransformer.testing import assert_close


def _curve(bpbs, minutes=None):
    minutes = minutes or [float(i) for i in range(len(bpbs))]
    return [{"minutes": t, "step": i, "bpb": b, "train_bpb": b} for i, (t, b) in enumerate(zip(minutes, bpbs))]


def test_crossing_is_the_first_evaluation_at_or_below_the_target():
    meet = bench.crossing(_curve([8.0, 3.0, 2.0, 1.5, 1.9]), 2.0)
    assert meet == {"minutes": 2.0, "measured": True}


def test_crossing_extrapolates_a_straight_line_in_log_time():
    minutes = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0]
    curve = _curve([8.0] + [3.0 - 0.25 * math.log(t) for t in minutes[1:]], minutes)  # exactly a + b ln t
    meet = bench.crossing(curve, 2.0)
    assert meet["measured"] is False
    assert_close(meet["fit"], (3.0, -0.25))
    assert_close(meet["minutes"], math.exp(4.0))  # 3 - 0.25 ln t = 2  <=>  t = e^4


@pytest.mark.parametrize("bpbs", [[8.0, 3.0], [8.0, 3.0, 3.0, 3.1]], ids=["one-evaluation", "not-falling"])
def test_no_crossing_is_estimated_from_too_little_or_a_flat_curve(bpbs):
    assert bench.crossing(_curve(bpbs), 2.0) is None


def test_the_report_line_says_measured_extrapolated_or_neither():
    curve = _curve([8.0, 4.0, 3.0, 2.6], [0.0, 1.0, 2.0, 4.0])
    assert "reached the n-gram after 2.0 CPU minutes" in bench.describe_crossing(curve, 3.0, bench.crossing(curve, 3.0))
    line = bench.describe_crossing(curve, 1.77, bench.crossing(curve, 1.77))
    assert line.startswith("best held-out 2.600 bits/byte against the n-gram's 1.770") and "(an extrapolation)" in line
    assert "no crossing" in bench.describe_crossing(curve[:2], 1.77, None)


def test_plot_draws_both_figures_of_the_chapter_page(tmp_path):
    pytest.importorskip("matplotlib", reason="the benchmark's figures are drawn with matplotlib")
    curve = _curve([8.0, 4.0, 3.0, 2.6], [0.0, 1.0, 2.0, 4.0])
    losses = [5.0 - i / 50 for i in range(60)]
    report = {"bpb": {"curve": curve, "ngram": {"order": 5, "bpb": 1.77}, "crossing": bench.crossing(curve, 1.77)},
              "nanogpt": {"loss": {"ours": losses, "pytorch": losses},
                          "heldout_nats": {"iter": [30, 60], "ours": [4.0, 3.5], "pytorch": [4.0, 3.5]}}}
    names = ["11_training_bits_per_byte.png", "11_training_nanogpt.png"]
    assert sorted(os.path.basename(p) for p in bench.plot(report, str(tmp_path))) == names
    assert all((tmp_path / name).stat().st_size > 0 for name in names)
