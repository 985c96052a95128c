"""OpenAI's `logprobs` for chat completions: per token {token, logprob, bytes, top_logprobs}.

The log-probabilities are the model's own (log_softmax of its logits, temperature 1, before top-k /
top-p), as vLLM reports by default, whatever temperature the reply was sampled at.
"""

from __future__ import annotations

import re

import torch


class TokenBytes:
    """A token's exact bytes and its text, cached per id (a byte-level BPE token may hold half a character)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_of = None
        if type(decoder).__name__ == "ByteLevel":  # GPT-2 style: each byte is spelled as one printable character
            from transformers.convert_slow_tokenizer import bytes_to_unicode

            self.byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
        self.cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        if token_id not in self.cache:
            raw = self.tokenizer.convert_ids_to_tokens(token_id)
            if self.byte_of is not None and all(c in self.byte_of for c in raw):
                data = bytes(self.byte_of[c] for c in raw)
            elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", raw):  # sentencepiece's byte fallback
                data = bytes([int(raw[3:5], 16)])
            else:
                data = self.tokenizer.decode([token_id]).encode()
            self.cache[token_id] = (data.decode("utf-8", errors="backslashreplace"), list(data))
        return self.cache[token_id]


class LogprobCapture:
    """Each decoding step's logprobs, caught by a forward hook on the model, handed out one row at a time.

    `generate` calls on_token once per running row, in row order, right after the step's forward pass,
    so the k-th `entry` after a forward belongs to row k of that forward's logits (tests/serve pins this
    against a scoring pass). Use as a context manager around the generation.
    """

    def __init__(self, model, tokenizer, top: int):
        self.model, self.top = model, top
        self.describe = TokenBytes(tokenizer)
        self.step: torch.Tensor | None = None  # (rows, vocab) logprobs of the last forward
        self.top_ids: list[list[int]] = []
        self.top_values: list[list[float]] = []
        self.row = 0

    def __enter__(self) -> "LogprobCapture":
        self.handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc_info) -> None:
        self.handle.remove()

    def _hook(self, module, args, output) -> None:
        self.step = torch.log_softmax(output.logits[:, -1, :].float(), dim=-1)
        if self.top:
            values, ids = self.step.topk(self.top, dim=-1)
            self.top_values, self.top_ids = values.tolist(), ids.tolist()
        self.row = 0

    def entry(self, token_id: int) -> dict:
        """The logprobs entry of the next row's chosen token."""
        row, self.row = self.row, self.row + 1
        token, data = self.describe(token_id)
        top = []
        if self.top:
            for other, value in zip(self.top_ids[row], self.top_values[row]):
                text, other_data = self.describe(other)
                top.append({"token": text, "logprob": value, "bytes": other_data})
        return {"token": token, "logprob": self.step[row, token_id].item(), "bytes": data, "top_logprobs": top}
