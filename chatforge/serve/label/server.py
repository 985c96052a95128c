"""Run the app on a loopback port in a background thread (tests, the load benchmark), stopping itself."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import uvicorn


@contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", start_timeout_s: float = 20.0, stop_timeout_s: float = 10.0):
    """Serve `app` on a free port of `host`; yields the base URL; the server stops when the block ends."""
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP; without it every
    # response waits ~40 ms for the client's delayed ACK (Nagle)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    # proxy headers are the app's to trust (its trusted_proxies), as in `chatforge label serve`
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                                           proxy_headers=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="label-server")
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the labeling server did not start on {host}:{port} within {start_timeout_s} s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(stop_timeout_s)
        sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def serve_in_subprocess(db: str, host: str = "127.0.0.1", start_timeout_s: float = 60.0, extra: tuple = ()):
    """`chatforge label serve` over `db` in its own process (its own interpreter lock, as in production);
    yields the base URL once the sign-in page answers; the process is stopped when the block ends."""
    import subprocess
    import sys
    import urllib.request

    port = free_port(host)
    command = [sys.executable, "-m", "chatforge.cli", "label", "serve", f"db={db}", f"host={host}", f"port={port}",
               *extra]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"`{' '.join(command)}` exited {process.returncode}: "
                                   f"{process.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/login", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the labeling server did not answer at {url} within {start_timeout_s} s")
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
