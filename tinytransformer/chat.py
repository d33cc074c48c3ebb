"""Chat templates: how a conversation becomes the one string an instruction-tuned model reads.

A chat model is still a next-token predictor. What makes it answer is training
on conversations written in a fixed format, with special tokens marking who
speaks. SmolLM2 (like Qwen and others) uses ChatML:

    <|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n
    <|im_start|>user\\nHi<|im_end|>\\n
    <|im_start|>assistant\\n                  <- the model continues from here

and stops by emitting <|im_end|>, its end-of-sequence token. GGUF files carry
the template as a Jinja program (`tokenizer.chat_template`); we write ChatML as
code instead and test it against what the template renders.

    >>> chat_prompt([{"role": "user", "content": "Hi"}], default_system=None)
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'

Does not handle: running arbitrary Jinja templates, tool calls, formats other than ChatML.
"""
from __future__ import annotations

__all__ = ["chat_prompt", "default_system_prompt", "DEFAULT_SYSTEM_PROMPT"]

DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

_OPEN_SYSTEM = "<|im_start|>system"
_CLOSE = "<|im_end|>"


def default_system_prompt(metadata: dict) -> str | None:
    """The system message a ChatML template inserts when none is given (read, not executed).

    SmolLM2's template contains '<|im_start|>system\\n...<|im_end|>' inside the
    branch for conversations without a system message; we take that text. The
    template comes from an untrusted file, so this is two linear `str.find`s,
    not a regular expression that could backtrack.
    """
    template = metadata.get("tokenizer.chat_template", "")
    if not isinstance(template, str):
        return None
    start = template.find(_OPEN_SYSTEM)
    while start != -1:
        body = start + len(_OPEN_SYSTEM)
        for newline in ("\\n", "\n"):  # the template writes the newline escaped or literally
            if template.startswith(newline, body):
                end = template.find(_CLOSE, body + len(newline))
                return None if end == -1 else template[body + len(newline):end]
        start = template.find(_OPEN_SYSTEM, body)
    return None


def chat_prompt(messages: list[dict], *, add_generation_prompt: bool = True,
                default_system: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """ChatML, the chat format of SmolLM2 (and Qwen, and others), written as code:

        <|im_start|>{role}\\n{content}<|im_end|>\\n    for each message
        <|im_start|>assistant\\n                      to ask for the reply

    A conversation that does not open with a system message gets
    `default_system` first (as SmolLM2's template does; None to leave it out).
    """
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages: expected a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}]: expected a dict with string 'role' and 'content', got {m!r}")
    parts = []
    if default_system is not None and messages and messages[0]["role"] != "system":
        parts.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    parts += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)
