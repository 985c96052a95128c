"""Chat with a model in the terminal: multi-turn, the reply streamed token by token.

    chatforge chat --model runs/demo/ppo_ptx/final
    chatforge chat --model runs/demo/sft/best temperature=0 system="Answer in one sentence."

Each turn the whole history is rendered with the model folder's chat template, so the model sees
the conversation as SFT taught it. When the history outgrows the model's context, the oldest turns
are dropped (with a notice). Commands: /reset forgets the history, /exit (or end of input) quits.
Ctrl-C during a reply stops it and keeps what was written.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

import torch

from chatforge.config import opt
from chatforge.data.chat import chat_prompt_ids
from chatforge.errors import ChatforgeError
from chatforge.generation import IncrementalDecoder, SamplingParams, TokenStream, context_length
from chatforge.models.io import load_causal_lm
from chatforge.models.templates import load_chat_tokenizer
from chatforge.runtime import resolve_device, set_threads
from chatforge.stages.generate import DTYPES


@dataclass
class Config:
    model: str = opt("", "model folder (config.json + model.safetensors + a tokenizer with a chat template)")
    system: str = opt("", "system message placed before every chat (empty: none)")
    max_new_tokens: int = opt(256, "most tokens in one reply")
    temperature: float = opt(0.7, "sampling temperature; 0: greedy (the most likely token each step)")
    top_p: float = opt(1.0, "sample among the smallest set of tokens with this much probability (1.0: off)")
    top_k: int = opt(0, "sample among the k most likely tokens (0: off)")
    seed: int | None = opt(0, "sampling seed; turn t uses seed + t, so a chat replays the same (null: random)")
    device: str = opt("auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt("auto", "auto: bfloat16 on cuda, float32 on cpu")
    num_threads: int = opt(0, "CPU threads for torch (0: torch's default)")

    def sampling_params(self, turn: int = 0) -> SamplingParams:
        """The decoding fields as the engine's SamplingParams, seeded for turn `turn`."""
        seed = None if self.seed is None else self.seed + turn
        return sampling_params(self.temperature, self.top_p, self.top_k, self.max_new_tokens, seed)

    def validate(self) -> None:
        """Check the fields before any model is loaded."""
        if not self.model:
            raise ChatforgeError("field 'model': set it to a chat model folder, e.g. model=runs/demo/sft/best")
        if self.max_new_tokens < 1:
            raise ChatforgeError(f"field 'max_new_tokens': must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ChatforgeError(f"field 'temperature': must be >= 0 (0 is greedy), got {self.temperature}")
        self.sampling_params().validate()


def sampling_params(temperature: float, top_p: float, top_k: int, max_new_tokens: int,
                    seed: int | None) -> SamplingParams:
    """OpenAI-style knobs as SamplingParams: temperature 0 means greedy, anything above samples."""
    if temperature == 0:
        return SamplingParams(max_new_tokens=max_new_tokens, seed=seed)
    return SamplingParams(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                          top_k=top_k, top_p=top_p, seed=seed)


def load_chat_model(cfg):
    """The model (on cfg.device, in cfg.dtype) and tokenizer of cfg.model, given chatforge's chat template if it
    has none. cfg: any config with model, device, dtype and num_threads (chat, serve)."""
    set_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    dtype = DTYPES.get(cfg.dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = load_causal_lm(cfg.model, dtype=dtype, device=device)
    return model, load_chat_tokenizer(cfg.model)


def fit_history(tokenizer, messages: list[dict], context: int | None, room: int) -> tuple[list[int], int]:
    """The prompt ids of `messages`, dropping the oldest turns until prompt + `room` new tokens fit `context`.

    System messages stay; a turn is a user message and the replies after it; the newest user message is
    never dropped (the prompt may still not fit: the caller checks). Returns (prompt ids, messages dropped);
    `messages` is shortened in place.
    """
    dropped = 0
    while True:
        ids = chat_prompt_ids(tokenizer, messages)
        if context is None or len(ids) + room <= context:
            return ids, dropped
        first = next((i for i, m in enumerate(messages) if m["role"] != "system"), None)
        later_user = next((i for i in range(first + 1, len(messages)) if messages[i]["role"] == "user"), None)
        if later_user is None:  # only the newest turn is left
            return ids, dropped
        dropped += later_user - first
        del messages[first:later_user]


def run(cfg: Config) -> list[dict]:
    """Read user lines from stdin, stream each reply to stdout; return the final history (list of messages)."""
    cfg.validate()
    model, tokenizer = load_chat_model(cfg)
    context = context_length(model)
    # keep at least half the context for the history, however long a reply may be
    room = cfg.max_new_tokens if context is None else min(cfg.max_new_tokens, context // 2)
    start = [{"role": "system", "content": cfg.system}] if cfg.system else []
    history = list(start)
    print(f"chatting with {cfg.model} ({context or 'unknown'} tokens of context). "
          "/reset forgets the chat, /exit quits.", flush=True)
    turn = 0
    while True:
        print("\nyou> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:  # end of input
            print()
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = list(start)
            print("(chat forgotten)")
            continue
        if text.startswith("/"):
            print(f"(unknown command {text}; /reset forgets the chat, /exit quits)")
            continue

        candidate = history + [{"role": "user", "content": text}]
        prompt_ids, dropped = fit_history(tokenizer, candidate, context, room)
        if context is not None and len(prompt_ids) >= context:  # the chat so far stays as it was
            print(f"(that message makes a prompt of {len(prompt_ids)} tokens, but the model's context is "
                  f"{context} tokens: shorten it)")
            continue
        if dropped:
            print(f"(dropped the {dropped} oldest messages to fit the model's context of {context} tokens)")
        history = candidate
        print("bot> ", end="", flush=True)
        reply, note = stream_reply(model, tokenizer, prompt_ids, cfg.sampling_params(turn))
        print(f"\n({note})" if note else "", flush=True)
        history.append({"role": "assistant", "content": reply})
        turn += 1
    return history


def stream_reply(model, tokenizer, prompt_ids: list[int], params: SamplingParams) -> tuple[str, str]:
    """Print the reply to `prompt_ids` as it is generated; return (reply text, a note when it did not end)."""
    decoder = IncrementalDecoder(tokenizer)
    stream = TokenStream(model, tokenizer, [prompt_ids], params)
    note = "cut at the token limit"
    try:
        for _, token in stream:
            if token not in stream.stop_token_ids:
                print(decoder.add(token), end="", flush=True)
        if stream.result is not None and stream.result.finished[0]:
            note = ""
    except KeyboardInterrupt:  # stop this reply, keep the chat
        stream.close()
        note = "stopped"
    print(decoder.flush(), end="", flush=True)
    return decoder.text, note
