"""The serving benchmark runs (quick mode, tiny random model) and checks its own laws as it goes."""
from __future__ import annotations

import json

import pytest

from tinytransformer.bench import serve


@pytest.mark.slow
def test_the_serving_benchmark_runs_and_both_policies_give_the_same_ids(tmp_path, capsys):
    out = tmp_path / "serve.json"
    assert serve.main(["--quick", "--only", "batching", "--only", "speculative", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    batching = results["batching"]
    assert batching["workload"]["requests"] == 16 and batching["speedup"] > 0
    assert set(results["speculative"]) == {"repeat", "random"}
    # wall time is the primary figure, the process's CPU time is reported beside it
    assert results["clock"].startswith("wall") and batching["speedup_cpu"] > 0
    row = results["speculative"]["repeat"]
    assert set(row["seconds"]) == set(row["cpu_seconds"]) == {"ours"} | {f"ours + lookup k={k}" for k in (4, 7, 10, 15)}
    assert set(row["by_k"]) == {"4", "7", "10", "15"} and row["best_k_ours"] in (4, 7, 10, 15)
    assert row["best_speedup_ours"] == max(r["speedup_ours"] for r in row["by_k"].values())
    assert "continuous / static throughput" in capsys.readouterr().out
