"""Who may use the chat API: an API key (a Bearer token) and the Host headers a request may carry.

The Host check stops DNS rebinding: a web page whose name an attacker re-points at 127.0.0.1 makes the
browser send requests to the local server with the attacker's host name, which is refused.
"""

from __future__ import annotations

import ipaddress
import secrets

from chatforge.serve.errors import ApiError

LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "[::1]"]  # as Host headers write them (a port may follow)


def is_loopback(host: str) -> bool:
    """True when listening on `host` reaches only this machine (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


def allowed_hosts(bind_host: str, configured: list[str]) -> list[str]:
    """The Host headers to accept: those configured, else loopback names on loopback and any elsewhere
    (a server reachable from the network has an API key, which a rebinding page cannot send)."""
    if configured:
        return configured
    return LOOPBACK_HOSTS if is_loopback(bind_host) else ["*"]


def api_key_dependency(api_key: str):
    """A FastAPI dependency that lets a request through only with `Authorization: Bearer <api_key>`."""
    from fastapi import Depends
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    bearer = HTTPBearer(auto_error=False)  # our own 401, in OpenAI's error shape
    expected = api_key.encode()

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None:
            raise ApiError(401, "no API key: send it as the header `Authorization: Bearer KEY`",
                           code="invalid_api_key", headers=challenge)
        if not secrets.compare_digest(credentials.credentials.encode(), expected):  # constant time
            raise ApiError(401, "incorrect API key", code="invalid_api_key", headers=challenge)

    return check
