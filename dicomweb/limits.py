"""Limits for slow or greedy clients, with clear errors.

- A request body that stalls for ``body_timeout`` seconds between two chunks gets 408 (and the connection
  is closed): a client cannot hold an upload slot and a temporary file open by trickling bytes.
- Uploads (POST under the DICOMweb root) one client address may have in progress at once:
  ``max_uploads_per_client``; one more gets 429 with ``Retry-After``.
- Request headers that take longer than ``header_timeout`` seconds to arrive: the connection is closed
  (uvicorn has no such timeout; `HeaderTimeoutProtocol` adds it to its httptools protocol). Idle keep-alive
  connections are closed by uvicorn after ``keep_alive_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomweb.responses import HTTPError, error_response


class BodyTimeout(HTTPError):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body stalled for {seconds:g} s")


class LimitsMiddleware:
    def __init__(self, app: ASGIApp, root: str, body_timeout: float, max_uploads_per_client: int) -> None:
        self.app = app
        self.root = root.rstrip("/")
        self.body_timeout = body_timeout
        self.max_uploads = max_uploads_per_client
        self.uploads: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:  # afterwards, receive() waits for a disconnect: no timeout applies
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except TimeoutError:
                raise BodyTimeout(self.body_timeout) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        if scope["method"] != "POST" or not scope.get("path", "").startswith(self.root + "/"):
            await self.app(scope, timed_receive, send)
            return
        client = (scope.get("client") or ("-",))[0]
        if self.uploads[client] >= self.max_uploads:
            response = error_response(429, f"at most {self.max_uploads} uploads at once from one client")
            response.headers["Retry-After"] = "1"
            await response(scope, receive, send)
            return
        self.uploads[client] += 1
        try:
            await self.app(scope, timed_receive, send)
        finally:
            self.uploads[client] -= 1
            if self.uploads[client] <= 0:
                del self.uploads[client]


def header_timeout_protocol(seconds: float) -> Any:
    """uvicorn's httptools protocol with a timeout on receiving request headers (None without httptools)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self._arm()  # the start of a (next) request: its headers must come in time
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol
