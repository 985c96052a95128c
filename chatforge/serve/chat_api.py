"""An OpenAI-compatible chat API over one chatforge model, and a chat page (FastAPI).

    POST /v1/chat/completions   OpenAI's request and response schema, `stream: true` as server-sent events
    GET  /v1/models             the one model served
    GET  /                      a chat page that streams from the endpoint

Existing clients work unchanged, e.g. `openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="x")`.
Supported request fields: messages (system / developer / user / assistant, text content), temperature
(0: greedy), top_p, top_k (an extension, as in vLLM), max_tokens / max_completion_tokens, n, stop,
seed, stream, stream_options.include_usage. `model` is accepted whatever it says (one model is
served); other fields are ignored, except tools and logprobs, which are refused. Bad requests get
OpenAI's error JSON: 422 for a malformed body, 400 for values the model cannot serve (a prompt
longer than the context). Generations run one at a time on one worker thread; the n choices of a
request are decoded together as one batch.
"""

from __future__ import annotations

import html
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import AsyncIterator, Iterator, Literal

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from chatforge.data.chat import chat_prompt_ids
from chatforge.generation import IncrementalDecoder, TokenStream, context_length
from chatforge.stages.chat import sampling_params


class ApiError(Exception):
    """An error returned to the client as OpenAI's {"error": {...}} body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


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
    """The fields of OpenAI's chat completion request that chatforge serves."""

    model_config = ConfigDict(extra="allow")  # clients send more (user, presence_penalty, ...): ignored

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


@dataclass
class Choice:
    """One choice of a request as its tokens arrive: text cut before the first stop string, token count, end."""

    decoder: IncrementalDecoder
    stops: list[str]
    text: str = ""  # the reply so far, up to (not including) a stop string
    sent: int = 0  # characters of `text` already handed out
    tokens: int = 0  # generated tokens, a stop token included
    finish_reason: str | None = None  # "stop" (stop token or stop string) or "length"

    def add(self, token: int, stop_token_ids: list[int]) -> str:
        """Take one generated token; return the text that may be sent now."""
        if self.finish_reason is not None:
            return ""
        self.tokens += 1
        if token in stop_token_ids:
            return self._extend(self.decoder.flush(), end="stop")
        return self._extend(self.decoder.add(token))

    def finish(self) -> str:
        """The generation ended: release what was held back; no stop seen means it was cut ("length")."""
        if self.finish_reason is not None:
            return ""
        return self._extend(self.decoder.flush(), end="length")

    def _extend(self, new_text: str, end: str | None = None) -> str:
        text = self.text + new_text
        hit = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if hit >= 0:
            text, end = text[:hit], "stop"
        self.text, self.finish_reason = text, end
        # while running, a tail that could be the start of a stop string waits for the next token
        held = 0 if end else max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        upto = max(len(text) - held, self.sent)
        piece, self.sent = text[self.sent:upto], upto
        return piece


