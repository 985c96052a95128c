"""What one chat request may ask of the server, checked before any tokenizing or decoding.

Each limit is a `chatforge serve` field of the same name (docs/chat-and-serving.md lists them with their
defaults). A body over `max_body_bytes` gets 413 before it is read; a request over another limit gets
OpenAI's 400 error naming the parameter; a full queue gets 429 with Retry-After.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatforge.serve.errors import ApiError

# Below this a temperature is decoded greedily: dividing logits by 1e-300 overflows to inf and NaN
# (vLLM uses the same cut-off).
GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass
class Limits:
    """Per-request and per-server bounds; the defaults are those of `chatforge serve`."""

    max_body_bytes: int = 1 << 20  # 1 MiB: JSON of max_prompt_chars with room for escapes
    max_message_chars: int = 50_000  # tokenizing costs ~1 us and ~250 bytes per character
    max_prompt_chars: int = 200_000  # all messages together: at most ~0.3 s of tokenizing
    max_n: int = 16  # choices per request, decoded as one batch
    max_tokens_limit: int = 4096  # max_tokens a request may ask for (replies also end at the context)
    max_stop_strings: int = 4  # OpenAI's own limit
    max_stop_chars: int = 256  # length of one stop string
    max_queue: int = 64  # requests waiting for the model; one more gets 429

    def check_config(self) -> list[str]:
        """A config error per field out of range ("field 'max_n': must be >= 1, got 0")."""
        return [f"field '{name}': must be >= {low}, got {getattr(self, name)}" for name, low in (
            ("max_body_bytes", 1), ("max_message_chars", 1), ("max_prompt_chars", 1), ("max_n", 1),
            ("max_tokens_limit", 1), ("max_stop_strings", 0), ("max_stop_chars", 1), ("max_queue", 1))
            if getattr(self, name) < low]


def too_big(param: str, what: str, value: int, limit: int, code: str = "invalid_value") -> ApiError:
    return ApiError(400, f"{what} is {value}, above this server's limit of {limit}", param, code)


def check_request(request, texts: list[str], limits: Limits) -> None:
    """Raise ApiError(400) naming the parameter when `request` (a ChatRequest whose messages read as
    `texts`) is over a limit."""
    if request.n > limits.max_n:
        raise too_big("n", "n", request.n, limits.max_n)
    for param in ("max_completion_tokens", "max_tokens"):
        value = getattr(request, param)
        if value is not None and value > limits.max_tokens_limit:
            raise too_big(param, param, value, limits.max_tokens_limit)
    stops = request.stop_strings()
    if len(stops) > limits.max_stop_strings:
        raise too_big("stop", "the number of stop strings", len(stops), limits.max_stop_strings)
    for i, stop in enumerate(stops):
        if len(stop) > limits.max_stop_chars:
            raise too_big("stop", f"the length of stop string {i}", len(stop), limits.max_stop_chars,
                          "string_above_max_length")
    for i, text in enumerate(texts):
        if len(text) > limits.max_message_chars:
            raise too_big(f"messages[{i}].content", f"the length of message {i}", len(text),
                          limits.max_message_chars, "string_above_max_length")
    total = sum(len(text) for text in texts)
    if total > limits.max_prompt_chars:
        raise too_big("messages", "the length of all messages together", total, limits.max_prompt_chars,
                      "string_above_max_length")
