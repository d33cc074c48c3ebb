"""The model benchmark runs end to end on a tiny random Llama and writes what it printed."""
from __future__ import annotations

import json

from tinytransformer.bench import model as bench_model
from tinytransformer.random_llama import write_random_llama


def test_quick_model_benchmark_writes_every_measurement(tmp_path, capsys):
    path = write_random_llama(tmp_path / "tiny.gguf")
    out = tmp_path / "model.json"
    assert bench_model.main(["--model", str(path), "--quick", "--no-hf", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    ours = record["results"]["ours (NumPy)"]
    assert ours["prefill"] > 0 and ours["decode"] > 0 and ours["no_cache"] > 0
    batched = record["results"]["batched"]
    assert set(batched["tokens_per_s"]) == {"single", "one_at_a_time", *bench_model.BATCH_ATTENTION}
    assert all(rate > 0 for rate in batched["tokens_per_s"].values())
    assert 0 <= batched["paged_empty_bytes"] < batched["paged_peak_bytes"]
    printed = capsys.readouterr().out
    assert "attention=sdpa-padded" in printed and f"results written to {out}" in printed


def test_batch_only_measures_just_the_batched_decode(tmp_path, capsys):
    path = write_random_llama(tmp_path / "tiny.gguf")
    out = tmp_path / "model.json"
    assert bench_model.main(["--model", str(path), "--quick", "--batch-only", "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())["results"]) == {"batched"}
    printed = capsys.readouterr().out
    assert "batched decode" in printed and "prefill" not in printed