class ChatService:
    """The model, its tokenizer and the one worker thread that decodes requests in turn."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 256):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens = max_new_tokens
        self.context = context_length(model)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatforge-generate")
        self.created = int(time.time())

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        """The chat rendered with the model's template, checked against the context."""
        if getattr(request, "tools", None) or getattr(request, "functions", None):
            raise ApiError(400, "tools / function calling are not supported by chatforge serve", "tools")
        if getattr(request, "logprobs", None):
            raise ApiError(400, "logprobs are not supported by chatforge serve", "logprobs")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in request.messages]
        try:
            ids = chat_prompt_ids(self.tokenizer, messages)
        except Exception as exc:  # the template refuses a role order or a role (jinja raise_exception)
            raise ApiError(400, f"the model's chat template cannot render these messages: {exc}", "messages") from None
        if self.context is not None and len(ids) >= self.context:
            raise ApiError(400, f"the messages are {len(ids)} tokens, but the model's context is {self.context} "
                                "tokens and needs room for a reply; send fewer or shorter messages",
                           "messages", "context_length_exceeded")
        return ids

    def new_choices(self, request: ChatRequest) -> list[Choice]:
        """One empty Choice per requested completion (n), with the request's stop strings."""
        stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        return [Choice(IncrementalDecoder(self.tokenizer), [s for s in stops if s]) for _ in range(request.n)]

    def stream(self, request: ChatRequest, prompt_ids: list[int], choices: list[Choice]) -> Iterator[tuple[int, str]]:
        """Decode the request's choices as one batch; yield (choice index, new text) as text arrives.

        The choices end with finish_reason set; generation stops early once every choice met a stop string.
        """
        max_tokens = request.max_completion_tokens or request.max_tokens or self.max_new_tokens
        params = sampling_params(request.temperature, request.top_p, request.top_k, max_tokens, request.seed)
        with TokenStream(self.model, self.tokenizer, [prompt_ids] * request.n, params,
                         executor=self.executor) as tokens:
            for index, token in tokens:
                piece = choices[index].add(token, tokens.stop_token_ids)
                if piece:
                    yield index, piece
                if all(c.finish_reason is not None for c in choices):
                    break
        for index, choice in enumerate(choices):
            piece = choice.finish()
            if piece:
                yield index, piece

    def usage(self, prompt_ids: list[int], choices: list[Choice]) -> dict:
        """OpenAI's usage counts: prompt tokens, generated tokens of all choices, their sum."""
        completion = sum(c.tokens for c in choices)
        return {"prompt_tokens": len(prompt_ids), "completion_tokens": completion,
                "total_tokens": len(prompt_ids) + completion}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    """OpenAI's error response: {"error": {"message", "type", "param", "code"}}."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def create_app(model, tokenizer, model_name: str, max_new_tokens: int = 256) -> FastAPI:
    """The FastAPI app serving `model` under the name `model_name` (max_new_tokens: default reply limit)."""
    service = ChatService(model, tokenizer, max_new_tokens)
    app = FastAPI(title="chatforge", description="OpenAI-compatible chat API over a chatforge model")
    app.state.service = service
    page = resources.files("chatforge.serve").joinpath("static/chat.html").read_text(encoding="utf-8")

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return error_body(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()]
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        param = ".".join(str(p) for p in first if p != "body") or None
        return error_body(422, "; ".join(problems), param)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException):
        return error_body(exc.status_code, str(exc.detail))

    @app.get("/", response_class=HTMLResponse)
    def chat_page() -> str:
        return page.replace("{{MODEL_NAME}}", html.escape(model_name))

    @app.get("/v1/models")
    def list_models() -> dict:
        return {"object": "list",
                "data": [{"id": model_name, "object": "model", "created": service.created, "owned_by": "chatforge"}]}

    @app.post("/v1/chat/completions")
    def chat_completions(request: ChatRequest):
        prompt_ids = service.prompt_ids(request)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": completion_id, "created": created, "model": model_name}
        if request.stream:
            events = sse_events(service, request, prompt_ids, head)
            return StreamingResponse(relay(events), media_type="text/event-stream")
        choices = service.new_choices(request)
        try:
            for _ in service.stream(request, prompt_ids, choices):
                pass
        except Exception as exc:  # e.g. out of GPU memory: a JSON error, and the server keeps serving
            raise ApiError(500, f"generation failed: {type(exc).__name__}: {exc}") from exc
        return {**head, "object": "chat.completion",
                "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                             "finish_reason": c.finish_reason, "logprobs": None} for i, c in enumerate(choices)],
                "usage": service.usage(prompt_ids, choices)}

    return app


async def relay(events: Iterator[str]) -> AsyncIterator[str]:
    """The events of a blocking iterator, each fetched on a worker thread; closed when the client hangs up.

    Starlette cancels the response when the client disconnects; a plain iterator would be left running
    (and the model busy until the reply is done); closing it ends its TokenStream at the next token.
    """
    try:
        while (event := await anyio.to_thread.run_sync(next, events, None)) is not None:
            yield event
    finally:
        events.close()  # the thread's next() has returned: anyio waits for it before cancelling


def sse_events(service: ChatService, request: ChatRequest, prompt_ids: list[int], head: dict) -> Iterator[str]:
    """The streamed response: a role chunk per choice, content chunks, a finish chunk per choice, usage, [DONE]."""
    def event(choices: list[dict], **extra) -> str:
        return f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', 'choices': choices, **extra})}\n\n"

    for index in range(request.n):
        yield event([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    choices = service.new_choices(request)
    try:
        for index, piece in service.stream(request, prompt_ids, choices):
            yield event([{"index": index, "delta": {"content": piece}, "finish_reason": None}])
    except Exception as exc:  # headers are sent: report it in the stream, as OpenAI does
        message = f"generation failed: {type(exc).__name__}: {exc}"
        yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
        return
    for index, choice in enumerate(choices):
        yield event([{"index": index, "delta": {}, "finish_reason": choice.finish_reason}])
    if request.stream_options is not None and request.stream_options.include_usage:
        yield event([], usage=service.usage(prompt_ids, choices))
    yield "data: [DONE]\n\n"
