"""Request limits of `chatforge serve`: each attack first, then the safe outcome (OpenAI's error, cheaply)."""

from __future__ import annotations

import json
import time

import openai
import pytest
from chatserver import open_request, openai_client, post_json, read_response, running, service_of

from chatforge.generation import IncrementalDecoder
from chatforge.serve.choices import Choice, StopMatcher

CHAT = [{"role": "user", "content": "the cat sat"}]
LIMITS = dict(max_body_bytes=20_000, max_message_chars=2_000, max_prompt_chars=3_000, max_n=4, max_tokens_limit=64,
              max_stop_chars=32)


@pytest.fixture(scope="module")
def server(tiny_chat_model_dir):
    with running(model=str(tiny_chat_model_dir), **LIMITS) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server)


def assert_openai_error(body: dict, param: str | None, code: str | None = None) -> None:
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body


def test_a_100_mib_body_is_refused_by_its_content_length_before_it_is_read(server):
    # the attack: announce 100 MiB, send 1 KiB; a server that reads the whole body first never answers
    with open_request(server, b'{"messages": [' + b" " * 1024, content_length=100 << 20) as sock:
        sock.settimeout(5)
        status, _, text = read_response(sock)
    assert status == 413 and text == "Content Too Large"  # Starlette's own answer when the length is declared


def test_a_chunked_body_is_cut_off_once_its_bytes_pass_the_limit(server):
    # no Content-Length to trust: the bytes are counted as they come, and the rest is never waited for
    with open_request(server, headers={"Transfer-Encoding": "chunked"}) as sock:
        chunk = b" " * 8192
        for _ in range(4):  # 32 KiB against a 20 000-byte limit, and no final chunk
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        sock.settimeout(5)
        status, _, text = read_response(sock)
    assert status == 413 and "error" in json.loads(text)


def test_a_message_over_the_character_limit_is_refused_before_tokenizing(server, monkeypatch):
    service = service_of(server)
    tokenized = []
    monkeypatch.setattr(service, "prompt_ids", lambda request: tokenized.append(request) or [1])
    status, _, body = post_json(server, {"messages": [{"role": "user", "content": "x" * 2_001}]})
    assert status == 400
    assert_openai_error(body, "messages[0].content", "string_above_max_length")
    # each message under its limit, all of them together over max_prompt_chars
    status, _, body = post_json(server, {"messages": [{"role": "user", "content": "x" * 1_600}] * 2})
    assert status == 400
    assert_openai_error(body, "messages", "string_above_max_length")
    assert tokenized == []


def test_stop_strings_are_bounded_in_count_and_length(server, client):
    for stop in (["a", "b", "c", "d", "e"], ["x" * 33]):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="tiny-chat", messages=CHAT, stop=stop, max_tokens=2)
        assert refused.value.body["param"] == "stop"
    assert client.chat.completions.create(model="tiny-chat", messages=CHAT, stop=["a", "b", "c", "x" * 32],
                                          max_tokens=2).choices


def fake_decoder(pieces):
    """An IncrementalDecoder stand-in whose tokens decode to `pieces`, one after another."""
    decoder, pieces = IncrementalDecoder(None), iter(pieces)
    decoder.add = lambda token: next(pieces)
    decoder.flush = lambda: ""
    return decoder


def replies(stops: list[str], pieces: list[str]) -> tuple[list[str], Choice]:
    """What a choice hands out for each token whose text is a piece, and the choice."""
    choice = Choice(fake_decoder(pieces), StopMatcher(stops))
    return [choice.add(1, [0])[0] for _ in pieces], choice


def test_the_stop_check_stays_linear_with_long_near_matching_stop_strings():
    # the attack: stop strings of the largest allowed length that keep almost matching a long reply;
    # a check that searches the whole reply (and every prefix of every stop) per token is quadratic
    stops = ["x" * 255 + "y", "x" * 200 + "z", "xx" * 100 + "w", "x" * 128 + "v"]

    def seconds_for(tokens: int) -> float:  # feeding `tokens` tokens of "xxxx"
        choice = Choice(fake_decoder(["xxxx"] * tokens), StopMatcher(stops))
        start = time.perf_counter()
        for _ in range(tokens):
            choice.add(1, [0])
        assert choice.finish_reason is None
        return time.perf_counter() - start

    # linear here: ~0.05-0.15 s on a 2-core box; the old whole-text check took 10 s
    assert seconds_for(16_000) < 2.0


def test_stop_strings_across_tokens_and_the_earliest_of_several():
    sent, choice = replies(["lo w", "wor"], ["hel", "lo", " wo", "rld"])
    assert sent == ["he", "l", "", ""] and choice.text == "hel" and choice.finish_reason == "stop"
    sent, choice = replies(["abcd", "bc"], ["xabcd"])  # both end in this token: "abcd" starts first
    assert sent == ["x"] and choice.finish_reason == "stop"
    sent, choice = replies(["abab"], ["aba", "c", "ab", "ab"])  # a near miss is released, then a hit
    assert sent == ["", "abac", "", ""] and choice.text == "abac" and choice.finish_reason == "stop"
    sent, choice = replies(["abab"], ["xab"])
    assert sent == ["x"] and choice.finish() == ("ab", []) and choice.finish_reason == "length"


def test_n_and_max_tokens_over_the_limits_are_400_naming_the_field(client):
    for request, param in ((dict(n=5), "n"), (dict(max_tokens=65), "max_tokens"),
                           (dict(max_completion_tokens=10 ** 30), "max_completion_tokens")):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="tiny-chat", messages=CHAT, **request)
        assert refused.value.status_code == 400 and refused.value.body["param"] == param


def test_out_of_range_values_are_400_naming_the_field_not_500(server):
    # JSON numbers exactly as the attack sent them; each one used to reach the engine and fail there (500)
    for field, value in (("max_tokens", "1e30"), ("seed", str(2 ** 70)), ("n", "1e30"), ("temperature", "NaN"),
                         ("top_p", "0"), ("top_logprobs", "21")):
        raw = f'{{"messages": {json.dumps(CHAT)}, "logprobs": true, "{field}": {value}}}'.encode()
        status, _, body = post_json(server, raw)
        assert status == 400, (field, body)
        assert_openai_error(body, field)


def test_a_tiny_temperature_is_greedy_not_a_server_error(client):
    greedy = client.chat.completions.create(model="tiny-chat", messages=CHAT, temperature=0, max_tokens=8)
    tiny = client.chat.completions.create(model="tiny-chat", messages=CHAT, temperature=1e-300, max_tokens=8)
    assert tiny.choices[0].message.content == greedy.choices[0].message.content


def test_every_validation_error_is_openais_400(server, client):
    with pytest.raises(openai.BadRequestError) as bad_role:
        client.chat.completions.create(model="tiny-chat", messages=[{"role": "robot", "content": "hi"}])
    assert bad_role.value.body["param"] == "messages[0].role" and bad_role.value.body["code"] == "invalid_value"
    status, _, body = post_json(server, {"model": "tiny-chat"})
    assert status == 400
    assert_openai_error(body, "messages", "missing_required_parameter")
    status, _, body = post_json(server, b'{"messages": [')
    assert status == 400
    assert_openai_error(body, None, "invalid_json")
