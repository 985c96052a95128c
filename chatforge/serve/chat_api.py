"""An OpenAI-compatible chat API over one chatforge model, and a chat page (FastAPI).

    POST /v1/chat/completions   OpenAI's request and response schema, `stream: true` as server-sent events
    GET  /v1/models             the one model served (and /v1/models/{id})
    GET  /                      a chat page that streams from the endpoint

Existing clients work unchanged, e.g. `openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY)`.
The request fields served are in schema.py, the limits on them in limits.py, the API key and Host
check in access.py. Errors are OpenAI's JSON with OpenAI's status codes (400, 401, 404, 413, 429, 500).
Generations run one at a time on one worker thread (worker.py); the n choices of a request are decoded
together as one batch; a request whose client hangs up is stopped at its next token.
"""

from __future__ import annotations

import asyncio
import html
import json
import time
import uuid
from contextlib import nullcontext
from importlib import resources
from typing import AsyncIterator

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from chatforge.data.chat import chat_prompt_ids
from chatforge.generation import IncrementalDecoder, context_length, default_stop_token_ids, generate
from chatforge.serve.access import LOOPBACK_HOSTS, api_key_dependency
from chatforge.serve.choices import Choice, StopMatcher
from chatforge.serve.errors import ApiError, error_body, param_name
from chatforge.serve.limits import GREEDY_BELOW_TEMPERATURE, Limits, check_request
from chatforge.serve.logprobs import LogprobCapture
from chatforge.serve.schema import ChatRequest
from chatforge.serve.worker import Job, Worker
from chatforge.stages.chat import sampling_params


class _AllStopped(Exception):
    """Every choice met a stop string: the rest of the generation is not needed."""


class ChatService:
    """The model, its tokenizer, the limits, and the worker that decodes requests in turn."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 256, limits: Limits | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens = max_new_tokens
        self.limits = limits or Limits()
        self.context = context_length(model)
        self.stop_token_ids = default_stop_token_ids(tokenizer, model)
        self.worker = Worker(self.limits.max_queue)
        self.created = int(time.time())

    def check(self, request: ChatRequest) -> None:
        """Refuse what cannot be served, before any tokenizing (cheap: lengths and counts)."""
        if getattr(request, "tools", None) or getattr(request, "functions", None):
            raise ApiError(400, "tools / function calling are not supported by chatforge serve", "tools")
        if request.top_logprobs is not None and not request.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        check_request(request, [m.text() for m in request.messages], self.limits)

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        """The chat rendered with the model's template, checked against the context."""
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
        stops = request.stop_strings()
        return [Choice(IncrementalDecoder(self.tokenizer), StopMatcher(stops)) for _ in range(request.n)]

    def work(self, request: ChatRequest, prompt_ids: list[int], choices: list[Choice]):
        """The job's work (run on the worker thread): decode the choices as one batch, putting
        ("piece", index, text, logprob entries) events as text arrives."""
        max_tokens = request.max_completion_tokens or request.max_tokens or self.max_new_tokens
        temperature = request.temperature if request.temperature >= GREEDY_BELOW_TEMPERATURE else 0.0
        params = sampling_params(temperature, request.top_p, request.top_k, max_tokens, request.seed)

        def run(job: Job) -> None:
            capture = None
            if request.logprobs:
                capture = LogprobCapture(self.model, self.tokenizer, request.top_logprobs or 0)

            def on_token(index: int, token: int) -> None:
                job.check()
                entry = capture.entry(token) if capture else None  # every row, to stay aligned with the logits
                piece, entries = choices[index].add(token, self.stop_token_ids, entry)
                if piece or entries:
                    job.put(("piece", index, piece, entries))
                if all(c.finish_reason is not None for c in choices):
                    raise _AllStopped

            try:
                with capture or nullcontext():
                    generate(self.model, self.tokenizer, [prompt_ids] * request.n, params, on_token=on_token)
            except _AllStopped:
                pass
            for index, choice in enumerate(choices):
                piece, entries = choice.finish()
                if piece or entries:
                    job.put(("piece", index, piece, entries))
        return run

    def usage(self, prompt_ids: list[int], choices: list[Choice]) -> dict:
        """OpenAI's usage counts: prompt tokens, generated tokens of all choices, their sum."""
        completion = sum(c.tokens for c in choices)
        return {"prompt_tokens": len(prompt_ids), "completion_tokens": completion,
                "total_tokens": len(prompt_ids) + completion}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI's JSON; a request that fails validation is 400 (OpenAI's code), not FastAPI's 422."""
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError):
        errors = exc.errors()
        if errors and errors[0]["type"] == "json_invalid":
            return error_response(400, f"the body is not valid JSON: {errors[0].get('ctx', {}).get('error')}",
                                  code="invalid_json")
        problems = [f"{param_name(e['loc']) or 'body'}: {e['msg']}" for e in errors]
        first = errors[0] if errors else {"loc": (), "type": ""}
        code = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
        return error_response(400, "; ".join(problems), param_name(first["loc"]), code)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException):  # 404 / 405 routes, 413 from the body limit
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)


def create_app(model, tokenizer, model_name: str, max_new_tokens: int = 256, limits: Limits | None = None,
               api_key: str = "", allowed_hosts: list[str] | None = None) -> FastAPI:
    """The FastAPI app serving `model` under the name `model_name`.

    max_new_tokens: reply length when a request gives none; api_key: required Bearer token (empty: none);
    allowed_hosts: Host headers accepted (None: loopback names only).
    """
    service = ChatService(model, tokenizer, max_new_tokens, limits)
    # FastAPI's own body limit: 413 from Content-Length, or once the bytes read pass it, before the rest is read
    app = FastAPI(title="chatforge", description="OpenAI-compatible chat API over a chatforge model",
                  max_body_size=service.limits.max_body_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or LOOPBACK_HOSTS)
    app.state.service = service
    add_error_handlers(app)
    page = (resources.files("chatforge.serve").joinpath("static/chat.html").read_text(encoding="utf-8")
            .replace("{{MODEL_NAME}}", html.escape(model_name)).replace("{{KEY_HIDDEN}}", "" if api_key else "hidden"))

    @app.get("/", response_class=HTMLResponse)
    def chat_page() -> str:
        return page

    api = APIRouter(prefix="/v1", dependencies=[Depends(api_key_dependency(api_key))] if api_key else [])

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": service.created, "owned_by": "chatforge"}

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise ApiError(404, f"the model `{name}` does not exist; this server serves `{model_name}`",
                           "model", "model_not_found")

    @api.get("/models")
    def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @api.get("/models/{name}")
    def get_model(name: str) -> dict:
        check_model(name)
        return model_card()

    @api.post("/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        check_model(body.model)
        service.check(body)
        service.worker.check_room()  # before tokenizing: a busy server answers 429 cheaply
        prompt_ids = await anyio.to_thread.run_sync(service.prompt_ids, body)
        choices, job = service.new_choices(body), Job(asyncio.get_running_loop())
        service.worker.submit(job, service.work(body, prompt_ids, choices))
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_name}
        if body.stream:
            return JobStream(job, sse_events(service, body, job, prompt_ids, choices, head))
        watcher = asyncio.ensure_future(cancel_on_disconnect(request, job))
        try:
            async for _ in job.events():
                pass
        except Exception as exc:  # e.g. out of GPU memory: a JSON error, and the server keeps serving
            raise ApiError(500, f"generation failed: {type(exc).__name__}: {exc}") from exc
        finally:
            watcher.cancel()
            job.cancel()  # harmless when done; stops the work if this task itself was cancelled
        return {**head, "object": "chat.completion",
                "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                             "logprobs": {"content": c.logprobs} if body.logprobs else None,
                             "finish_reason": c.finish_reason} for i, c in enumerate(choices)],
                "usage": service.usage(prompt_ids, choices)}

    app.include_router(api)
    return app


async def cancel_on_disconnect(request: Request, job: Job) -> None:
    """Cancel `job` when the client hangs up (the body is read, so the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel()


class JobStream(StreamingResponse):
    """Server-sent events of a job; the job is cancelled when the response ends, finished or not.

    Starlette stops the response when the client disconnects, but leaves the event generator suspended,
    so its own `finally` would run only when it is garbage collected.
    """

    def __init__(self, job: Job, events: AsyncIterator[str]):
        super().__init__(events, media_type="text/event-stream")
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


async def sse_events(service: ChatService, request: ChatRequest, job: Job, prompt_ids: list[int],
                     choices: list[Choice], head: dict) -> AsyncIterator[str]:
    """The streamed response: a role chunk per choice, content chunks, a finish chunk per choice, usage, [DONE]."""
    def event(chunk_choices: list[dict], **extra) -> str:
        return f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', 'choices': chunk_choices, **extra})}\n\n"

    for index in range(request.n):
        yield event([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None}])
    try:
        async for _, index, piece, entries in job.events():
            yield event([{"index": index, "delta": {"content": piece},
                          "logprobs": {"content": entries} if request.logprobs else None, "finish_reason": None}])
    except Exception as exc:  # headers are sent: report it in the stream, as OpenAI does
        message = f"generation failed: {type(exc).__name__}: {exc}"
        yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
        return
    for index, choice in enumerate(choices):
        yield event([{"index": index, "delta": {}, "logprobs": None, "finish_reason": choice.finish_reason}])
    if request.stream_options is not None and request.stream_options.include_usage:
        yield event([], usage=service.usage(prompt_ids, choices))
    yield "data: [DONE]\n\n"
