"""Serve a chat model over HTTP: an OpenAI-compatible `/v1/chat/completions` (streaming too) and a chat page.

    chatforge serve --model runs/demo/ppo_ptx/final            # then open http://127.0.0.1:8000/
    CHATFORGE_API_KEY=$(openssl rand -hex 16) chatforge serve --model runs/demo/sft/best host=0.0.0.0

Any OpenAI client talks to it:

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY or anything without one")
    client.chat.completions.create(model="MODEL_NAME", messages=[{"role": "user", "content": "Hi"}])

On loopback (the default host) an API key is optional; any other host needs one (api_key or the
CHATFORGE_API_KEY environment variable, which keeps it out of `ps`). Requests over a limit get OpenAI's
errors (400, 413, 429); docs/chat-and-serving.md explains each limit. The app is
`chatforge.serve.chat_api` (FastAPI, run by uvicorn); requests are decoded one at a time.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

from chatforge.config import opt
from chatforge.errors import ChatforgeError
from chatforge.serve.access import allowed_hosts, is_loopback
from chatforge.serve.limits import Limits
from chatforge.stages.chat import load_chat_model

API_KEY_ENV = "CHATFORGE_API_KEY"


@dataclass
class Config:
    model: str = opt("", "model folder (config.json + model.safetensors + a tokenizer with a chat template)")
    host: str = opt("127.0.0.1", "address to listen on (0.0.0.0: every interface, which needs an API key)")
    port: int = opt(8000, "TCP port (0: any free port)")
    model_name: str = opt("", "the model id reported by /v1/models and in responses; other names get 404 "
                              "(empty: the folder's name)")
    api_key: str = opt("", f"Bearer key every /v1 request must send (empty: ${API_KEY_ENV}, else none); "
                           "required unless host is loopback")
    allowed_hosts: list[str] = opt([], "Host headers accepted, e.g. [chat.example.com] (empty: localhost, "
                                       "127.0.0.1 and [::1] when host is loopback, else any)")
    max_new_tokens: int = opt(256, "reply length when a request gives no max_tokens")
    max_body_bytes: int = opt(Limits.max_body_bytes, "largest request body; bigger gets 413 before it is read")
    max_message_chars: int = opt(Limits.max_message_chars, "characters in one message (400 above)")
    max_prompt_chars: int = opt(Limits.max_prompt_chars, "characters in all messages of a request (400 above)")
    max_n: int = opt(Limits.max_n, "choices per request (n), decoded as one batch (400 above)")
    max_tokens_limit: int = opt(Limits.max_tokens_limit, "largest max_tokens a request may ask for (400 above); "
                                                         "replies also end at the model's context")
    max_stop_strings: int = opt(Limits.max_stop_strings, "stop strings per request (400 above; OpenAI's limit)")
    max_stop_chars: int = opt(Limits.max_stop_chars, "characters in one stop string (400 above)")
    max_queue: int = opt(Limits.max_queue, "requests waiting for the model; one more gets 429 with Retry-After")
    device: str = opt("auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt("auto", "auto: bfloat16 on cuda, float32 on cpu")
    num_threads: int = opt(0, "CPU threads for torch (0: torch's default)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = opt("info", "uvicorn's log level")

    def key(self) -> str:
        """The API key: the field, else the environment variable, else none."""
        return self.api_key or os.environ.get(API_KEY_ENV, "")

    def limits(self) -> Limits:
        return Limits(**{f.name: getattr(self, f.name) for f in fields(Limits)})

    def validate(self) -> None:
        """Check the fields before any model is loaded."""
        if not self.model:
            raise ChatforgeError("field 'model': set it to a chat model folder, e.g. model=runs/demo/sft/best")
        if not 0 <= self.port <= 65535:
            raise ChatforgeError(f"field 'port': must be in 0..65535, got {self.port}")
        if not is_loopback(self.host) and not self.key():
            raise ChatforgeError(
                f"field 'api_key': host={self.host} serves beyond this machine, so clients must send an API key; "
                f"set {API_KEY_ENV}=SOME-SECRET in the environment (or api_key=...) and give clients the same "
                "key, or serve on host=127.0.0.1")
        problems = self.limits().check_config()
        if problems:
            raise ChatforgeError(problems[0])
        if not 1 <= self.max_new_tokens <= self.max_tokens_limit:
            raise ChatforgeError(f"field 'max_new_tokens': must be in 1..max_tokens_limit "
                                 f"({self.max_tokens_limit}), got {self.max_new_tokens}")


def build_server(cfg: Config):
    """Load the model and return a uvicorn.Server for the chat app (not started: call .run())."""
    import uvicorn

    from chatforge.serve.chat_api import create_app

    cfg.validate()
    model, tokenizer = load_chat_model(cfg)
    name = cfg.model_name or Path(cfg.model).resolve().name
    app = create_app(model, tokenizer, name, cfg.max_new_tokens, cfg.limits(), cfg.key(),
                     allowed_hosts(cfg.host, cfg.allowed_hosts))
    # the model, tokenizer and libraries live as long as the server: keep the collector from walking them, which
    # made each full collection stop every thread, decoding included, for 100-175 ms (benchmarks/chat_api_load.py)
    gc.freeze()
    return uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level))


def run(cfg: Config) -> None:
    """Serve until interrupted (Ctrl-C)."""
    server = build_server(cfg)
    key = "an API key (Authorization: Bearer)" if cfg.key() else "no API key"
    print(f"serving {cfg.model} at http://{cfg.host}:{cfg.port}/ (chat page) and "
          f"http://{cfg.host}:{cfg.port}/v1 (OpenAI API), with {key}", flush=True)
    server.run()
