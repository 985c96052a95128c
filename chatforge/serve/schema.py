"""The request body of `/v1/chat/completions`: the fields of OpenAI's schema that chatforge serves.

Ranges that hold for any server are checked here (a malformed or out-of-range field is OpenAI's 400
naming it); the server's own limits (n, max_tokens, stop strings, message sizes) are in limits.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

INT64 = 2 ** 63  # seeds are int64 in OpenAI's schema; torch's generator takes no more


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's chat completion request, as far as chatforge serves it."""

    # clients send more (user, presence_penalty, ...): kept, and ignored; JSON's NaN / Infinity refused
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str | None = None  # None: the served model
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)  # OpenAI's range

    def stop_strings(self) -> list[str]:
        """The stop strings as a list, empty ones dropped."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]
