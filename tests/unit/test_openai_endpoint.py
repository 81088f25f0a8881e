"""`llmfleet models`: list an OpenAI endpoint's models, exit 1 with the reason when it cannot."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from llmfleet.cli import main as cli_main
from llmfleet.openai_endpoint import EndpointError, main, served_models
from llmfleet.sim.config import SimConfig
from llmfleet.sim.server import SimServer, start_sim

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The command honours proxy variables like curl does; the tests talk to 127.0.0.1.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    """A real `llmfleet sim` server on 127.0.0.1 serving "sim-model"."""
    server = await start_sim(SimConfig(host="127.0.0.1", port=0, served_model_names=("sim-model",), time_scale=0.0),
                             exit_fn=lambda code: None)
    yield server
    await server.stop()


def _answer(status: int, body: bytes | str, content_type: str = "application/json") -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/models"
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    return httpx.MockTransport(handler)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_lists_a_real_sim_servers_models(sim: SimServer, capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = sim.base_url  # http://127.0.0.1:PORT/v1
    assert await asyncio.to_thread(main, ["--endpoint", endpoint]) == 0
    assert capsys.readouterr().out == "sim-model\n"
    # Through the `llmfleet` command, with a trailing slash and an expected model.
    assert await asyncio.to_thread(cli_main, ["models", "--endpoint", endpoint + "/", "--expect", "sim-model"]) == 0


async def test_expect_fails_when_a_model_is_missing(sim: SimServer, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--endpoint", sim.base_url, "--expect", "sim-model", "--expect", "chat", "--expect", "code"]
    assert await asyncio.to_thread(main, argv) == 1
    captured = capsys.readouterr()
    assert captured.out == "sim-model\n"
    assert "not served by" in captured.err and "chat, code" in captured.err


def test_connection_refused_is_a_clear_failure(capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = f"http://127.0.0.1:{_free_port()}/v1"
    assert main(["--endpoint", endpoint, "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"llmfleet models: GET {endpoint}/models: cannot connect")


@pytest.mark.parametrize(
    "status, body, message",
    [
        (503, "no healthy upstream", "HTTP 503: no healthy upstream"),
        (404, '{"error": {"message": "not found"}}', "HTTP 404"),
        (200, "<html>hello</html>", "the body is not JSON"),
        (200, '{"object": "list"}', "not an OpenAI model list"),
        (200, '{"object": "list", "data": [{"name": "x"}]}', "not an OpenAI model list"),
        (200, "[1, 2]", "not an OpenAI model list"),
    ],
)
def test_bad_answers_are_clear_failures(status, body, message, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--endpoint", "http://ingress/v1"], transport=_answer(status, body)) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("llmfleet models: GET http://ingress/v1/models: ") and message in captured.err


def test_empty_list_succeeds_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--endpoint", "http://ingress/v1"], transport=_answer(200, '{"object": "list", "data": []}')) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "lists no models" in captured.err


def test_served_models_keeps_the_endpoints_order() -> None:
    body = '{"object": "list", "data": [{"id": "chat", "object": "model"}, {"id": "code", "object": "model"}]}'
    assert served_models("http://ingress/v1", transport=_answer(200, body)) == ["chat", "code"]


def test_timeout_is_reported() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(EndpointError, match=r"no answer within 0.5 s \(ReadTimeout\)"):
        served_models("http://ingress/v1", timeout=0.5, transport=httpx.MockTransport(slow))


def test_endpoint_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2 and "--endpoint" in capsys.readouterr().err


def test_an_api_key_is_sent_and_its_absence_explained(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != "Bearer sk-test":
            return httpx.Response(401, json={"error": {"message": "no", "code": "invalid_api_key"}})
        return httpx.Response(200, json={"object": "list", "data": [{"id": "chat"}]})

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["--endpoint", "http://ingress/v1"], transport=httpx.MockTransport(handler)) == 1
    assert "asks for an API key" in capsys.readouterr().err
    assert main(["--endpoint", "http://ingress/v1", "--api-key", "sk-test"],
                transport=httpx.MockTransport(handler)) == 0
    assert capsys.readouterr().out == "chat\n"
