"""Serve a chat model over HTTP: an OpenAI-compatible `/v1/chat/completions` (streaming too) and a chat page.

    chatforge serve --model runs/demo/ppo_ptx/final            # then open http://127.0.0.1:8000/
    chatforge serve --model runs/demo/sft/best host=0.0.0.0 port=8080

Any OpenAI client talks to it:

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="chatforge", messages=[{"role": "user", "content": "Hi"}])

The app is `chatforge.serve.chat_api` (FastAPI, run by uvicorn); requests are decoded one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from chatforge.config import opt
from chatforge.errors import ChatforgeError
from chatforge.stages.chat import load_chat_model


@dataclass
class Config:
    model: str = opt("", "model folder (config.json + model.safetensors + a tokenizer with a chat template)")
    host: str = opt("127.0.0.1", "address to listen on (0.0.0.0: every interface; there is no authentication)")
    port: int = opt(8000, "TCP port (0: any free port)")
    model_name: str = opt("", "the model id reported by /v1/models and in responses (empty: the folder's name)")
    max_new_tokens: int = opt(256, "reply length when a request gives no max_tokens")
    device: str = opt("auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt("auto", "auto: bfloat16 on cuda, float32 on cpu")
    num_threads: int = opt(0, "CPU threads for torch (0: torch's default)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = opt("info", "uvicorn's log level")

    def validate(self) -> None:
        """Check the fields before any model is loaded."""
        if not self.model:
            raise ChatforgeError("field 'model': set it to a chat model folder, e.g. model=runs/demo/sft/best")
        if not 0 <= self.port <= 65535:
            raise ChatforgeError(f"field 'port': must be in 0..65535, got {self.port}")
        if self.max_new_tokens < 1:
            raise ChatforgeError(f"field 'max_new_tokens': must be >= 1, got {self.max_new_tokens}")


def build_server(cfg: Config):
    """Load the model and return a uvicorn.Server for the chat app (not started: call .run())."""
    import uvicorn

    from chatforge.serve.chat_api import create_app

    cfg.validate()
    model, tokenizer = load_chat_model(cfg)
    name = cfg.model_name or Path(cfg.model).resolve().name
    app = create_app(model, tokenizer, name, cfg.max_new_tokens)
    return uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level))


def run(cfg: Config) -> None:
    """Serve until interrupted (Ctrl-C)."""
    server = build_server(cfg)
    print(f"serving {cfg.model} at http://{cfg.host}:{cfg.port}/ (chat page) and "
          f"http://{cfg.host}:{cfg.port}/v1 (OpenAI API)", flush=True)
    server.run()
