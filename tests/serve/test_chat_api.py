"""`chatforge serve`: the real `openai` client completes chats against the server, streaming and not."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from chatserver import openai_client, running, slow_model, url_of

from chatforge.data.chat import chat_prompt_ids
from chatforge.generation import SamplingParams, generate
from chatforge.models.io import load_causal_lm, load_tokenizer
from chatforge.stages import serve

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat sat"}]


@pytest.fixture(scope="module")
def server(tiny_chat_model_dir):
    """The chat server (uvicorn.Server) on 127.0.0.1 on a free port, in a thread; stopped after the module."""
    with running(model=str(tiny_chat_model_dir)) as server:
        yield server


@pytest.fixture(scope="module")
def server_url(server):
    return url_of(server)


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server)


@pytest.fixture(scope="module")
def reference(tiny_chat_model_dir):
    """What our engine answers in-process, to compare the server's replies with."""
    model, tokenizer = load_causal_lm(tiny_chat_model_dir), load_tokenizer(tiny_chat_model_dir)

    def answer(messages, params: SamplingParams, n: int = 1):
        prompt = chat_prompt_ids(tokenizer, messages)
        return prompt, generate(model, tokenizer, [prompt] * n, params)
    return answer


def http(url: str, body: bytes | None = None) -> tuple[int, str, str]:
    """A plain GET (or POST of a JSON body) with the standard library: (status, content type, text)."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["content-type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["content-type"], error.read().decode()


def streamed(client, **request) -> tuple[dict[int, str], dict[int, str], list]:
    """Text and finish_reason per choice index from a streamed completion, and the raw chunks."""
    texts, finish, chunks = {}, {}, []
    for chunk in client.chat.completions.create(stream=True, **request):
        chunks.append(chunk)
        assert chunk.object == "chat.completion.chunk" and chunk.model == "tiny-chat"
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason is not None:
                finish[choice.index] = choice.finish_reason
    return texts, finish, chunks


def test_the_openai_client_completes_a_chat(client, reference):
    prompt, expected = reference(CHAT, SamplingParams(max_new_tokens=12))
    response = client.chat.completions.create(model="tiny-chat", messages=CHAT, temperature=0, max_tokens=12)
    assert response.object == "chat.completion" and response.model == "tiny-chat"
    [choice] = response.choices
    assert choice.message.role == "assistant" and choice.message.content == expected.texts[0]
    assert choice.finish_reason == ("stop" if expected.finished[0] else "length")
    assert response.usage.prompt_tokens == len(prompt)
    assert response.usage.completion_tokens == len(expected.response_ids[0])
    assert response.usage.total_tokens == len(prompt) + len(expected.response_ids[0])


def test_streaming_gives_the_same_reply_in_pieces_with_usage(client, reference):
    _, expected = reference(CHAT, SamplingParams(max_new_tokens=12))
    texts, finish, chunks = streamed(client, model="tiny-chat", messages=CHAT, temperature=0, max_tokens=12,
                                     stream_options={"include_usage": True})
    assert texts == {0: expected.texts[0]} and finish == {0: "stop" if expected.finished[0] else "length"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) >= 2  # streamed, not one blob
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected.response_ids[0])
    assert len({c.id for c in chunks}) == 1


def test_n_sampled_choices_with_a_seed_match_between_streaming_and_not(client, reference):
    request = dict(model="tiny-chat", messages=CHAT, n=3, temperature=0.9, top_p=0.95, seed=7, max_tokens=10)
    _, expected = reference(CHAT, SamplingParams(max_new_tokens=10, do_sample=True, temperature=0.9, top_p=0.95,
                                                 seed=7), n=3)
    response = client.chat.completions.create(**request)
    assert [c.message.content for c in response.choices] == expected.texts
    assert [c.index for c in response.choices] == [0, 1, 2]
    texts, finish, _ = streamed(client, **request)
    assert [texts[i] for i in range(3)] == expected.texts and set(finish) == {0, 1, 2}


def test_a_stop_string_cuts_the_reply_before_it(client, reference):
    _, expected = reference(CHAT, SamplingParams(max_new_tokens=12))
    text = expected.texts[0]
    assert len(text) >= 6, "the fixture model's reply is too short to cut"
    stop = text[3:5]
    cut = text[:text.find(stop)]
    request = dict(model="tiny-chat", messages=CHAT, temperature=0, max_tokens=12, stop=[stop, "never seen"])
    response = client.chat.completions.create(**request)
    assert response.choices[0].message.content == cut and response.choices[0].finish_reason == "stop"
    texts, finish, _ = streamed(client, **request)
    assert texts == {0: cut} and finish == {0: "stop"}


def test_concurrent_requests_are_served_one_at_a_time_and_all_answered(client, reference):
    _, expected = reference(CHAT, SamplingParams(max_new_tokens=8))

    def ask(stream: bool) -> str:
        if stream:
            return streamed(client, model="tiny-chat", messages=CHAT, temperature=0, max_tokens=8)[0][0]
        response = client.chat.completions.create(model="tiny-chat", messages=CHAT, temperature=0, max_tokens=8)
        return response.choices[0].message.content

    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(ask, [True, False, True, False]))
    assert replies == [expected.texts[0]] * 4


def test_a_client_that_hangs_up_mid_stream_frees_the_model(client, server):
    with slow_model(server, 0.05):  # 80 tokens: 4 s if not stopped
        stream = client.chat.completions.create(model="tiny-chat", messages=CHAT, stream=True, max_tokens=80,
                                                temperature=0.8, seed=1)
        next(iter(stream)), next(iter(stream))
        stream.close()
        start = time.monotonic()
        reply = client.chat.completions.create(model="tiny-chat", messages=CHAT, temperature=0, max_tokens=2)
        waited = time.monotonic() - start
    assert reply.choices[0].finish_reason in ("stop", "length") and waited < 2.5


def test_a_failure_while_generating_is_an_openai_style_server_error(client, server):
    def broken(*args):
        raise RuntimeError("out of memory (pretend)")

    hook = server.config.app.state.service.model.register_forward_pre_hook(broken)
    try:
        with pytest.raises(openai.InternalServerError, match="out of memory"):
            client.chat.completions.create(model="tiny-chat", messages=CHAT)
        with pytest.raises(openai.APIError, match="out of memory"):
            streamed(client, model="tiny-chat", messages=CHAT)
    finally:
        hook.remove()
    assert client.chat.completions.create(model="tiny-chat", messages=CHAT, max_tokens=2).choices  # still serving


def test_models_list_and_the_chat_page(client, server_url):
    assert [m.id for m in client.models.list().data] == ["tiny-chat"]
    status, content_type, page = http(f"{server_url}/")
    assert status == 200 and "text/html" in content_type
    assert "tiny-chat" in page and "/v1/chat/completions" in page


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                    reason=f"{CHROMIUM} is missing; run `bash scripts/setup_browser.sh` as root")
def test_the_chat_page_streams_a_multi_turn_chat_in_chromium(server_url, reference):
    from playwright.sync_api import sync_playwright

    first_turn = [{"role": "user", "content": "the cat sat"}]
    first = reference(first_turn, SamplingParams(max_new_tokens=12))[1].texts[0]
    second_turn = first_turn + [{"role": "assistant", "content": first}, {"role": "user", "content": "a dog"}]
    second = reference(second_turn, SamplingParams(max_new_tokens=12))[1].texts[0]
    replies_done = "n => document.querySelectorAll('.msg.assistant').length === n && !document.getElementById('send').disabled"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], timeout=60_000)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(server_url + "/")
            page.fill("#temperature", "0")
            page.fill("#max_tokens", "12")
            for n, (text, expected) in enumerate([("the cat sat", first), ("a dog", second)], start=1):
                page.fill("#input", text)
                page.click("#send")
                page.wait_for_function(replies_done, arg=n)
                assert page.locator(".msg.assistant").nth(n - 1).text_content() == expected
            page.click("#reset")
            assert page.locator(".msg").count() == 0
        finally:
            browser.close()


def test_bad_requests_get_openai_style_errors(client, server_url):
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "the cat " * 80}])
    assert too_long.value.code == "context_length_exceeded" and "context is 96 tokens" in too_long.value.message
    with pytest.raises(openai.BadRequestError) as bad_temperature:
        client.chat.completions.create(model="tiny-chat", messages=CHAT, temperature=5)
    assert bad_temperature.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(model="tiny-chat", messages=CHAT, tools=[
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    for body in ({"messages": []}, {"messages": [{"role": "robot", "content": "hi"}]}, {}):
        status, _, text = http(f"{server_url}/v1/chat/completions", json.dumps(body).encode())
        assert status == 400 and json.loads(text)["error"]["type"] == "invalid_request_error"
    status, _, text = http(f"{server_url}/v1/chat/completions", b"{not json")
    assert status == 400 and json.loads(text)["error"]["code"] == "invalid_json"
    status, _, text = http(f"{server_url}/v1/nothing")
    assert status == 404 and "error" in json.loads(text)


def test_serve_config_errors_before_loading(tmp_path):
    with pytest.raises(Exception, match="field 'model'"):
        serve.build_server(serve.Config())
    with pytest.raises(Exception, match="field 'port'"):
        serve.build_server(serve.Config(model=str(tmp_path), port=70000))
