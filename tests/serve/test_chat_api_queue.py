"""Work for clients that are gone, and a bounded queue: nobody waits behind abandoned work for more than a step."""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest
from chatserver import open_request, openai_client, running, service_of, slow_model

CHAT = [{"role": "user", "content": "the cat sat"}]
STEP = 0.03  # seconds each forward pass of the model sleeps: a step as slow as a bigger model's


@pytest.fixture(scope="module")
def server(tiny_chat_model_dir):
    with running(model=str(tiny_chat_model_dir), max_queue=12) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server, timeout=60)


def wait_until(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def abandon(server, count: int, **request) -> None:
    """Send `count` non-streamed requests and hang up on each once they are all queued or running."""
    body = json.dumps({"model": "tiny-chat", "messages": CHAT, "temperature": 0.8, "seed": 1, **request}).encode()
    sockets = [open_request(server, body) for _ in range(count)]
    worker = service_of(server).worker
    wait_until(lambda: worker.waiting == count - 1)  # one running, the rest waiting
    for sock in sockets:
        sock.close()


def one_token_wait(client) -> float:
    start = time.monotonic()
    reply = client.chat.completions.create(model="tiny-chat", messages=CHAT, temperature=0, max_tokens=1)
    assert reply.choices[0].finish_reason in ("stop", "length")
    return time.monotonic() - start


def test_ten_abandoned_big_requests_do_not_delay_the_next_one(server, client):
    # the attack: ten non-streamed requests (n=16, as many tokens as the context holds), dropped at once;
    # they used to run to the end, ~90 steps each, before anyone else was served
    worker = service_of(server).worker
    client.chat.completions.create(model="tiny-chat", messages=CHAT, n=16, max_tokens=2)  # warm: a step is a step
    worker.abandoned_work.clear()
    with slow_model(server, STEP) as steps:
        abandon(server, 10, n=16, max_tokens=4096)
        time.sleep(0.2)  # the hang-ups reach the server
        waited = one_token_wait(client)
    step = max(steps)  # the longest step, as this (possibly busy) machine ran them
    assert waited < 10 * step, f"a one-token request waited {waited:.2f} s; a step takes {step:.2f} s"
    assert worker.skipped >= 9  # those still waiting when their clients left never ran
    spent = sum(end - start for start, end in worker.abandoned_work)
    assert spent <= step + 0.05, f"{spent:.2f} s of work for clients that were gone; a step takes {step:.2f} s"


def test_a_non_streamed_request_is_stopped_within_a_token_when_its_client_hangs_up(server, client):
    service = service_of(server)
    client.chat.completions.create(model="tiny-chat", messages=CHAT, max_tokens=2)  # warm
    service.worker.abandoned_work.clear()
    with slow_model(server, STEP) as steps:
        # seed 1: a 53-token reply (other seeds may end within a few tokens, before the hang-up)
        body = {"messages": CHAT, "max_tokens": 80, "temperature": 0.8, "seed": 1}
        sock = open_request(server, json.dumps(body).encode())
        time.sleep(10 * STEP)  # it is decoding
        sock.close()
        wait_until(lambda: len(service.worker.abandoned_work) == 1)
    [(cancelled, end)] = service.worker.abandoned_work
    assert end - cancelled <= max(steps) + 0.05  # at most the step under way


def test_a_full_queue_answers_429_with_retry_after(server, client):
    worker = service_of(server).worker
    replies = []

    def ask() -> None:
        reply = client.chat.completions.create(model="tiny-chat", messages=CHAT, max_tokens=30, temperature=0)
        replies.append(reply.choices[0].finish_reason)

    with slow_model(server, STEP):
        threads = [threading.Thread(target=ask) for _ in range(13)]  # one decoding, twelve waiting
        for thread in threads:
            thread.start()
            time.sleep(0.02)
        wait_until(lambda: worker.waiting == 12)
        with pytest.raises(openai.RateLimitError) as busy:
            client.chat.completions.create(model="tiny-chat", messages=CHAT, max_tokens=1)
        streamed = client.chat.completions.with_raw_response.create  # the streamed path is refused the same way
        with pytest.raises(openai.RateLimitError):
            streamed(model="tiny-chat", messages=CHAT, max_tokens=1, stream=True)
    for thread in threads:
        thread.join()
    assert busy.value.response.headers["retry-after"] == "1" and busy.value.code == "rate_limit_exceeded"
    assert len(replies) == 13  # everyone admitted was answered
