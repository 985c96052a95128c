"""Helpers for the chat API tests: a real server on 127.0.0.1 in a thread, and raw HTTP over a socket."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from contextlib import contextmanager

from chatforge.stages import serve


@contextmanager
def running(**fields):
    """A `chatforge serve` server (uvicorn.Server) on a free port of 127.0.0.1 in a thread, stopped on exit."""
    fields = {"port": 0, "model_name": "tiny-chat", "max_new_tokens": 8, "log_level": "warning", **fields}
    server = serve.build_server(serve.Config(**fields))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def port_of(server) -> int:
    return server.servers[0].sockets[0].getsockname()[1]


def url_of(server) -> str:
    return f"http://127.0.0.1:{port_of(server)}"


def openai_client(server, key: str = "unused", timeout: float = 30):
    """The official openai client for `server`, without retries (a test sees each error once)."""
    import openai

    return openai.OpenAI(base_url=f"{url_of(server)}/v1", api_key=key, timeout=timeout, max_retries=0)


def service_of(server):
    """The app's ChatService (model, worker, limits)."""
    return server.config.app.state.service


def open_request(server, body: bytes | None = None, headers: dict | None = None, path: str = "/v1/chat/completions",
                 method: str = "POST", content_length: int | None = None) -> socket.socket:
    """A socket with a request sent (headers, then `body`); the caller reads or just closes it (a client hanging up)."""
    sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=10)
    headers = {"Host": f"127.0.0.1:{port_of(server)}", "Content-Type": "application/json", **(headers or {})}
    if body is not None or content_length is not None:
        headers.setdefault("Content-Length", str(len(body or b"") if content_length is None else content_length))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode() + (body or b""))
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict, str]:
    """(status, headers with lower-case names, body text) of the response on `sock`."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()


def post_json(server, body: dict | bytes, headers: dict | None = None) -> tuple[int, dict, dict]:
    """POST a JSON body over a fresh connection: (status, headers, parsed JSON)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    with open_request(server, data, headers) as sock:
        status, response_headers, text = read_response(sock)
    return status, response_headers, json.loads(text)


@contextmanager
def slow_model(server, seconds: float):
    """Every forward pass of the served model sleeps `seconds` (a stand-in for a big model's step); yields the
    list of its steps' wall times: each forward pass, and from one decoding forward pass to the next."""
    calls: list[tuple[float, tuple]] = []  # (start, input shape)
    steps: list[float] = []

    def start(module, args) -> None:
        calls.append((time.monotonic(), tuple(args[0].shape)))
        time.sleep(seconds)

    def end(module, args, output) -> None:
        steps.append(time.monotonic() - calls[-1][0])

    model = service_of(server).model
    hooks = model.register_forward_pre_hook(start), model.register_forward_hook(end)
    try:
        yield steps
    finally:
        for hook in hooks:
            hook.remove()
        # a one-token forward over as many rows as the one before continues that generation
        steps += [later - earlier for (earlier, rows), (later, shape) in zip(calls, calls[1:]) if shape == (rows[0], 1)]
