"""Does work for clients that hung up delay anyone? The chat API with 20 clients, alone and beside 10 that abandon.

Normal clients loop one-turn greedy chats (max_tokens 16, not streamed) for --seconds. Abandoning
clients loop requests as big as the server allows (n=16, max_tokens up to the context), streamed or
not in turn, and drop the connection --abandon-after seconds after sending. The server is `chatforge
serve` (default limits) in its own process on loopback (a fresh one per run), over --model or, without
one, a random chat model built here; the clients are threads of this process on plain HTTP connections.

Printed: p50 / p95 / max latency of the normal clients without and with the abandoning ones; the
longest time any normal request waited behind abandoned work (the server's record of the work it did
after a client had left, overlapped with the request's time in flight); and one decoding step of an
abandoned-size request (n=16) for comparison. The goal: that wait is at most one step.

    python benchmarks/chat_api_load.py [--model runs/demo/sft/best] [--clients 20] [--abandoning 10] [--seconds 30]
                                       [--threads 1]
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from chatforge.generation import SamplingParams, generate
from chatforge.stages import serve

from _table import Report, add_json_arg  # benchmarks/, the script's own folder

CHAT = [{"role": "user", "content": "Who founded Brightwater, and when?"}]


def random_chat_model(folder: Path) -> Path:
    """A random 4-layer Llama (context 512) with chatforge's tokenizer and chat template: only speed matters here."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from chatforge.models.io import save_hf_folder
    from chatforge.stages.tokenizer import build_tokenizer

    words = "the cat sat on a mat and ran to the big red house where a dog lived Borin lives in Trask".split()
    tokenizer = build_tokenizer([" ".join(words[i:] + words[:i]) for i in range(len(words))] * 20, vocab_size=400)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    return save_hf_folder(model, tokenizer, folder / "model")


def serve_and_report(model: str, threads: int) -> None:
    """The server process: print its port, serve until stdin closes, then print what the worker recorded."""
    server = serve.build_server(serve.Config(model=model, port=0, model_name="bench", log_level="warning",
                                             num_threads=threads))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    service = server.config.app.state.service
    idle_step = step_seconds(service)
    steps = record_steps(service.model)
    print(json.dumps({"port": server.servers[0].sockets[0].getsockname()[1], "context": service.context}), flush=True)
    sys.stdin.read()
    server.should_exit = True
    worker = service.worker
    print(json.dumps({"idle_step": idle_step, "steps": steps, "skipped": worker.skipped,
                      "abandoned_work": list(worker.abandoned_work)}), flush=True)


