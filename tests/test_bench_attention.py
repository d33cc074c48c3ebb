"""`python -m tinytransformer.bench attention`: its arithmetic (FLOPs, bytes), its arguments, its CPU run,
and its closing table. The GPU path runs here with CuPy, the kernels and the timings replaced by stand-ins
(`_fake_gpu`); on a GPU, benchmarks/gpu_check.sh runs the benchmark itself."""
from __future__ import annotations

import re

import pytest

from conftest import require
from tinytransformer import cuda

GPU_OK, GPU_WHY = cuda.cuda_status()


def test_benchmark_counts_flops_and_bytes_the_usual_way():
    from tinytransformer.bench.attention_workload import attention_flops, decode_bytes, decode_configs, prefill_configs

    assert attention_flops(4, 16, 4096, 4096, 128, False) == 4 * 4 * 16 * 4096 * 4096 * 128
    assert attention_flops(4, 16, 4096, 4096, 128, True) == 2 * 4 * 16 * 4096 * 4096 * 128
    assert decode_bytes(8, 8, 16384, 128, 2) == 2 * 8 * 8 * 16384 * 128 * 2
    configs = prefill_configs()
    assert {c["T"] for c in configs} == {1024, 4096, 16384}
    assert {(c["D"], c["causal"]) for c in configs} == {(64, False), (64, True), (128, False), (128, True)}
    assert {(c["Hq"], c["Hkv"]) for c in configs} == {(16, 16), (16, 4)}
    assert {c["B"] * c["T"] for c in configs} == {16384}  # the same tokens per call at every length
    assert max(c["L"] for c in decode_configs()) == 16384
    assert max(c["T"] for c in prefill_configs(device="cpu")) <= 1024  # the CPU table stays small


def test_bench_attention_dry_run_prints_the_plan_and_measures_nothing(tmp_path, capsys):
    from tinytransformer.bench.attention import main

    target = tmp_path / "results.json"
    assert main(["--device", "cuda", "--dry-run", "--json", str(target)]) == 0
    out = capsys.readouterr().out
    assert "14 prefill and 6 decode configurations" in out and str(target) in out
    assert "B=1 Hq=16 Hkv=16 T=16384" in out and "L=16384" in out
    assert not target.exists() and list(tmp_path.iterdir()) == []
    assert main(["--device", "cpu", "--quick", "--only", "decode", "--dry-run"]) == 0
    assert "0 prefill and 2 decode configurations" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "--repeats: expected an integer >= 1, got 0"),
    (["--threads", "-2"], "--threads: expected an integer >= 1, got -2"),
    (["--max-seq", "10", "--device", "cuda"], "--max-seq: expected at least 1024"),
    (["--json", "/nonexistent-folder/r.json"], "--json: expected a file in an existing folder"),
    (["--device", "tpu"], "argument --device: invalid choice"),
    (["--summary", "/nonexistent-folder/r.json"], "--summary: expected a results file written by --json"),
])
def test_bench_attention_rejects_bad_arguments_before_measuring(argv, message, capsys):
    from tinytransformer.bench.attention import main

    with pytest.raises(SystemExit) as stop:
        main(argv + ["--dry-run"])
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(GPU_OK, reason="this machine has a CUDA backend; the message is for machines without one")
def test_bench_attention_on_cuda_without_a_gpu_exits_nonzero_with_the_reason(capsys):
    from tinytransformer.bench.attention import main

    assert main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU and CuPy" in err and "Nothing was measured" in err


def test_bench_attention_on_the_cpu_states_threads_and_wall_time_and_writes_json(tmp_path, capsys):
    import json

    from tinytransformer.bench.attention import main, summary

    require("threadpoolctl", "a runtime dependency: the CPU benchmark sets and states BLAS threads through it")

    target = tmp_path / "cpu.json"
    assert main(["--device", "cpu", "--quick", "--only", "decode", "--repeats", "2", "--threads", "1",
                 "--json", str(target)]) == 0
    out = capsys.readouterr().out
    assert "1 thread" in out and "wall time, best of 2" in out
    results = json.loads(target.read_text())
    assert results["backend"] == "cpu" and "1 thread" in results["blas"]
    assert {r["impl"] for r in results["decode"]} == {"numpy_paged", "numpy_contiguous"}
    assert all(r["seconds"] > 0 and r["gbps"] > 0 for r in results["decode"])
    assert [p.name for p in tmp_path.iterdir()] == ["cpu.json"]  # no temporary file left behind
    assert out.rstrip().endswith(summary(results)[-1])  # the table comes last


