"""The OpenAI request body, read and checked: each field's type and range, or an APIError.

An APIError carries what the client is answered: an HTTP status and OpenAI's error
format, {"error": {"message": ..., "type": "invalid_request_error", "param": ...}}.
Each message reads `field: expected X, got Y`, like every other check in the package.

    >>> integer_field({"max_tokens": 0}, "max_tokens", 16, 1)
    Traceback (most recent call last):
    ...
    tinytransformer.serving.request_body.APIError: max_tokens: expected an integer >= 1, got 0
    >>> stop_strings({"stop": "\\n"}), prompt_ids({"prompt": [3, 1]}, tokenizer=None, vocab_size=5)
    (['\\n'], [3, 1])

Does not handle: a batch of prompts (one prompt per request), content parts other than
text, fields this server does not support (n > 1, logprobs, tools...: they get a 400).
"""
from __future__ import annotations

import json

from tinytransformer._validate import integer, is_integer, is_real

__all__ = ["APIError", "read_json", "integer_field", "number_field", "stop_strings", "check_unsupported",
           "prompt_ids", "chat_messages", "MAX_STOPS", "MAX_STOP_CHARS", "ROLES"]

MAX_STOPS, MAX_STOP_CHARS = 4, 256
ROLES = ("system", "user", "assistant")


class APIError(Exception):
    """An error answered to the client: HTTP status, message, and the offending field."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


async def read_json(request, limit: int) -> dict:
    """The body as a JSON object, reading at most `limit` bytes (413 beyond)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError(f"Content-Length: expected a number of bytes, got {declared!r}")
        if int(declared) > limit:
            raise APIError(f"body: {int(declared)} bytes is over this server's limit of {limit} bytes", status=413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(f"body: over this server's limit of {limit} bytes", status=413)
    try:
        data = json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(f"body: expected a JSON object, got invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise APIError(f"body: expected a JSON object, got a JSON {type(data).__name__}")
    return data


def integer_field(body, name, default, low, high=None):
    """body[name] as an int in [low, high] (default when absent or null), else a 400 naming the field."""
    value = body.get(name, default)
    if value is None:
        return default
    try:
        return integer(value, name, low=low, high=high)
    except ValueError as e:
        raise APIError(str(e), param=name) from None


def number_field(body, name, default, low, high, *, low_open=False):
    """body[name] as a float in [low, high] ((low, high] when low_open; default when absent or null), else a 400."""
    value = body.get(name, default)
    if value is None:
        return default
    if not is_real(value) or not ((low < value if low_open else low <= value) and value <= high):
        raise APIError(f"{name}: expected a number in {'(' if low_open else '['}{low}, {high}], got {value!r}",
                       param=name)
    return float(value)


def stop_strings(body) -> list[str]:
    """The stop strings: "stop" as a list of 1 to MAX_STOPS non-empty strings ([] when absent)."""
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not 1 <= len(stops) <= MAX_STOPS or not all(
            isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops):
        raise APIError(f"stop: expected a string or a list of 1 to {MAX_STOPS} non-empty strings of at most "
                       f"{MAX_STOP_CHARS} characters, got {str(stop)[:80]}", param="stop")
    return stops


def check_unsupported(body) -> None:
    """A 400 for a field this server does not support (n > 1, logprobs, tools...) or a non-boolean "stream"."""
    checks = {"n": lambda v: v in (None, 1), "best_of": lambda v: v in (None, 1), "echo": lambda v: v in (None, False),
              "logprobs": lambda v: v in (None, False), "top_logprobs": lambda v: v in (None, 0),
              "suffix": lambda v: v is None, "tools": lambda v: not v, "functions": lambda v: not v,
              "logit_bias": lambda v: not v, "presence_penalty": lambda v: v in (None, 0),
              "frequency_penalty": lambda v: v in (None, 0)}
    for name, ok in checks.items():
        if name in body and not ok(body[name]):
            raise APIError(f"{name}: not supported by this server, got {str(body[name])[:80]}", param=name)
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise APIError(f"stream: expected true or false, got {stream!r}", param="stream")


def prompt_ids(body, tokenizer, vocab_size) -> list[int]:
    """The prompt's token ids: "prompt" as text (encoded with tokenizer) or as ids in [0, vocab_size)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, str):
        if not prompt:
            raise APIError("prompt: expected a non-empty string, got an empty one", param="prompt")
        return tokenizer.encode(prompt)
    if isinstance(prompt, list) and prompt and all(is_integer(t) for t in prompt):
        if not all(0 <= t < vocab_size for t in prompt):
            raise APIError(f"prompt: token ids must be in [0, {vocab_size})", param="prompt")
        return prompt
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
        raise APIError(f"prompt: this server takes one prompt per request, got {len(prompt)}", param="prompt")
    raise APIError(f"prompt: expected a string or a list of token ids, got {str(prompt)[:80]}", param="prompt")


def chat_messages(body) -> list[dict]:
    """"messages" as a list of {role, content} with text content (text parts are joined)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError("messages: expected a non-empty list of {role, content} objects", param="messages")
    out = []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # content parts: only text
            if all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
                content = "".join(p["text"] for p in content)
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(content, str):
            raise APIError(f"messages[{i}]: expected {{'role': one of {list(ROLES)}, 'content': a string}}, "
                           f"got {str(m)[:80]}", param="messages")
        out.append({"role": m["role"], "content": content})
    return out
