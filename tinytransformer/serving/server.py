"""Online serving: an OpenAI-compatible HTTP endpoint over the engine, with streaming.

    POST /v1/completions        {"prompt": "...", "max_tokens": 16, "temperature": 1, "top_p": 1,
                                 "seed": null, "stop": null, "stream": false}
    POST /v1/chat/completions   {"messages": [{"role": "user", "content": "..."}], ...the same fields}
    GET  /v1/models

The request and response bodies follow OpenAI's API, so its official Python
client (and anything else that speaks it) works unchanged:

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="smollm2", messages=[...], stream=True)

With "stream": true the answer comes as server-sent events (SSE): one
`data: {json}` line per piece of text as the tokens arrive, then `data: [DONE]`.
Each HTTP request becomes one engine request; the engine steps in a background
thread (`engine.BackgroundEngine`) and hands each new token to the request's
handler, which turns ids into text as they become final (a character may span
tokens, and text that could be the start of a stop string is held back until
it is not). A stop string ends the request in the engine at once, and so does
a client that goes away: its blocks return to the pool.

Bad requests get a 4xx answer in OpenAI's error format, {"error": {"message":
..., "type": "invalid_request_error", "param": ...}}: invalid JSON or fields
(400), a prompt that does not fit the context (400), a body over the size limit
(413), an unknown path (404) or method (405).

The HTTP layer is Starlette (routing, requests, streaming responses) under
uvicorn (the server), both small and well kept, installed by the `serve` extra:
`pip install "tinytransformer[serve]"`. Writing HTTP by hand (even on the
standard library's http.server) means owning request parsing, chunked bodies,
keep-alive and disconnect detection, none of which this chapter is about.

Does not handle: authentication (bind to localhost, the default), TLS, n > 1,
logprobs, echo, tools and function calls, penalties, the Responses API.
"""
from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import socket
import threading
import time
import uuid

__all__ = ["create_app", "BackgroundServer", "TextStream", "APIError", "DEFAULT_MAX_BODY_BYTES"]

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more than any prompt that fits the context
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


