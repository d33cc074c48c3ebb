"""The server under failure and abuse (issue 26), on 127.0.0.1 only, every wait bounded: an engine that
fails answers 503 from then on instead of hanging; a huge prompt is refused before it is tokenized;
bad text, foreign pages and vanished clients get a clear answer or one log line."""
from __future__ import annotations

import time

import pytest

from conftest import require
from tinytransformer.random_llama import write_random_llama

require("starlette", "the serve extra")
require("uvicorn", "the serve extra")
try:  # the HTTP client under the openai client: httpx2 in its newer releases, httpx before
    import httpx2 as httpx
except ImportError:
    httpx = require("httpx", "the HTTP client of the openai client")

from tinytransformer.llama import load_model  # noqa: E402
from tinytransformer.serving.server import BackgroundServer, create_app  # noqa: E402

TIMEOUT = 10  # seconds, for every request a test makes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(write_random_llama(tmp_path_factory.mktemp("harden") / "tiny.gguf", context_length=128))


def _serve(loaded, **options):
    app = create_app(loaded, model_name="tiny", n_blocks=40, block_size=8, max_seqs=4, **options)
    return app, BackgroundServer(app)


def test_a_failed_engine_answers_503_to_every_later_request_instead_of_hanging(tiny):
    app, server = _serve(tiny)
    engine = app.state.engine

    def broken_step():
        raise RuntimeError("the GPU fell off the bus")

    engine.engine.step = broken_step  # the next step raises, as a CUDA backend without CUDA does
    with server, httpx.Client(timeout=TIMEOUT) as http:
        first = http.post(server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 4})
        assert first.status_code in (500, 503) and first.json()["error"]["type"] == "server_error"
        start = time.monotonic()
        for path, body in [("/v1/completions", {"prompt": "hi", "max_tokens": 4}),
                           ("/v1/completions", {"prompt": "hi", "max_tokens": 4, "stream": True}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True})]:
            response = http.post(server.url + path, json=body)
            assert response.status_code == 503, (path, body, response.text)
            error = response.json()["error"]
            assert error["type"] == "server_error" and "the GPU fell off the bus" in error["message"]
        assert time.monotonic() - start < 5
        for path in ("/health", "/v1/models"):
            response = http.get(server.url + path)
            assert response.status_code == 503 and "engine failed" in response.json()["error"]["message"]


def test_a_healthy_server_says_so(tiny):
    _, server = _serve(tiny)
    with server, httpx.Client(timeout=TIMEOUT) as http:
        assert http.get(server.url + "/health").json() == {"status": "ok"}


def test_serve_refuses_an_attention_backend_it_cannot_run_before_loading(capsys, monkeypatch):
    from tinytransformer.cli import main
    from tinytransformer.cuda import build

    monkeypatch.setattr(build, "cuda_status", lambda: (False, "no GPU here"))
    loads = []
    monkeypatch.setattr("tinytransformer.llama.load_model", lambda *a, **k: loads.append(a))
    assert main(["serve", "--attention", "cuda"]) == 1
    assert "--attention cuda: no GPU here" in capsys.readouterr().err and not loads