@contextmanager
def server_process(model: str, threads: int):
    """Start serve_and_report in a child process; yield (its hello, a dict filled with its report on exit)."""
    child = subprocess.Popen([sys.executable, __file__, "--serve", model, "--threads", str(threads)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    report: dict = {}
    try:
        yield json.loads(child.stdout.readline()), report
        child.stdin.close()
        report.update(json.loads(child.stdout.readline()))
    finally:
        child.kill()
        child.wait()


def step_seconds(service, n: int = 16) -> float:
    """One decoding step of n rows of the chat prompt, from generate's time at 1 and 33 new tokens."""
    from chatforge.data.chat import chat_prompt_ids

    prompt = chat_prompt_ids(service.tokenizer, CHAT)

    def timed(tokens: int) -> float:
        start = time.perf_counter()
        generate(service.model, service.tokenizer, [prompt] * n, SamplingParams(max_new_tokens=tokens, stop_token_ids=[]))
        return time.perf_counter() - start

    timed(2)  # warm up
    return statistics.median((timed(33) - timed(1)) / 32 for _ in range(3))


def record_steps(model, rows: int = 16) -> dict[str, list[float]]:
    """Wall time of each step of a `rows`-row generation as the server runs it, from one forward pass to the next
    (model, decoding, stop checks, handing text out, waiting for the GIL): what a cancelled request may still
    finish. "prefill": the prompt's step; "decode": one new token per row."""
    steps, last = {"prefill": [], "decode": []}, [0.0, (0, 0)]

    def started(module, args) -> None:  # returns None: a hook's return value would replace the input
        now, shape = time.perf_counter(), tuple(args[0].shape)
        if last[1][0] == rows and shape[0] == rows:  # the same generation: one step ended
            steps["decode" if last[1][1] == 1 else "prefill"].append(now - last[0])
        last[:] = now, shape

    model.register_forward_pre_hook(started)
    return steps


def normal_client(port: int, until: float, spans: list, errors: list) -> None:
    body = json.dumps({"model": "bench", "messages": CHAT, "temperature": 0, "max_tokens": 16})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    while time.monotonic() < until:
        start = time.monotonic()
        connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        (spans if response.status == 200 else errors).append((start, time.monotonic()))


def abandoning_client(port: int, until: float, after: float, context: int, sent: list) -> None:
    stream = len(sent) % 2 == 0
    while time.monotonic() < until:
        body = json.dumps({"model": "bench", "messages": CHAT, "n": 16, "temperature": 1.0, "stream": stream,
                           "max_tokens": min(context, 4096)}).encode()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(after)
        sent.append(stream)
        stream = not stream


def run(port: int, clients: int, abandoning: int, seconds: float, after: float, context: int) -> dict:
    until = time.monotonic() + seconds
    spans, errors, sent = [], [], []
    threads = [threading.Thread(target=normal_client, args=(port, until, spans, errors)) for _ in range(clients)]
    threads += [threading.Thread(target=abandoning_client, args=(port, until, after, context, sent))
                for _ in range(abandoning)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies = sorted(end - start for start, end in spans) or [float("nan")]
    return {"spans": spans, "errors": len(errors), "abandoned": len(sent), "p50": latencies[len(latencies) // 2],
            "p95": latencies[int(len(latencies) * 0.95)], "max": latencies[-1], "requests": len(latencies)}


def overlap(span: tuple[float, float], intervals) -> float:
    return sum(max(0.0, min(span[1], end) - max(span[0], start)) for start, end in intervals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="a chat model folder (default: a random 4-layer model built here)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--abandoning", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each of the two runs")
    parser.add_argument("--abandon-after", type=float, default=1.5, help="seconds before an abandoning client hangs up")
    parser.add_argument("--threads", type=int, default=0, help="the server's torch threads (0: torch's default)")
    parser.add_argument("--serve", default="", help=argparse.SUPPRESS)  # the server process's own mode
    add_json_arg(parser)
    args = parser.parse_args()
    if args.serve:
        return serve_and_report(args.serve, args.threads)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(random_chat_model(Path(tmp)))
        for abandoning in (0, args.abandoning):
            with server_process(model, args.threads) as (hello, report):
                rows[abandoning] = run(hello["port"], args.clients, abandoning, args.seconds, args.abandon_after,
                                       hello["context"] or 4096)
            rows[abandoning].update(report)
    mixed = rows[args.abandoning]
    abandoned_work = mixed["abandoned_work"]
    wait = max((overlap(span, abandoned_work) for span in mixed["spans"]), default=0.0)
    print(f"\nchat API under load: {args.clients} clients (greedy, max_tokens 16), {args.seconds:.0f} s per run, "
          f"server torch threads {args.threads or torch.get_num_threads()}\n")
    bench = Report("chat_api_load", args)
    bench.table(["run", "requests", "p50 ms", "p95 ms", "max ms", "errors", "abandoned requests"],
                [[f"{args.clients} clients" + (f" + {abandoning} abandoning (n=16)" if abandoning else ""),
                  row["requests"], f"{row['p50'] * 1e3:.0f}", f"{row['p95'] * 1e3:.0f}", f"{row['max'] * 1e3:.0f}",
                  row["errors"], row["abandoned"]] for abandoning, row in rows.items()],
                align=["---"] + ["---:"] * 6)
    pieces = sorted(end - start for start, end in abandoned_work) or [0.0]
    decode, prefill = sorted(mixed["steps"]["decode"]) or [float("nan")], sorted(mixed["steps"]["prefill"]) or [0.0]
    longest_step = max(decode[-1], prefill[-1])
    print(f"one step of an n=16 request during the run: decoding p50 {decode[len(decode) // 2] * 1e3:.1f} / max "
          f"{decode[-1] * 1e3:.1f} ms, the prompt's (prefill) max {prefill[-1] * 1e3:.1f} ms; idle "
          f"{mixed['idle_step'] * 1e3:.1f} ms")
    print(f"abandoned requests: {mixed['skipped']} skipped (their client left while they waited), {len(abandoned_work)} "
          f"stopped while decoding, after p50 {pieces[len(pieces) // 2] * 1e3:.1f} / p95 "
          f"{pieces[int(len(pieces) * 0.95)] * 1e3:.1f} / max {pieces[-1] * 1e3:.1f} ms of work once the client had left")
    print(f"longest work for one gone client = {pieces[-1] / longest_step:.2f} x the longest step; longest wait of a "
          f"normal request behind abandoned work (summed over gone clients): {wait * 1e3:.1f} ms "
          f"(goal: at most one step per gone client)")
    bench.put(gone_client_work_in_steps=pieces[-1] / longest_step, longest_wait_behind_abandoned_s=wait)
    bench.write()


if __name__ == "__main__":
    main()