class TextStream:
    """Token ids in, text out as it becomes final.

    Bytes are decoded incrementally (a UTF-8 character may span tokens), and
    text that could still become a stop string is held back. add(token) returns
    (new text, True if a stop string was reached); the stop string itself is
    never sent. flush() returns what was held back when generation ends.

    >>> class Bytes:                       # a tokenizer whose token i is the byte i
    ...     token_bytes = staticmethod(lambda i: bytes([i]))
    >>> stream = TextStream(Bytes(), stops=["\\n\\n"])
    >>> [stream.add(t) for t in b"hi\\nyo\\n\\nno"]   # "\\n" is held back until the next byte
    [('h', False), ('i', False), ('', False), ('\\ny', False), ('o', False), ('', False), ('', True),
     ('', True), ('', True)]
    >>> stream.text
    'hi\\nyo'
    """

    def __init__(self, tokenizer, stops=(), skip_ids=()):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.skip_ids = set(skip_ids)  # ids that end generation and show no text (end of sequence)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._sent = 0
        self.stopped = False

    @property
    def text(self) -> str:
        """Everything sent so far."""
        return self._text[:self._sent]

    def add(self, token: int) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if token not in self.skip_ids:
            self._text += self._decoder.decode(self.tokenizer.token_bytes(token))
        return self._release(final=False)

    def flush(self) -> str:
        if self.stopped:
            return ""
        self._text += self._decoder.decode(b"", final=True)
        return self._release(final=True)[0]

    def _release(self, final: bool) -> tuple[str, bool]:
        text, start = self._text, self._sent
        search_from = max(0, start - max((len(s) for s in self.stops), default=0))
        hits = [i for i in (text.find(s, search_from) for s in self.stops) if i != -1]
        if hits:
            end, self.stopped = min(hits), True
        elif final:
            end = len(text)
        else:  # hold back the longest tail that begins some stop string
            held = max((n for s in self.stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
            end = len(text) - held
        end = max(end, start)
        self._sent = end
        return text[start:end], self.stopped


# --- reading and checking a request body ------------------------------------------------------


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


def _integer(body, name, default, low, high=None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise APIError(f"{name}: expected an integer {bounds}, got {value!r}", param=name)
    return value


def _number(body, name, default, low, high, *, low_open=False):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            (low < value if low_open else low <= value) and value <= high):
        raise APIError(f"{name}: expected a number in {'(' if low_open else '['}{low}, {high}], got {value!r}",
                       param=name)
    return float(value)


def _stops(body) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not 1 <= len(stops) <= MAX_STOPS or not all(
            isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops):
        raise APIError(f"stop: expected a string or a list of 1 to {MAX_STOPS} non-empty strings of at most "
                       f"{MAX_STOP_CHARS} characters, got {str(stop)[:80]}", param="stop")
    return stops


def _unsupported(body) -> None:
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


def _prompt_ids(body, tokenizer, vocab_size) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, str):
        if not prompt:
            raise APIError("prompt: expected a non-empty string, got an empty one", param="prompt")
        return tokenizer.encode(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if not all(0 <= t < vocab_size for t in prompt):
            raise APIError(f"prompt: token ids must be in [0, {vocab_size})", param="prompt")
        return prompt
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
        raise APIError(f"prompt: this server takes one prompt per request, got {len(prompt)}", param="prompt")
    raise APIError(f"prompt: expected a string or a list of token ids, got {str(prompt)[:80]}", param="prompt")


def _messages(body) -> list[dict]:
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


# --- the application ----------------------------------------------------------------------------


class _Handler:
    """What every endpoint shares: the engine, the tokenizer, checking, and generation."""

    def __init__(self, model, tokenizer, engine, name: str, max_body_bytes: int, default_system):
        self.model, self.engine, self.name = model, engine, name
        self.tokenizer = tokenizer
        self.max_body_bytes = max_body_bytes
        self.default_system = default_system

    def sampling(self, body, prompt: list[int], default_max_tokens: int | None) -> dict:
        _unsupported(body)
        context = self.model.config.max_seq_len
        blocks = self.engine.engine.scheduler.blocks
        limit = min(context, blocks.n_blocks * blocks.block_size)  # a request must fit the context and the cache
        where = (f"the model's context length is {context} tokens" if limit == context else
                 f"this server's KV cache holds {limit} positions")
        if len(prompt) >= limit:
            raise APIError(f"prompt: {len(prompt)} tokens, but {where}; shorten the prompt", param="prompt")
        room = limit - len(prompt)
        name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = _integer(body, name, default_max_tokens if default_max_tokens is not None else room, 1)
        if max_tokens > room:
            raise APIError(f"{name}: the prompt's {len(prompt)} tokens plus {max_tokens} new tokens exceed {limit} "
                           f"tokens ({where}); ask for at most {room}", param=name)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
        options = dict(max_tokens=max_tokens, temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                       top_p=None if top_p == 1.0 else top_p, seed=_integer(body, "seed", None, -2**63, 2**64 - 1))
        if options["seed"] is not None and options["seed"] < 0:
            options["seed"] += 2**64  # NumPy seeds are non-negative; keep every 64-bit seed distinct
        return options

    async def generate(self, prompt, options, stops, info: dict | None = None):
        """Yield (new text, finish reason or None) as the engine produces tokens.
        info["request"] is set to the engine's Request (for its token count)."""
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue = asyncio.Queue()

        def listener(request, token):  # called in the engine thread
            loop.call_soon_threadsafe(tokens.put_nowait, token)

        try:
            request = self.engine.submit(listener, prompt, options.pop("max_tokens"), **options)
        except ValueError as e:
            raise APIError(str(e)) from None
        if info is not None:
            info["request"] = request
        eos = self.model.config.eos_id
        text = TextStream(self.tokenizer, stops, skip_ids=() if eos is None else (eos,))
        try:
            while True:
                token = await tokens.get()
                if token is None:
                    if request.finish_reason == "error":
                        raise APIError("the engine failed; see the server log", status=500, kind="server_error")
                    yield text.flush(), "stop" if request.finish_reason in ("stop", "abort") else "length"
                    return
                delta, stopped = text.add(token)
                if stopped:
                    yield delta, "stop"
                    return
                if delta:
                    yield delta, None
        finally:
            if not request.finished:  # a stop string ended it, or the client went away: free its blocks now
                self.engine.abort(request)

    async def collect(self, http_request, prompt, options, stops) -> tuple[str, str, int]:
        """Generate to the end (no streaming): (text, finish reason, tokens generated).
        If the client disconnects meanwhile, the request is aborted."""
        pieces, reason, info = [], None, {}
        agen = self.generate(prompt, options, stops, info)
        try:
            while True:
                step = asyncio.ensure_future(agen.__anext__())
                while not step.done():
                    await asyncio.wait({step}, timeout=0.25)
                    if not step.done() and await http_request.is_disconnected():
                        step.cancel()
                        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                            await step
                        raise asyncio.CancelledError("the client disconnected")
                try:
                    delta, reason = step.result()
                except StopAsyncIteration:
                    break
                pieces.append(delta)
        finally:
            await agen.aclose()
        return "".join(pieces), reason, len(info["request"].output)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(loaded, *, engine=None, model_name: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               **engine_options):
    """A Starlette application serving loaded.model with loaded.tokenizer (a llama.LoadedModel).

    engine: a BackgroundEngine to use (by default one is made with engine_options:
    n_blocks, block_size, policy, max_seqs, max_tokens_per_step, max_wait; see `Engine`).
    It is stopped when the application shuts down. app.state.engine is the BackgroundEngine.
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    from tinytransformer.chat import chat_prompt, default_system_prompt
    from tinytransformer.serving.engine import BackgroundEngine, Engine

    model = loaded.model
    tokenizer = loaded.tokenizer  # a model without one raises ValueError here, not at the first request
    background = engine if engine is not None else BackgroundEngine(Engine(model, **engine_options))
    name = model_name or model.config.name or "tinytransformer"
    system = default_system_prompt(loaded.metadata) if "tokenizer.chat_template" in loaded.metadata else None
    handler = _Handler(model, tokenizer, background, name, max_body_bytes, system)

    class _Stream(StreamingResponse):
        """A streaming response that runs on_close however it ends (done, error, or disconnect)."""

        def __init__(self, content, on_close):
            super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            self.on_close = on_close

        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                await self.on_close()

    async def answer(http_request, chat: bool):
        body = await read_json(http_request, handler.max_body_bytes)
        if chat:
            text = chat_prompt(_messages(body), default_system=handler.default_system)
            prompt = handler.tokenizer.encode(text)
            options = handler.sampling(body, prompt, None)
        else:
            prompt = _prompt_ids(body, handler.tokenizer, model.config.vocab_size)
            options = handler.sampling(body, prompt, 16)
        stops = _stops(body)
        ident, created = _new_id("chatcmpl" if chat else "cmpl"), int(time.time())
        head = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                "model": name}
        if body.get("stream"):
            agen = handler.generate(prompt, options, stops)

            async def events():
                if chat:
                    yield _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                     "logprobs": None, "finish_reason": None}]})
                async for delta, reason in agen:
                    if chat:
                        if delta:
                            yield _sse({**head, "choices": [{"index": 0, "delta": {"content": delta},
                                                             "logprobs": None, "finish_reason": None}]})
                        if reason:
                            yield _sse({**head, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                                             "finish_reason": reason}]})
                    else:
                        yield _sse({**head, "choices": [{"index": 0, "text": delta, "logprobs": None,
                                                         "finish_reason": reason}]})
                yield "data: [DONE]\n\n"

            return _Stream(events(), agen.aclose)
        text, reason, n_out = await handler.collect(http_request, prompt, options, stops)
        usage = {"prompt_tokens": len(prompt), "completion_tokens": n_out, "total_tokens": len(prompt) + n_out}
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": reason}
            return JSONResponse({**head, "object": "chat.completion", "choices": [choice], "usage": usage})
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return JSONResponse({**head, "choices": [choice], "usage": usage})

    async def completions(http_request):
        return await answer(http_request, chat=False)

    async def chat_completions(http_request):
        return await answer(http_request, chat=True)

    async def models(http_request):
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                                          "owned_by": "tinytransformer"}]})

    async def api_error(http_request, error: APIError):
        return JSONResponse(error.body(), status_code=error.status)

    async def http_error(http_request, error: HTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        message = f"{http_request.method} {http_request.url.path}: {error.detail}"
        return JSONResponse(APIError(message, status=error.status_code, kind=kind).body(),
                            status_code=error.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        background.stop()

    app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]),
                            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                            Route("/v1/models", models, methods=["GET"])],
                    exception_handlers={APIError: api_error, HTTPException: http_error}, lifespan=lifespan)
    app.state.engine = background
    return app


class BackgroundServer:
    """uvicorn serving an app from a thread, on a free port of host (for tests and lectures).

        with BackgroundServer(app) as server:
            ... server.url ...     # e.g. http://127.0.0.1:53211
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = host, self._socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start within 30 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()
