"""One log line per HTTP request, written so that ordinary logs carry no patient data and no secrets.

uvicorn's access log prints the request line with its query string, and QIDO-RS query strings carry
patient names and IDs (`?PatientName=DOE^JOHN`), later tokens (`?access_token=...`). This middleware logs
method, path without the query string, status, bytes sent, duration and client address instead; the
server turns uvicorn's own access log off.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("dicomweb.access")


def _printable(text: str) -> str:
    # A path is percent-decoded: "%0A" would let a client write a fake line into the log.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    if not client:
        return "-"
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, sent = 0, 0

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except BaseException:
            # Raised before an answer started: the server error handler outside answers 500.
            status = status or 500
            raise
        finally:
            log.info(
                "%s %s %s %d %d B %.1f ms",
                _client(scope),
                scope["method"],
                _printable(scope["path"]),
                status,
                sent,
                (time.perf_counter() - started) * 1000,
            )
