"""ChatML as code (tinytransformer.chat) equals the chat template the GGUF file carries."""
from __future__ import annotations

import time

import pytest
from conftest import require

from tinytransformer.chat import chat_prompt, default_system_prompt
from tinytransformer.gguf import GGUFFile


def test_chat_prompt_is_chatml():
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "2+2?"}]
    assert chat_prompt(messages, default_system="S") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        chat_prompt([{"role": "user"}])


@pytest.mark.model
@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
    [],
])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_prompt_equals_the_files_jinja_template(smollm2_path, messages, add_generation_prompt):
    jinja2 = require("jinja2", "renders the reference chat template")
    with GGUFFile(smollm2_path) as f:
        metadata = {"tokenizer.chat_template": f.metadata["tokenizer.chat_template"]}
    template = jinja2.Environment().from_string(metadata["tokenizer.chat_template"])
    expected = template.render(messages=messages, add_generation_prompt=add_generation_prompt)
    ours = chat_prompt(messages, add_generation_prompt=add_generation_prompt,
                       default_system=default_system_prompt(metadata))
    assert ours == expected


def test_reading_the_default_system_prompt_is_linear_in_the_template_size():
    # an untrusted template of 160 KB of repeated openings took 18-40 s with a lazy regular expression
    template = "<|im_start|>system\n" * 10_000
    start = time.perf_counter()
    assert default_system_prompt({"tokenizer.chat_template": template}) is None
    assert time.perf_counter() - start < 0.5
    assert default_system_prompt({"tokenizer.chat_template": "x<|im_start|>system\nBe kind<|im_end|>"}) == "Be kind"
    assert default_system_prompt({"tokenizer.chat_template": 7}) is None
