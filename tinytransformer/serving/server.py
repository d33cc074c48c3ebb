"""Online serving: an OpenAI-compatible HTTP endpoint over the engine, with streaming.

    POST /v1/completions        {"prompt": "...", "max_tokens": 16, "temperature": 1, "top_p": 1,
                                 "seed": null, "stop": null, "stream": false}
    POST /v1/chat/completions   {"messages": [{"role": "user", "content": "..."}], ...the same fields}
    GET  /v1/models
    GET  /health                {"status": "ok"}, or a 503 once the engine has failed

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
(413), an unknown path (404) or method (405). The body's fields are checked in
`serving.request_body`; each endpoint below is a module-level function of
(Service, request), where a Service holds what the endpoints need.

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
import dataclasses
import functools
import json
import socket
import threading
import time
import uuid

from tinytransformer.serving.engine import EngineFailed
from tinytransformer.serving.request_body import (APIError, chat_messages, check_unsupported, integer_field,
                                                   number_field, prompt_ids, read_json, stop_strings)

__all__ = ["create_app", "Service", "completions", "chat_completions", "models", "BackgroundServer", "TextStream",
           "DEFAULT_MAX_BODY_BYTES"]

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more than any prompt that fits the context


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


# --- the application ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Service:
    """What the handlers need, gathered once when the application is made."""

    engine: object             # the BackgroundEngine requests are submitted to
    tokenizer: object          # the model's: text <-> ids
    name: str                  # the model name the API reports
    vocab_size: int            # V: token ids are in [0, V)
    eos_id: int | None         # the id that ends generation and shows no text
    context: int               # the model's context length
    limit: int                 # positions one request may use: min(context, the KV cache's positions)
    max_body_bytes: int
    default_system: str | None  # the chat template's default system prompt, if it has one


def sampling_options(service: Service, body, prompt: list[int], default_max_tokens: int | None) -> dict:
    """The engine options of a request body (max_tokens, temperature, top_p, seed), checked against the limits."""
    check_unsupported(body)
    limit = service.limit
    where = (f"the model's context length is {limit} tokens" if limit == service.context else
             f"this server's KV cache holds {limit} positions")
    if len(prompt) >= limit:
        raise APIError(f"prompt: {len(prompt)} tokens, but {where}; shorten the prompt", param="prompt")
    room = limit - len(prompt)
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = integer_field(body, name, default_max_tokens if default_max_tokens is not None else room, 1)
    if max_tokens > room:
        raise APIError(f"{name}: the prompt's {len(prompt)} tokens plus {max_tokens} new tokens exceed {limit} "
                       f"tokens ({where}); ask for at most {room}", param=name)
    top_p = number_field(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    options = dict(max_tokens=max_tokens, temperature=number_field(body, "temperature", 1.0, 0.0, 2.0),
                   top_p=None if top_p == 1.0 else top_p, seed=integer_field(body, "seed", None, -2**63, 2**64 - 1))
    if options["seed"] is not None and options["seed"] < 0:
        options["seed"] += 2**64  # NumPy seeds are non-negative; keep every 64-bit seed distinct
    return options


async def generate(service: Service, prompt, options, stops, info: dict | None = None):
    """Yield (new text, finish reason or None) as the engine produces tokens.
    info["request"] is set to the engine's Request (for its token count)."""
    loop = asyncio.get_running_loop()
    tokens: asyncio.Queue = asyncio.Queue()

    def listener(request, token):  # called in the engine thread
        loop.call_soon_threadsafe(tokens.put_nowait, token)

    engine = service.engine
    try:
        request = engine.submit(listener, prompt, options.pop("max_tokens"), **options)
    except EngineFailed:
        raise _failed(engine) from None
    except ValueError as e:
        raise APIError(str(e)) from None
    if info is not None:
        info["request"] = request
    text = TextStream(service.tokenizer, stops, skip_ids=() if service.eos_id is None else (service.eos_id,))
    try:
        while True:
            token = await tokens.get()
            if token is None:
                if request.finish_reason == "error":
                    raise _failed(engine)
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
            engine.abort(request)


def _failed(engine) -> APIError:
    """The 503 every request gets once the engine has failed."""
    return APIError(f"{EngineFailed(engine.error)}; see the server log", status=503, kind="server_error")


def _check_engine(service: Service) -> None:
    if getattr(service.engine, "error", None) is not None:
        raise _failed(service.engine)


async def collect(service: Service, http_request, prompt, options, stops) -> tuple[str, str, int]:
    """Generate to the end (no streaming): (text, finish reason, tokens generated).
    If the client disconnects meanwhile, the request is aborted."""
    pieces, reason, info = [], None, {}
    agen = generate(service, prompt, options, stops, info)
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
    request = info["request"]
    return "".join(pieces), reason, len(request.output)


# --- the responses: JSON, or server-sent events -------------------------------------------------


def _head(prefix: str, kind: str, name: str) -> dict:
    """The fields every response and chunk of one answer shares."""
    return {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "object": kind, "created": int(time.time()), "model": name}


def _usage(prompt, n_out: int) -> dict:
    return {"prompt_tokens": len(prompt), "completion_tokens": n_out, "total_tokens": len(prompt) + n_out}


def _sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _json(data, status: int = 200):
    from starlette.responses import JSONResponse

    return JSONResponse(data, status_code=status)


class ClosingStream:
    """A server-sent event stream (an ASGI response) that awaits on_close however it ends:
    done, an error, or a client that went away."""

    def __init__(self, events, on_close):
        from starlette.responses import StreamingResponse

        self.response = StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await self.response(scope, receive, send)
        finally:
            await self.on_close()