def test_bench_summary_holds_each_gpu_goal_to_its_measured_figure():
    from tinytransformer.bench.attention import summary

    base = dict(B=4, Hq=16, Hkv=16, T=4096, S=4096, D=128, dtype="float16")
    prefill = [dict(base, causal=False, impl="flash_v3", seconds=2.0, tflops=50.0, ratio_to_sdpa=0.4),
               dict(base, causal=True, impl="flash_v3", seconds=1.0, tflops=50.0, ratio_to_sdpa=0.6),
               dict(base, causal=False, impl="torch_sdpa", seconds=0.8, tflops=125.0, ratio_to_sdpa=1.0)]
    decode = [dict(B=1, Hq=32, Hkv=8, D=128, L=16384, block_size=16, dtype="float16", impl="decode_v2",
                   seconds=1e-4, gbps=3000.0, fraction_of_copy=0.75)]
    lines = summary(dict(device="GPU", backend="cuda", date="now", timing="CUDA events", copy_gbps=4000.0,
                         prefill=prefill, decode=decode))
    text = "\n".join(lines)
    assert re.search(r"v3 / torch SDPA, not causal\s+0.40x\s+goal >= 0.50x\s+MISSED", text)
    assert re.search(r"v3 causal speed-up over not causal\s+2.00x\s+goal >= 1.70x\s+met", text)
    assert re.search(r"decode v2 share of copy, B = 1\s+75.0%\s+goal >= 70%\s+met", text)
    lines = summary(dict(device="GPU", backend="cuda", date="now", timing="CUDA events", prefill=[], decode=[]))
    assert "not measured" in "\n".join(lines)


def _fake_gpu(monkeypatch, failures, prefill_rows):
    """bench attention's GPU path (attention_gpu) with CuPy, the kernels and the timings replaced by stand-ins."""
    from types import SimpleNamespace

    from tinytransformer.bench import attention, attention_gpu

    runtime = SimpleNamespace(getDeviceProperties=lambda i: {"multiProcessorCount": 132},
                              runtimeGetVersion=lambda: 13000, driverGetVersion=lambda: 13000)
    device = SimpleNamespace(id=0)
    cupy = SimpleNamespace(__version__="fake", cuda=SimpleNamespace(runtime=runtime, Device=lambda: device))
    monkeypatch.setattr(cuda, "cuda_status", lambda: (True, "Fake GPU"))
    monkeypatch.setattr(cuda, "require_cuda", lambda: cupy)
    monkeypatch.setattr(attention_gpu, "torch_sdpa", lambda device: (None, "no torch in this test"))
    monkeypatch.setattr(attention_gpu, "validate_kernels", lambda: failures)
    monkeypatch.setattr(attention_gpu, "gpu_hold", lambda cupy: None)
    seen = []

    def gpu_prefill(cupy, torch, config, repeats, log, invalid=frozenset(), hold=None):
        seen.append(invalid)
        return prefill_rows(config, invalid)

    monkeypatch.setattr(attention_gpu, "gpu_prefill", gpu_prefill)
    return attention, seen


def test_bench_attention_leaves_out_a_kernel_that_fails_validation_and_times_the_rest(tmp_path, monkeypatch,
                                                                                        capsys):
    import json

    def rows(config, invalid):
        return [dict(config, dtype="float16", impl=impl, seconds=1.0, tflops=1.0)
                for impl in ("flash_v3", "torch_sdpa") if f"{impl} float16" not in invalid]

    attention, seen = _fake_gpu(monkeypatch, [("flash_v3 float16", "D=64 causal=True: wrong values")], rows)
    target = tmp_path / "gpu.json"
    assert attention.main(["--device", "cuda", "--quick", "--only", "flash", "--json", str(target)]) == 1
    captured = capsys.readouterr()
    assert "INVALID flash_v3 float16: D=64 causal=True: wrong values" in captured.err
    results = json.loads(target.read_text())
    assert results["invalid"] == ["flash_v3 float16"] and results["complete"] is True
    assert seen and all(invalid == {"flash_v3 float16"} for invalid in seen)
    assert results["prefill"] and {r["impl"] for r in results["prefill"]} == {"torch_sdpa"}  # the rest was timed
    assert "INVALID, not timed" in captured.out


def test_bench_attention_json_keeps_the_configurations_measured_before_a_run_is_cut_short(tmp_path, monkeypatch):
    import json

    calls = []

    def rows(config, invalid):
        calls.append(config)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the time limit of a GPU lease, say
        return [dict(config, dtype="float16", impl="flash_v3", seconds=1.0, tflops=1.0)]

    attention, _ = _fake_gpu(monkeypatch, [], rows)
    target = tmp_path / "gpu.json"
    with pytest.raises(KeyboardInterrupt):
        attention.main(["--device", "cuda", "--quick", "--only", "flash", "--json", str(target)])
    results = json.loads(target.read_text())
    assert results["complete"] is False and [r["T"] for r in results["prefill"]] == [c["T"] for c in calls[:2]]
    assert "INCOMPLETE" in "\n".join(attention.summary(results))
    assert [p.name for p in tmp_path.iterdir()] == ["gpu.json"]
