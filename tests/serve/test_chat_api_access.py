"""Who may use `chatforge serve`: the API key, the model name, the Host header (DNS rebinding)."""

from __future__ import annotations

import json

import openai
import pytest
from chatserver import open_request, openai_client, port_of, read_response, running

from chatforge.errors import ChatforgeError
from chatforge.serve.access import allowed_hosts, is_loopback
from chatforge.stages import serve

CHAT = [{"role": "user", "content": "the cat sat"}]
KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def server(tiny_chat_model_dir):
    """A server whose key comes from the environment variable (the way to keep it out of `ps`)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CHATFORGE_API_KEY", KEY)
        with running(model=str(tiny_chat_model_dir)) as server:
            yield server


def client(server, key: str = KEY) -> openai.OpenAI:
    return openai_client(server, key)


def test_requests_without_the_right_api_key_are_401(server):
    # the attack: no key, or any key; both used to get 200
    with open_request(server, json.dumps({"messages": CHAT}).encode()) as sock:
        status, headers, text = read_response(sock)
    assert status == 401 and json.loads(text)["error"]["code"] == "invalid_api_key"
    for key in ("wrong-key", KEY[:-1], "Basic " + KEY):
        with pytest.raises(openai.AuthenticationError) as refused:
            client(server, key).chat.completions.create(model="tiny-chat", messages=CHAT, max_tokens=2)
        assert refused.value.code == "invalid_api_key" and refused.value.body["type"] == "invalid_request_error"
        assert refused.value.response.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        client(server, "wrong-key").models.list()
    assert client(server).chat.completions.create(model="tiny-chat", messages=CHAT, max_tokens=2).choices


def test_an_unknown_model_name_is_404_and_the_served_one_is_listed(server):
    with pytest.raises(openai.NotFoundError) as unknown:
        client(server).chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=2)
    assert unknown.value.code == "model_not_found" and unknown.value.body["param"] == "model"
    assert [m.id for m in client(server).models.list().data] == ["tiny-chat"]
    assert client(server).models.retrieve("tiny-chat").id == "tiny-chat"
    with pytest.raises(openai.NotFoundError):
        client(server).models.retrieve("gpt-4o")


def test_a_foreign_host_header_is_refused_on_loopback(server):
    # DNS rebinding: a page on evil.example, re-pointed at 127.0.0.1, sends its own name as Host
    port = port_of(server)
    for host, expected in ((f"evil.example:{port}", 400), ("evil.example", 400), (f"localhost:{port}", 200),
                           (f"127.0.0.1:{port}", 200), (f"[::1]:{port}", 200)):
        with open_request(server, path="/v1/models", method="GET",
                          headers={"Host": host, "Authorization": f"Bearer {KEY}"}) as sock:
            assert read_response(sock)[0] == expected, host


def test_the_chat_page_asks_for_the_key_only_when_there_is_one(server, tiny_chat_model_dir, monkeypatch):
    with open_request(server, path="/", method="GET") as sock:
        status, _, page = read_response(sock)
    assert status == 200 and 'id="api_key"' in page and "<span >API key" in page
    monkeypatch.delenv("CHATFORGE_API_KEY")
    with running(model=str(tiny_chat_model_dir)) as keyless:
        with open_request(keyless, path="/", method="GET") as sock:
            assert "<span hidden>API key" in read_response(sock)[2]


def test_serving_beyond_loopback_needs_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("CHATFORGE_API_KEY", raising=False)
    for host in ("0.0.0.0", "192.168.1.5", "::", "my-host"):
        with pytest.raises(ChatforgeError, match="field 'api_key'.*CHATFORGE_API_KEY"):
            serve.build_server(serve.Config(model=str(tmp_path), host=host))
    serve.Config(model=str(tmp_path), host="0.0.0.0", api_key="k").validate()
    monkeypatch.setenv("CHATFORGE_API_KEY", "from-env")
    assert serve.Config(model=str(tmp_path), host="0.0.0.0").key() == "from-env"
    serve.Config(model=str(tmp_path), host="0.0.0.0").validate()


def test_allowed_hosts_default_to_loopback_names_on_loopback_and_can_be_set():
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com"))
    assert allowed_hosts("127.0.0.1", []) == ["localhost", "127.0.0.1", "[::1]"]
    assert allowed_hosts("0.0.0.0", []) == ["*"]
    assert allowed_hosts("127.0.0.1", ["chat.example.com"]) == ["chat.example.com"]


def test_limits_in_the_config_are_checked_before_loading(tmp_path):
    with pytest.raises(ChatforgeError, match="field 'max_queue': must be >= 1, got 0"):
        serve.build_server(serve.Config(model=str(tmp_path), max_queue=0))
    with pytest.raises(ChatforgeError, match="field 'max_new_tokens'"):
        serve.build_server(serve.Config(model=str(tmp_path), max_new_tokens=100, max_tokens_limit=50))
