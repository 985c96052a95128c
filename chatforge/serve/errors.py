"""OpenAI's error shape, {"error": {"message", "type", "param", "code"}}, for every error the chat API returns.

Plain data here (no FastAPI), so that the stage's config module can import the limits without the web stack.
"""

from __future__ import annotations


class ApiError(Exception):
    """An error returned to the client as OpenAI's error body, with its HTTP status and extra headers."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers


def error_type(status: int) -> str:
    """OpenAI's `type` for a status: what openai-python and other clients show beside the message."""
    if status >= 500:
        return "server_error"
    return "rate_limit_error" if status == 429 else "invalid_request_error"


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """The JSON body of an error response."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def param_name(loc: tuple) -> str | None:
    """A pydantic error location as OpenAI names a parameter: ('body', 'messages', 0, 'role') -> messages[0].role."""
    name = ""
    for part in loc:
        if part == "body" and not name:
            continue
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or None
