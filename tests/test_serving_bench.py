"""The serving benchmark runs (quick mode, tiny random model) and checks its own laws as it goes."""
from __future__ import annotations

import json

import pytest

from tinytransformer.bench import serve, serve_speculative


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
    ks = (4, 7, 10, 15, 23, 31, 47)
    assert set(row["seconds"]) == set(row["cpu_seconds"]) == {"ours"} | {f"ours + lookup k={k}" for k in ks}
    assert set(row["by_k"]) == {str(k) for k in ks} and row["best_k_ours"] in ks
    assert row["best_speedup_ours"] == max(r["speedup_ours"] for r in row["by_k"].values())
    assert sum(1 for r in row["by_k"].values() if r["rounds"] >= 1) == len(ks)
    # the parts of a speed-up: a prefill and forwards of 1 and k + 1 rows, and the ratio they predict
    costs = row["step_costs"]["ours"]
    assert set(costs["step_s"]) == {"1"} | {str(k + 1) for k in ks} and costs["prefill_s"] > 0
    assert costs["prefill_over_step"] == costs["prefill_s"] / costs["step_s"]["1"]
    assert set(costs["speedup_from_parts"]) == set(row["by_k"]) and all(x > 0 for x in costs["speedup_from_parts"].values())
    assert "continuous / static throughput" in capsys.readouterr().out


def _tiny_hf_llama():
    from conftest import require

    torch = require("torch", "the benchmark runs transformers' model")
    transformers = require("transformers", "the benchmark runs transformers' model")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return torch, transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("stop_early", [False, True])
def test_transformers_bare_loop_gives_what_its_generate_gives(stop_early):
    """The second baseline of the speculative benchmark decodes as transformers' generate() does:
    the same greedy ids, and the same stop at EOS (the EOS token included)."""
    torch, hf = _tiny_hf_llama()
    ids, n = [3, 1, 4, 1, 5, 9, 2, 6], 12
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    ours = serve_speculative.hf_greedy_loop(hf, ids, n)
    if stop_early:  # make the third generated token the EOS: both must stop there
        hf.generation_config.eos_token_id = ours[2]
    tensor = torch.tensor([ids])
    with torch.inference_mode():
        theirs = hf.generate(tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=n, do_sample=False)
    expected = theirs[0, len(ids):].tolist()
    got = serve_speculative.hf_greedy_loop(hf, ids, n)
    assert got == expected
    assert len(got) == (ours.index(ours[2]) + 1 if stop_early else n)


def test_the_parts_of_a_speedup_are_timed_for_both_and_give_the_ratio_of_the_formula():
    """step_costs times a prefill and forwards of 1 and k + 1 rows for ours and transformers, and
    predicts (P + (n - 1) s(1)) / (P + (R - 1) s(k + 1)) with each one's own count of rounds."""
    import argparse

    from tinytransformer.model import TinyTransformer, TransformerConfig

    _, hf = _tiny_hf_llama()
    model = TinyTransformer(TransformerConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, max_seq_len=64), seed=0)
    ids = list(range(3, 23))
    row = {"tokens": 12, "by_k": {"4": {"rounds": 3, "transformers_forwards": 5}, "30": {"rounds": 1}}}
    costs = serve_speculative.step_costs(model, hf, ids, row, argparse.Namespace(k=[4, 30], repeats=2))
    for who, rounds in (("ours", 3), ("transformers", 5)):
        c = costs[who]
        assert set(c["step_s"]) == {"1", "5"}  # k = 30 needs 31 rows, more than the 20-token prompt
        P, d, r = c["prefill_s"], c["step_s"]["1"], c["step_s"]["5"]
        assert min(P, d, r) > 0 and c["prefill_over_step"] == P / d
        assert c["speedup_from_parts"] == {"4": (P + 11 * d) / (P + (rounds - 1) * r)}