async def _errors_as_events(events):
    """An error after the 200 headers went out, sent as OpenAI does: a `data: {"error": ...}` event."""
    try:
        async for event in events:
            yield event
    except APIError as error:
        yield _sse(error.body())
        yield "data: [DONE]\n\n"


async def _completion_events(head: dict, pieces):
    async for delta, reason in pieces:
        yield _sse({**head, "choices": [{"index": 0, "text": delta, "logprobs": None, "finish_reason": reason}]})
    yield "data: [DONE]\n\n"


async def _chat_events(head: dict, pieces):
    """The role first, then one chunk per piece of text, then the finish reason in a chunk of its own."""
    yield _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                     "finish_reason": None}]})
    async for delta, reason in pieces:
        if delta:
            yield _sse({**head, "choices": [{"index": 0, "delta": {"content": delta}, "logprobs": None,
                                             "finish_reason": None}]})
        if reason:
            yield _sse({**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}]})
    yield "data: [DONE]\n\n"


# --- the endpoints: module-level functions of (service, request), bound to a Service by create_app ---


async def completions(service: Service, http_request):
    """POST /v1/completions: a prompt (text or token ids) in, its continuation out."""
    body = await read_json(http_request, service.max_body_bytes)
    prompt = prompt_ids(body, service.tokenizer, service.vocab_size)
    options = sampling_options(service, body, prompt, 16)
    stops = stop_strings(body)
    head = _head("cmpl", "text_completion", service.name)
    if body.get("stream"):
        _check_engine(service)
        pieces = generate(service, prompt, options, stops)
        return ClosingStream(_errors_as_events(_completion_events(head, pieces)), pieces.aclose)
    text, reason, n_out = await collect(service, http_request, prompt, options, stops)
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
    return _json({**head, "choices": [choice], "usage": _usage(prompt, n_out)})


async def chat_completions(service: Service, http_request):
    """POST /v1/chat/completions: messages in, the assistant's reply out (through the chat template)."""
    from tinytransformer.chat import chat_prompt

    body = await read_json(http_request, service.max_body_bytes)
    prompt = service.tokenizer.encode(chat_prompt(chat_messages(body), default_system=service.default_system))
    options = sampling_options(service, body, prompt, None)
    stops = stop_strings(body)
    head = _head("chatcmpl", "chat.completion.chunk", service.name)
    if body.get("stream"):
        _check_engine(service)
        pieces = generate(service, prompt, options, stops)
        return ClosingStream(_errors_as_events(_chat_events(head, pieces)), pieces.aclose)
    text, reason, n_out = await collect(service, http_request, prompt, options, stops)
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
              "finish_reason": reason}
    return _json({**head, "object": "chat.completion", "choices": [choice], "usage": _usage(prompt, n_out)})


async def models(service: Service, http_request):
    """GET /v1/models: the one model served (a 503 once the engine has failed)."""
    _check_engine(service)
    return _json({"object": "list", "data": [{"id": service.name, "object": "model", "created": 0,
                                              "owned_by": "tinytransformer"}]})


async def health(service: Service, http_request):
    """GET /health: {"status": "ok"}, or a 503 in OpenAI's error format once the engine has failed."""
    _check_engine(service)
    return _json({"status": "ok"})


async def api_error(http_request, error: APIError):
    return _json(error.body(), error.status)


async def http_error(http_request, error):
    """A Starlette HTTPException (unknown path, wrong method) in OpenAI's error format."""
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    message = f"{http_request.method} {http_request.url.path}: {error.detail}"
    return _json(APIError(message, status=error.status_code, kind=kind).body(), error.status_code)


@contextlib.asynccontextmanager
async def _stop_on_shutdown(engine, app):
    yield
    engine.stop()


def _cache_positions(engine) -> int:
    """How many positions the engine's paged KV cache holds (run in the engine thread)."""
    blocks = engine.scheduler.blocks
    return blocks.n_blocks * blocks.block_size


def create_app(loaded, *, engine=None, model_name: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               **engine_options):
    """A Starlette application serving loaded.model with loaded.tokenizer (a llama.LoadedModel).

    engine: a BackgroundEngine to use (by default one is made with engine_options:
    n_blocks, block_size, policy, max_seqs, max_tokens_per_step, max_wait; see `Engine`).
    It is stopped when the application shuts down. app.state.engine is the BackgroundEngine.
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    from tinytransformer.chat import default_system_prompt
    from tinytransformer.serving.engine import BackgroundEngine, Engine

    model = loaded.model
    tokenizer = loaded.tokenizer  # a model without one raises ValueError here, not at the first request
    background = engine if engine is not None else BackgroundEngine(Engine(model, **engine_options))
    config = model.config
    system = default_system_prompt(loaded.metadata) if "tokenizer.chat_template" in loaded.metadata else None
    service = Service(engine=background, tokenizer=tokenizer, name=model_name or config.name or "tinytransformer",
                      vocab_size=config.vocab_size, eos_id=config.eos_id, context=config.max_seq_len,
                      limit=min(config.max_seq_len, background.call(_cache_positions)),
                      max_body_bytes=max_body_bytes, default_system=system)
    routes = [Route("/v1/completions", functools.partial(completions, service), methods=["POST"]),
              Route("/v1/chat/completions", functools.partial(chat_completions, service), methods=["POST"]),
              Route("/v1/models", functools.partial(models, service), methods=["GET"]),
              Route("/health", functools.partial(health, service), methods=["GET"])]
    app = Starlette(routes=routes, exception_handlers={APIError: api_error, HTTPException: http_error},
                    lifespan=functools.partial(_stop_on_shutdown, background))
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
