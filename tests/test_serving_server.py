"""The OpenAI-compatible server (chapter 12), on 127.0.0.1 only: the official openai client gets what the
model generates, streamed or not; bad requests get a 4xx with a clear message; concurrent clients are
all answered; a client that disconnects mid-stream frees its blocks. Every request is bounded in time."""
from __future__ import annotations

import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import require
from tinytransformer.attention import scaled_dot_product_attention
from tinytransformer.chat import chat_prompt
from tinytransformer.generation import generate
from tinytransformer.random_llama import write_random_llama

require("starlette", "the serve extra")
require("uvicorn", "the serve extra")
openai = require("openai", "the official client the server is tested with")
try:  # the HTTP client under the openai client: httpx2 in its newer releases, httpx before
    import httpx2 as httpx
except ImportError:
    httpx = require("httpx", "the HTTP client of the openai client")

from tinytransformer.llama import load_model  # noqa: E402
from tinytransformer.serving.server import BackgroundServer, TextStream, create_app  # noqa: E402

TIMEOUT = 30  # seconds, for every request a test makes
N_BLOCKS = 40


def _slow_attention(q, k, v, **options):
    time.sleep(0.002)  # a few ms per layer call: a stream lasts long enough to hang up on it
    return scaled_dot_product_attention(q, k, v, **options)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = write_random_llama(tmp_path_factory.mktemp("serve") / "tiny.gguf", context_length=128)
    loaded = load_model(path)
    app = create_app(loaded, model_name="tiny", n_blocks=N_BLOCKS, block_size=8, max_seqs=4, max_body_bytes=4096)
    with BackgroundServer(app) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
        yield loaded, app.state.engine, server, client
    assert not app.state.engine._thread.is_alive(), "the engine thread should stop with the server"


def _text(loaded, ids) -> str:
    eos = loaded.model.config.eos_id
    return b"".join(loaded.tokenizer.token_bytes(t) for t in ids if t != eos).decode("utf-8", errors="replace")


def _idle(engine, seconds: float = 10.0) -> tuple[int, int]:
    """Wait until the engine holds no request; (free blocks, requests still held)."""
    deadline = time.monotonic() + seconds
    while True:
        free, held = engine.call(lambda e: (e.cache.n_free_blocks, len(e.scheduler.running) + len(e.scheduler.waiting)))
        if held == 0 or time.monotonic() > deadline:
            return free, held
        time.sleep(0.05)


def test_the_openai_client_gets_the_models_greedy_completion_streamed_or_not(served):
    loaded, engine, _, client = served
    model, tokenizer = loaded.model, loaded.tokenizer
    prompt = "the cat"
    expected = _text(loaded, generate(model, tokenizer.encode(prompt), 12))
    reply = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
    assert reply.choices[0].text == expected
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.prompt_tokens == len(
        tokenizer.encode(prompt))
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_the_openai_client_chats_with_the_chat_template_streamed_or_not(served):
    loaded, engine, _, client = served
    model, tokenizer = loaded.model, loaded.tokenizer
    messages = [{"role": "user", "content": "hi there"}]
    ids = tokenizer.encode(chat_prompt(messages, default_system=None))
    expected = _text(loaded, generate(model, ids, 10))
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    assert reply.choices[0].message.content == expected and reply.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == expected


def test_seeded_sampling_repeats_and_top_p_and_stop_strings_apply(served):
    loaded, engine, _, client = served
    model, tokenizer = loaded.model, loaded.tokenizer
    ask = dict(model="tiny", prompt="a b c", max_tokens=16, temperature=1.2, top_p=0.9, seed=11)
    first, second = (client.completions.create(**ask).choices[0].text for _ in range(2))
    assert first == second
    expected = _text(loaded, generate(model, tokenizer.encode("a b c"), 16, temperature=1.2, top_p=0.9, seed=11))
    assert first == expected
    if len(first) > 3:  # a stop string cuts the text before it and ends the request
        stop = first[2:4]
        cut = client.completions.create(**ask, stop=[stop]).choices[0]
        assert cut.text == first[:first.find(stop)] and cut.finish_reason == "stop"
    assert _idle(engine) == (N_BLOCKS, 0)


def test_concurrent_clients_are_all_answered_and_no_block_leaks(served):
    loaded, engine, server, _ = served
    model, tokenizer = loaded.model, loaded.tokenizer
    answers, errors = {}, []

    def one_client(i):
        try:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
            for j in range(2):
                prompt = f"client {i} request {j}"
                if (i + j) % 2:
                    stream = client.completions.create(model="tiny", prompt=prompt, max_tokens=6 + i, temperature=0,
                                                       stream=True)
                    answers[i, j] = "".join(c.choices[0].text for c in stream)
                else:
                    answers[i, j] = client.completions.create(model="tiny", prompt=prompt, max_tokens=6 + i,
                                                              temperature=0).choices[0].text
        except Exception as e:  # collected: a thread's exception would otherwise be lost
            errors.append(repr(e))

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=4 * TIMEOUT)
    assert not errors and len(answers) == 12
    for (i, j), text in answers.items():
        ids = tokenizer.encode(f"client {i} request {j}")
        assert text == _text(loaded, generate(model, ids, 6 + i)), (i, j)
    assert _idle(engine) == (N_BLOCKS, 0)


def test_a_client_that_hangs_up_mid_stream_frees_its_blocks(served):
    loaded, engine, server, _ = served
    model, tokenizer = loaded.model, loaded.tokenizer
    prompt = tokenizer.encode("hang up")
    model.attention = _slow_attention
    try:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 100, "temperature": 0, "stream": True}
        with httpx.Client(timeout=TIMEOUT) as http:
            with http.stream("POST", server.url + "/v1/completions", json=body) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                assert next(line for line in lines if line.startswith("data: "))  # the first piece arrived
        free, held = _idle(engine)
    finally:
        model.attention = "sdpa"
    assert (free, held) == (N_BLOCKS, 0)
    last = engine.finished[-1]
    assert last.prompt == prompt and last.finish_reason == "abort" and len(last.output) < 100


@pytest.mark.parametrize("path,body,status,message", [
    ("/v1/completions", b"{not json", 400, "body: expected a JSON object, got invalid JSON"),
    ("/v1/completions", b"[1, 2]", 400, "body: expected a JSON object, got a JSON list"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt: expected a string or a list of token ids"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt: this server takes one prompt per request, got 2"),
    ("/v1/completions", {"prompt": [1, 999]}, 400, r"prompt: token ids must be in [0, 265)"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "many"}, 400, "max_tokens: expected an integer >= 1"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": True}, 400, "max_tokens: expected an integer >= 1"),
    ("/v1/completions", {"prompt": "hi", "temperature": 3}, 400, "temperature: expected a number in [0.0, 2.0]"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, 400, "top_p: expected a number in (0.0, 1.0]"),
    ("/v1/completions", {"prompt": "hi", "stop": ["a", ""]}, 400, "stop: expected a string or a list of 1 to 4"),
    ("/v1/completions", {"prompt": "hi", "n": 2}, 400, "n: not supported by this server"),
    ("/v1/completions", {"prompt": "hi", "stream": "yes"}, 400, "stream: expected true or false"),
    ("/v1/completions", {"prompt": "x" * 200}, 400, "prompt: 200 tokens, but the model's context length is 128"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 127}, 400, "max_tokens: the prompt's 2 tokens plus 127"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi " * 80}]}, 400,
     "tokens, but the model's context length is 128 tokens"),
    ("/v1/completions", {"prompt": "hi " * 2000}, 413, "bytes is over this server's limit of 4096 bytes"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages: expected a non-empty list"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0]: expected"),
    ("/v1/nothing", {}, 404, "POST /v1/nothing: Not Found"),
])
def test_bad_requests_get_a_4xx_with_a_clear_message(served, path, body, status, message):
    _, engine, server, _ = served
    with httpx.Client(timeout=TIMEOUT) as http:
        if isinstance(body, bytes):
            response = http.post(server.url + path, content=body, headers={"Content-Type": "application/json"})
        else:
            response = http.post(server.url + path, json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"] and error["type"]
    assert _idle(engine) == (N_BLOCKS, 0)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 300) | st.floats(-3, 3) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                         max_size=3), max_leaves=6)
FIELDS = ("prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "n", "messages", "logprobs")


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6),
       path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
def test_any_json_body_gets_an_answer_or_a_4xx_never_a_server_error(served, body, path):
    _, engine, server, _ = served
    body.setdefault("max_tokens", 4)
    with httpx.Client(timeout=TIMEOUT) as http:
        response = http.post(server.url + path, json=body)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["error"]["message"]
    assert _idle(engine) == (N_BLOCKS, 0)


def test_a_body_without_a_length_is_still_cut_at_the_limit(served):
    _, _, server, _ = served

    def chunks():
        for _ in range(10):
            yield b" " * 1000

    with httpx.Client(timeout=TIMEOUT) as http:
        response = http.post(server.url + "/v1/completions", content=chunks())  # chunked: no Content-Length
    assert response.status_code == 413 and "over this server's limit" in response.json()["error"]["message"]


def test_the_wrong_method_gets_405(served):
    _, _, server, _ = served
    with httpx.Client(timeout=TIMEOUT) as http:
        response = http.get(server.url + "/v1/completions")
    assert response.status_code == 405 and "GET /v1/completions" in response.json()["error"]["message"]


def test_text_is_released_as_it_becomes_final():
    class Bytes:
        token_bytes = staticmethod(lambda i: bytes([i]))

    stream = TextStream(Bytes(), stops=["END"])
    pieces = [stream.add(b) for b in "héllo EN".encode()]  # é is two bytes; "EN" might begin "END"
    assert "".join(p for p, _ in pieces) == "héllo " and stream.flush() == "EN"
    stream = TextStream(Bytes(), stops=["END"])
    assert "".join(stream.add(b)[0] for b in b"abENDcd") == "ab" and stream.stopped


def test_the_serve_command_is_wired_into_the_cli_and_checks_its_port(capsys):
    from tinytransformer.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "--max-seqs" in capsys.readouterr().out
    assert main(["serve", "--port", "70000"]) == 1
    assert "--port: expected a port number in [0, 65535], got 70000" in capsys.readouterr().err


def test_serve_refuses_a_kv_cache_larger_than_the_free_memory_before_it_listens(tmp_path, monkeypatch, capsys):
    from tinytransformer import kv_cache
    from tinytransformer.cli import main

    path = write_random_llama(tmp_path / "tiny.gguf", context_length=128)
    monkeypatch.setattr(kv_cache, "available_memory_bytes", lambda: 1000)  # a machine with 1 kB free
    assert main(["serve", "--model", str(path), "--max-seqs", "4", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "--max-seqs: the paged KV cache needs" in err and "0.00 GB of memory is available" in err
    assert main(["serve", "--model", str(path), "--blocks", "64", "--port", "0"]) == 1
    assert "--blocks: the paged KV cache needs" in capsys.readouterr().err
